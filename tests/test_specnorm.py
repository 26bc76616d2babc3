"""SpecNorm / CSR: the weights on hand-made confusion matrices, the per-epoch pass on a tiny
model, and the loss against values computed by hand."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distfair.attacks import PGD
from distfair.data import build_dataset
from distfair.defenses.specnorm import SpecNorm, csr_weights
from distfair.engine.evaluate import confusion_counts
from distfair.models import build_model

K = 3


def make_attack(eps: float = 0.1) -> PGD:
    return PGD(eps=eps, steps=2, bounds=(0.0, 1.0))


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rescaled(matrix: torch.Tensor) -> torch.Tensor:
    return 0.01 + 2.0 * (matrix - matrix.min()) / (matrix.max() - matrix.min())


# ------------------------------------------------------------------------------- weights
def test_rank_one_rows_with_an_absent_class():
    # class i has c_i samples, all spread as p: row-normalised R = e pᵀ with e = 1[c_i > 0],
    # so σ1 = ‖e‖‖p‖, u1 = e/‖e‖, v1 = p/‖p‖ and σ1·u1 v1ᵀ = e pᵀ exactly
    c, p = torch.tensor([3.0, 0.0, 5.0]), torch.tensor([0.5, 0.2, 0.3])
    counts = torch.outer(c, p * 10)
    e = (c > 0).double()
    expected_true_pred = rescaled(torch.outer(e, p.double())).float()
    W = csr_weights(counts, errors_only=False)
    assert W.shape == (K, K) and W.dtype == torch.float32
    torch.testing.assert_close(W, expected_true_pred.T, rtol=1e-6, atol=1e-6)
    # endpoints exactly at the extreme entries: the absent row (true 1) and p's largest entry
    assert W[:, 1].tolist() == pytest.approx([0.01] * K)
    assert W[0, 0].item() == pytest.approx(2.01) and W[0, 2].item() == pytest.approx(2.01)
    assert W.min().item() == pytest.approx(0.01) and W.max().item() == pytest.approx(2.01)


def test_errors_only_drops_the_diagonal_and_lookup_is_predicted_true():
    # rows true, columns predicted; row-normalised errors = a e1ᵀ with a = (0.4, 0, 0.2):
    # classes 0 and 2 are mistaken for class 1 (σ1 = ‖a‖; the diagonal, correct, is dropped)
    counts = torch.tensor([[6, 4, 0], [0, 10, 0], [0, 2, 8]])
    W = csr_weights(counts)  # indexed [predicted, true]
    expected = torch.full((K, K), 0.01)
    expected[1, 0], expected[1, 2] = 2.01, 1.01
    torch.testing.assert_close(W, expected, rtol=0, atol=1e-6)
    assert W[0, 1].item() == pytest.approx(0.01)  # the transposed cell is not the one used


@pytest.mark.parametrize("counts,errors_only", [
    (torch.ones(K, K), False),                         # flat: no direction to prefer
    (torch.diag(torch.tensor([4, 5, 6])), True),       # no errors at all
    (torch.zeros(K, K), True),
])
def test_constant_matrix_gives_all_ones(counts, errors_only):
    torch.testing.assert_close(csr_weights(counts, errors_only=errors_only), torch.ones(K, K))


def test_dominant_direction_is_non_negative_for_a_tied_top_singular_value():
    # a cyclic confusion: all singular values equal, so the top pair is arbitrary
    counts = torch.tensor([[0, 3, 0], [0, 0, 3], [3, 0, 0]]) + 3 * torch.eye(K, dtype=torch.long)
    W = csr_weights(counts)
    assert torch.isfinite(W).all() and W.min() >= 0.01 - 1e-6 and W.max() <= 2.01 + 1e-6


def test_bad_confusion_raises():
    with pytest.raises(ValueError, match="square"):
        csr_weights(torch.ones(2, 3))
    with pytest.raises(ValueError, match="non-negative"):
        csr_weights(-torch.ones(K, K))


# --------------------------------------------------------------------------- start_epoch
@pytest.mark.parametrize("training", [True, False])
def test_start_epoch_stores_weights_and_restores_mode(training):
    torch.manual_seed(0)
    data = build_dataset("synthetic", num_samples=60, num_classes=K, dim=4)
    model = build_model("mlp", num_classes=K, in_shape=(4,)).train(training)
    defense = SpecNorm(attack=make_attack(0.3), num_classes=K)
    assert defense.weights is None
    logged = defense.start_epoch(model, data.train, epoch=0, device=torch.device("cpu"), batch_size=16,
                                 generator=gen(1))
    assert all(m.training == training for m in model.modules())
    assert set(logged) == {"spec_norm", "weight_min", "weight_max"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in logged.values())
    W = defense.weights
    assert W.shape == (K, K) and W.min() >= 0.01 - 1e-6 and W.max() <= 2.01 + 1e-6
    assert logged["weight_min"] == pytest.approx(W.min().item())
    # the same pass, by hand: robust confusion under the training attack, same generator seed
    counts = confusion_counts(model, data.train, K, device=torch.device("cpu"), batch_size=16,
                              attack=make_attack(0.3), generator=gen(1))
    assert counts.sum() - counts.diag().sum() > 0  # the attack makes errors: weights not trivial
    torch.testing.assert_close(W, csr_weights(counts))


# ---------------------------------------------------------------------------------- loss
def tiny_linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, K))


def batch(n: int = 12):
    return torch.rand(n, 8, generator=gen(0)), torch.arange(n) % K


def trades_by_hand(model, x, y, beta, seed=7):
    x_adv = make_attack()(model, x, y, generator=gen(seed))
    p_clean, log_p_adv = model(x).softmax(1), model(x_adv).log_softmax(1)
    kl = (p_clean * (p_clean.log() - log_p_adv)).sum(1).mean()
    return F.cross_entropy(model(x), y) + beta * kl


@pytest.mark.parametrize("trades_weight,beta", [(0.7, 6.0), (1.0, 2.0)])
def test_no_csr_term_is_scaled_trades(trades_weight, beta):
    torch.manual_seed(0)
    model = tiny_linear().train()
    x, y = batch()
    defense = SpecNorm(attack=make_attack(), num_classes=K, beta=beta, trades_weight=trades_weight, csr_weight=0.0)
    defense.weights = torch.rand(K, K, generator=gen(2)) + 0.01
    loss, parts = defense.loss(model, x, y, generator=gen(7))
    expected = trades_by_hand(model, x, y, beta)
    torch.testing.assert_close(loss, trades_weight * expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["trades"], expected.detach(), rtol=1e-5, atol=1e-6)


def constant_predictor(cls: int) -> nn.Module:
    """Predicts ``cls`` for every input (zero weights): x_adv cannot change the prediction."""
    model = nn.Linear(8, K)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 0.5, 0.0]).roll(cls - 1))
    return model.train()


def test_per_sample_weight_is_w_predicted_true():
    model = constant_predictor(2)
    x, y = batch()
    W = torch.arange(1.0, 10.0).view(K, K)  # asymmetric: W[2, 0] = 7 but W[0, 2] = 3
    defense = SpecNorm(attack=make_attack(), num_classes=K, trades_weight=0.0, csr_weight=1.0)
    defense.weights = W
    loss, parts = defense.loss(model, x, y, generator=gen(7))
    ce = F.cross_entropy(model(x), y, reduction="none")  # logits do not depend on x
    expected = (W[2, y] * ce).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts["csr_ce"], expected.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.isclose(loss, (W[y, 2] * ce).mean())


def test_unit_weights_before_first_epoch_and_mixing():
    torch.manual_seed(0)
    model = tiny_linear().train()
    x, y = batch()
    loss, parts = SpecNorm(attack=make_attack(), num_classes=K).loss(model, x, y, generator=gen(7))
    adv_ce = F.cross_entropy(model(make_attack()(model, x, y, generator=gen(7))), y)
    torch.testing.assert_close(parts["csr_ce"], adv_ce.detach(), rtol=1e-5, atol=1e-6)
    assert set(parts) == {"trades", "clean_ce", "kl", "csr_ce"}
    assert loss.item() == pytest.approx(0.7 * parts["trades"].item() + 0.3 * parts["csr_ce"].item(), rel=1e-6)


@pytest.mark.parametrize("option", ["beta", "trades_weight", "csr_weight"])
def test_negative_options_raise(option):
    with pytest.raises(ValueError, match=option):
        SpecNorm(attack=make_attack(), num_classes=K, **{option: -0.1})
