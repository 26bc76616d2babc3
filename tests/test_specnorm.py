"""SpecNorm / CSR: the weights on hand-made confusion matrices, the per-epoch pass on a tiny
model, and the loss against values computed by hand."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distfair.attacks import PGD, PGDL2, ROA, Square
from distfair.data import build_dataset
from distfair.defenses import DefenseContext
from distfair.defenses.specnorm import SpecNorm, csr_weights
from distfair.defenses.trades import TRADES, trades_adversarial
from distfair.evaluation import confusion_counts
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
    defense.setup(DefenseContext(num_classes=K, in_shape=(4,), bounds=data.bounds, class_names=(),
                                 device=torch.device("cpu"), make_generator=lambda *labels: gen(1)))
    logged = defense.start_epoch(model, data.train, epoch=0, batch_size=16,
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


def kl_adversarial(model, x, seed=7, attack=None):
    """The TRADES KL maximiser under the training attack's schedule (PGD: eps 0.1, eps/4, 2 steps)."""
    attack = attack or make_attack()
    return trades_adversarial(model, x, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
                              bounds=attack.bounds, generator=gen(seed))


def test_logistic_model_loss_by_hand():
    """A one-feature two-class model, f(x) = (0, 2x): the TRADES maximiser moves each x by
    ε = 0.1 in the direction of its Gaussian start (KL grows with |x' − x|), and every term of
    0.7·CE + 6·KL + 0.3·W·CE has a closed form (CSR official code; the default weights)."""
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [2.0]]))
        model.bias.zero_()
    model.train()
    x, y = torch.tensor([[0.5], [0.3], [0.6]]), torch.tensor([1, 0, 0])
    attack = PGD(eps=0.1, alpha=0.1, steps=1, bounds=(0.0, 1.0))
    defense = SpecNorm(attack=attack, num_classes=2)
    defense.weights = torch.tensor([[0.5, 1.5], [0.25, 2.0]])   # [predicted, true]
    loss, parts = defense.loss(model, x, y, generator=gen(5))

    # the start noise the maximiser draws decides each sample's direction
    direction = torch.randn(x.shape, generator=gen(5)).sign().flatten().tolist()
    assert direction != [-1.0, 1.0, 1.0]   # the CE attack would move (1: down, 0: up): not the same x_adv
    sigmoid = lambda a: 1.0 / (1.0 + math.exp(-a))  # noqa: E731
    ce = kl = csr = 0.0
    for xi, yi, d in zip(x.flatten().tolist(), y.tolist(), direction):
        p1, q1 = sigmoid(2 * xi), sigmoid(2 * (xi + 0.1 * d))   # P(class 1) at x and at x_adv
        p, q = (1 - p1, p1), (1 - q1, q1)
        ce += -math.log(p[yi]) / 3
        kl += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q)) / 3
        pred = 1 if q1 > 0.5 else 0
        csr += defense.weights[pred, yi].item() * -math.log(q[yi]) / 3
    assert kl > 1e-3
    assert parts["clean_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["kl"].item() == pytest.approx(kl, rel=1e-4)
    assert parts["csr_ce"].item() == pytest.approx(csr, rel=1e-5)
    assert loss.item() == pytest.approx(0.7 * ce + 6.0 * kl + 0.3 * csr, rel=1e-5)


def test_adversarial_terms_use_the_trades_kl_maximiser():
    torch.manual_seed(0)
    model = tiny_linear().train()
    x, y = batch()
    x_kl, x_ce = kl_adversarial(model, x), make_attack()(model, x, y, generator=gen(7))
    assert (x_kl - x_ce).abs().max() > 0.05   # the two inner maximisations differ
    kl_only = SpecNorm(attack=make_attack(), num_classes=K, clean_weight=0.0, beta=1.0, csr_weight=0.0)
    csr_only = SpecNorm(attack=make_attack(), num_classes=K, clean_weight=0.0, beta=0.0, csr_weight=1.0)
    p_clean, log_p_adv = model(x).softmax(1), model(x_kl).log_softmax(1)
    expected_kl = (p_clean * (p_clean.log() - log_p_adv)).sum(1).mean()
    torch.testing.assert_close(kl_only.loss(model, x, y, generator=gen(7))[0], expected_kl, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(csr_only.loss(model, x, y, generator=gen(7))[0], F.cross_entropy(model(x_kl), y),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("beta", [6.0, 2.0])
def test_no_csr_term_is_trades(beta):
    torch.manual_seed(0)
    model = tiny_linear().train()
    x, y = batch()
    defense = SpecNorm(attack=make_attack(), num_classes=K, clean_weight=1.0, beta=beta, csr_weight=0.0)
    defense.weights = torch.rand(K, K, generator=gen(2)) + 0.01
    loss, parts = defense.loss(model, x, y, generator=gen(7))
    trades_loss, trades_parts = TRADES(attack=make_attack(), num_classes=K, beta=beta).loss(model, x, y,
                                                                                           generator=gen(7))
    torch.testing.assert_close(loss, trades_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts["kl"], trades_parts["kl"], rtol=1e-6, atol=1e-7)


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
    defense = SpecNorm(attack=make_attack(), num_classes=K, clean_weight=0.0, beta=0.0, csr_weight=1.0)
    defense.weights = W
    loss, parts = defense.loss(model, x, y, generator=gen(7))
    ce = F.cross_entropy(model(x), y, reduction="none")  # logits do not depend on x
    expected = (W[2, y] * ce).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts["csr_ce"], expected.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.isclose(loss, (W[y, 2] * ce).mean())


def test_defaults_are_the_published_mix_with_unit_weights_before_first_epoch():
    """0.7·CE + 6·KL + 0.3·csr_ce (the official trades_loss): the KL weight is not 0.7·6."""
    torch.manual_seed(0)
    model = tiny_linear().train()
    x, y = batch()
    loss, parts = SpecNorm(attack=make_attack(), num_classes=K).loss(model, x, y, generator=gen(7))
    x_adv = kl_adversarial(model, x)
    torch.testing.assert_close(parts["csr_ce"], F.cross_entropy(model(x_adv), y).detach(), rtol=1e-5, atol=1e-6)
    assert set(parts) == {"clean_ce", "kl", "csr_ce"} and parts["kl"] > 1e-4
    expected = 0.7 * parts["clean_ce"] + 6.0 * parts["kl"] + 0.3 * parts["csr_ce"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    explicit = SpecNorm(attack=make_attack(), num_classes=K, clean_weight=0.7, beta=6.0, csr_weight=0.3)
    assert explicit.loss(model, x, y, generator=gen(7))[0].item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("option", ["clean_weight", "beta", "csr_weight"])
def test_negative_options_raise(option):
    with pytest.raises(ValueError, match=option):
        SpecNorm(attack=make_attack(), num_classes=K, **{option: -0.1})


@pytest.mark.parametrize("attack", [PGDL2(eps=0.5), ROA(), Square(eps=0.1, norm="l2")], ids=lambda a: a.name)
def test_non_linf_training_attack_is_refused(attack):
    with pytest.raises(ValueError, match=f"specnorm.*'linf'.*{attack.name}"):
        SpecNorm(attack=attack, num_classes=K)
