"""TRADES and FAAL against hand computations, and FAAL's DRO solver against SciPy's SLSQP."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from torch import nn

from distfair.attacks import (FGSM, PGD, PGDL2, ROA, AutoAttack, CWLinf, Ensemble, EyeglassAttack, FaceMaskAttack,
                              Square)
from distfair.defenses._dro import kl_dro_weights
from distfair.defenses.faal import FAAL
from distfair.defenses.trades import TRADES, START_STD, attack_schedule, trades_adversarial

K, BATCH = 3, 12


def tiny_linear(k: int = K) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, k)).train()


def batch(k: int = K, labels=None, seed: int = 0):
    y = torch.arange(BATCH) % k if labels is None else torch.as_tensor(labels)
    return torch.rand(len(y), 1, 6, 6, generator=torch.Generator().manual_seed(seed)), y


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pgd() -> PGD:
    return PGD(eps=0.1, alpha=0.02, steps=5, bounds=(0.0, 1.0))


def kl_by_hand(clean_logits, adv_logits) -> float:
    """(1/B) Σ_i Σ_k P_ik log(P_ik / Q_ik), P = softmax(clean), Q = softmax(adv), by loops."""
    P, Q = clean_logits.detach().double().softmax(1), adv_logits.detach().double().softmax(1)
    return sum(P[i, k].item() * math.log(P[i, k].item() / Q[i, k].item())
               for i in range(P.shape[0]) for k in range(P.shape[1])) / P.shape[0]


# ---------------------------------------------------------------------------------- TRADES
def test_trades_beta_zero_is_clean_ce():
    model, (x, y) = tiny_linear(), batch()
    loss, parts = TRADES(attack=pgd(), num_classes=K, beta=0.0).loss(model, x, y, generator=gen())
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y), rtol=0, atol=0)
    assert set(parts) == {"clean_ce", "kl", "adv_ce"} and parts["kl"] > 0


def test_trades_kl_by_hand_and_beta_scaling():
    model, (x, y) = tiny_linear(), batch()
    loss, parts = TRADES(attack=pgd(), num_classes=K, beta=2.5).loss(model, x, y, generator=gen(3))
    x_adv = trades_adversarial(model, x, eps=0.1, step_size=0.02, steps=5, bounds=(0.0, 1.0), generator=gen(3))
    expected_kl = kl_by_hand(model(x), model(x_adv))
    assert expected_kl > 1e-4 and parts["kl"].item() == pytest.approx(expected_kl, rel=1e-5)
    assert loss.item() == pytest.approx((F.cross_entropy(model(x), y) + 2.5 * parts["kl"]).item(), rel=1e-6)


def test_trades_adversarial_stays_in_ball_and_bounds_and_increases_kl():
    torch.manual_seed(0)
    model, (x, _) = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.BatchNorm1d(8), nn.Linear(8, K)), batch()
    model[2].eval()  # a mixed-mode model: every submodule's own mode must come back
    before = [m.training for m in model.modules()]
    eps, bounds = 0.05, (0.1, 0.9)
    x = x.clamp(*bounds)
    x_adv = trades_adversarial(model, x, eps=eps, step_size=0.01, steps=10, bounds=bounds, generator=gen(1))
    assert [m.training for m in model.modules()] == before
    assert (x_adv - x).abs().max() <= eps + 1e-7
    assert x_adv.min() >= bounds[0] and x_adv.max() <= bounds[1]
    assert not torch.equal(x_adv, x) and x_adv.shape == x.shape and not x_adv.requires_grad
    assert all(p.grad is None for p in model.parameters())
    start = x + START_STD * torch.randn(x.shape, generator=gen(1))
    model.eval()
    with torch.no_grad():
        kl_start, kl_adv = (kl_by_hand(model(x), model(z)) for z in (start, x_adv))
    assert kl_adv > kl_start + 1e-6


def test_trades_schedule_from_attack_and_bad_beta():
    assert attack_schedule(PGD(eps=0.1, steps=7)) == (0.1, 0.025, 7)  # alpha None: eps / 4
    assert attack_schedule(pgd()) == (0.1, 0.02, 5)
    assert attack_schedule(FGSM(eps=0.2)) == (0.2, 0.2, 1)
    for value in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta"):
            TRADES(attack=pgd(), num_classes=K, beta=value)


NON_LINF = [PGDL2(eps=0.5), ROA(), EyeglassAttack(), FaceMaskAttack(), Square(eps=0.5, norm="l2"),
            AutoAttack(eps=0.5, norm="l2"), Ensemble(eps=0.1, members="pgd,pgd_l2")]


@pytest.mark.parametrize("attack", NON_LINF, ids=lambda a: f"{a.name}-{a.norm}")
def test_trades_refuses_a_training_attack_that_is_not_linf(attack):
    """TRADES' own maximiser projects onto an ℓ∞ box: PGD-ℓ2's ε 0.5 would become ‖δ‖∞ ≤ 0.5
    and the physical attacks' "no budget" ε a whole-image perturbation."""
    assert attack.norm != "linf"
    with pytest.raises(ValueError, match=f"'trades'.*'linf'.*'{attack.name}' \\('{attack.norm}'\\)"):
        TRADES(attack=attack, num_classes=K)


@pytest.mark.parametrize("attack", [PGD(eps=0.1), FGSM(eps=0.1), CWLinf(eps=0.1), Square(eps=0.1),
                                    Ensemble(eps=0.1)], ids=lambda a: a.name)
def test_trades_accepts_linf_training_attacks(attack):
    assert attack.norm == "linf" and TRADES(attack=attack, num_classes=K).attack is attack


@pytest.mark.parametrize("attack", NON_LINF, ids=lambda a: f"{a.name}-{a.norm}")
def test_faal_keeps_any_training_attack(attack):
    """FAAL calls the configured attack as is, so every threat model is honoured."""
    assert FAAL.attack_norms is None and FAAL(attack=attack, num_classes=K).attack is attack


# ------------------------------------------------------------------------------ DRO solver
def kl_u(p: np.ndarray) -> float:
    return float(np.mean(np.log(1.0 / (len(p) * p))))  # KL(u ‖ p), u uniform


def slsqp(m: np.ndarray, r: float) -> np.ndarray:
    constraints = [{"type": "eq", "fun": lambda p: p.sum() - 1.0},
                   {"type": "ineq", "fun": lambda p: r - kl_u(np.maximum(p, 1e-12))}]
    res = minimize(lambda p: -p @ m, np.full(len(m), 1.0 / len(m)), method="SLSQP", bounds=[(1e-9, 1.0)] * len(m),
                   constraints=constraints, options={"ftol": 1e-12, "maxiter": 1000})
    assert res.success, res.message
    return res.x


@pytest.mark.parametrize("seed", range(21))
def test_kl_dro_weights_match_slsqp(seed):
    rng = np.random.default_rng(seed)
    k, r = int(rng.integers(2, 11)), (0.05, 0.5, 2.0)[seed % 3]
    m = rng.uniform(0.0, 3.0, size=k)
    p = kl_dro_weights(torch.tensor(m), r).numpy()
    assert p.min() >= 0 and p.sum() == pytest.approx(1.0, abs=1e-12)
    assert kl_u(p) == pytest.approx(r, rel=1e-6)      # the constraint is active
    ref = slsqp(m, r)
    assert kl_u(ref) <= r + 1e-6
    assert p @ m == pytest.approx(ref @ m, abs=1e-4)
    assert p @ m >= ref @ m - 1e-6                     # never worse than the generic solver


def test_kl_dro_weights_degenerate_cases():
    torch.testing.assert_close(kl_dro_weights(torch.full((4,), 1.7), 0.5), torch.full((4,), 0.25))
    torch.testing.assert_close(kl_dro_weights(torch.tensor([3.0]), 0.5), torch.tensor([1.0]))
    p = kl_dro_weights(torch.tensor([1.0, 1.0, 0.0]), 1e4)   # r out of reach: the tied worst classes
    torch.testing.assert_close(p, torch.tensor([0.5, 0.5, 0.0]))
    p = kl_dro_weights(torch.tensor([2.0, 0.5], dtype=torch.float32), 0.5)
    assert p.dtype == torch.float32 and p.sum().item() == pytest.approx(1.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="r must"):
            kl_dro_weights(torch.tensor([1.0, 2.0]), bad)
    with pytest.raises(ValueError, match="m must"):
        kl_dro_weights(torch.tensor([1.0, float("nan")]), 0.5)


def test_kl_dro_weights_larger_r_favours_the_worst_class():
    m = torch.tensor([0.3, 2.0, 1.1, 0.9], dtype=torch.float64)
    weights = [kl_dro_weights(m, r) for r in (1e-4, 0.05, 0.5, 2.0, 8.0)]
    worst, objective = [p[1].item() for p in weights], [(p @ m).item() for p in weights]
    assert all(a < b for a, b in zip(worst, worst[1:])) and worst[-1] > 0.99
    assert all(a < b for a, b in zip(objective, objective[1:]))


# ------------------------------------------------------------------------------------ FAAL
def adversarial_losses(model, x, y, seed: int = 7):
    return F.cross_entropy(model(pgd()(model, x, y, generator=gen(seed))), y, reduction="none")


def test_faal_tiny_r_is_mean_of_class_means():
    model, (x, y) = tiny_linear(4), batch(4, labels=[0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    loss, parts = FAAL(attack=pgd(), num_classes=4, r=1e-8).loss(model, x, y, generator=gen())
    ell = adversarial_losses(model, x, y)
    class_means = torch.stack([ell[y == c].mean() for c in range(4)])
    assert loss.item() == pytest.approx(class_means.mean().item(), rel=1e-4)
    assert parts["adv_ce"].item() == pytest.approx(ell.mean().item(), rel=1e-6)
    assert parts["max_weight"].item() == pytest.approx(0.25, abs=1e-3)


def test_faal_weights_only_present_classes():
    k, present = 6, [1, 4, 5]
    model, (x, y) = tiny_linear(k), batch(k, labels=[present[i % 3] for i in range(BATCH)])
    loss, parts = FAAL(attack=pgd(), num_classes=k, r=0.5).loss(model, x, y, generator=gen())
    ell = adversarial_losses(model, x, y).detach().double()
    m = torch.stack([ell[y == c].mean() for c in present])
    p = torch.tensor(slsqp(m.numpy(), 0.5))
    assert loss.item() == pytest.approx((p @ m).item(), abs=1e-4)
    assert parts["weighted"].item() == pytest.approx(loss.item(), rel=1e-6)
    assert parts["max_weight"].item() == pytest.approx(p.max().item(), abs=1e-3)
    assert loss.item() > m.mean().item()  # the worst-case reweighting leans towards harder classes


def test_faal_weights_are_constants_in_backward():
    """Gradients equal those of Σ p_c m_c + λ·CE(x) with p a constant (not differentiated)."""
    model, (x, y) = tiny_linear(), batch()
    loss, _ = FAAL(attack=pgd(), num_classes=K, lambda_clean=0.5).loss(model, x, y, generator=gen())
    ell = adversarial_losses(model, x, y)
    m = torch.stack([ell[y == c].mean() for c in range(K)])
    p = kl_dro_weights(m.detach(), 0.5)
    expected = (p * m).sum() + 0.5 * F.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, list(model.parameters()))
    g_ref = torch.autograd.grad(expected, list(model.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_faal_rejects_bad_options():
    for option, value in (("r", 0.0), ("r", -1.0), ("r", float("inf")), ("lambda_clean", -0.1)):
        with pytest.raises(ValueError, match=option):
            FAAL(attack=pgd(), num_classes=K, **{option: value})
