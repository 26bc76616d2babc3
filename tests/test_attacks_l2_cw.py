"""PGD-ℓ2 and CW-ℓ∞: ℓ2 budget, closed forms on a linear binary model, CW margin, targets, seeds."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distfair.attacks import CWLinf, PGDL2
from distfair.attacks.cw_linf import cw_margin
from test_attacks import binary, linear_model  # noqa: F401 - shared linear-model helper and fixture

EPS = 0.05


def margin_drop(model, x, x_adv, y):  # clean margin z_y − max_{j≠y} z_j minus the adversarial one
    return (cw_margin(model(x), y) - cw_margin(model(x_adv), y)).detach()


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 1.0)])
def test_pgd_l2_budget_per_sample_and_range(bounds):
    torch.manual_seed(0)
    low, high = bounds
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = low + (high - low) * torch.rand(64, 1, 6, 6), torch.randint(0, 3, (64,))
    for eps in (0.1, 0.5, 3.0):  # 3.0: the ball is wider than the box, so the clamp is active
        x_adv = PGDL2(eps=eps, steps=10, bounds=bounds)(model, x, y, generator=torch.Generator().manual_seed(0))
        assert (x_adv - x).flatten(1).norm(dim=1).max().item() <= eps + 1e-6
        assert x_adv.min().item() >= low and x_adv.max().item() <= high


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_l2_linear_binary_reaches_closed_form(binary, random_start):
    """The optimum of a linear margin over the ℓ2 ball moves it by eps·‖w‖₂ (dual norm)."""
    model, w, x, y = binary
    attack = PGDL2(eps=EPS, alpha=EPS / 4, steps=100, random_start=random_start)
    x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(1))
    drop = margin_drop(model, x, x_adv, y)
    assert torch.allclose(drop, (EPS * w.norm()).expand_as(drop), atol=1e-4, rtol=0)


def test_cw_linf_linear_binary_reaches_closed_form(binary):
    """Like PGD-ℓ∞: the margin drops by eps·‖w‖₁; a large κ keeps pushing past the boundary."""
    model, w, x, y = binary
    x_adv = CWLinf(eps=EPS, steps=50, kappa=1e3)(model, x, y, generator=torch.Generator().manual_seed(1))
    drop = margin_drop(model, x, x_adv, y)
    assert torch.allclose(drop, (EPS * w.abs().sum()).expand_as(drop), atol=1e-4, rtol=0)


def test_cw_linf_kappa_zero_stops_past_the_boundary(binary):
    """κ = 0: a sample that crosses the boundary stops within one step; a misclassified one stays."""
    model, w, x, y = binary
    attack = CWLinf(eps=EPS, steps=50, random_start=False)
    x_adv = attack(model, x, y)
    before, after = cw_margin(model(x), y).detach(), cw_margin(model(x_adv), y).detach()
    crossed, wrong = (before > 0) & (after < 0), before < 0
    assert crossed.any() and (after[crossed] >= -attack.step_size * w.abs().sum() - 1e-9).all()
    assert wrong.any() and torch.equal(x_adv[wrong], x[wrong])


def test_cw_linf_increases_cw_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
    x, y = torch.rand(64, 8), torch.randint(0, 4, (64,))
    for kappa in (0.0, 50.0):  # the ascended objective min(max_{j≠y} z_j − z_y, κ) goes up
        attack = CWLinf(eps=0.1, steps=20, kappa=kappa)
        x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            objective = lambda xa: (-cw_margin(model(xa), y)).clamp(max=kappa)  # noqa: E731
            assert (objective(x_adv) >= objective(x) - 1e-6).all()


def test_cw_linf_targeted_reaches_feasible_target():
    """Three logits near-tied at x (class y ahead by 0.1): each target is reachable within ε."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 10, generator=g, dtype=torch.float64)
    x = 0.3 + 0.4 * torch.rand(1, 10, generator=g, dtype=torch.float64)
    y = torch.tensor([2])
    model = linear_model(weight, -(weight @ x[0]) + 0.1 * F.one_hot(y[0], 3).double())
    assert model(x).argmax(1).item() == 2
    for t in (0, 1):
        x_adv = CWLinf(eps=0.1, steps=20)(model, x, y, target=torch.tensor([t]),
                                          generator=torch.Generator().manual_seed(0))
        assert model(x_adv).argmax(1).item() == t


@pytest.mark.parametrize("cls", [PGDL2, CWLinf])
def test_same_seed_same_result_other_seed_other_start(cls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.rand(8, 8), torch.randint(0, 3, (8,))
    attack = cls(eps=0.1, steps=1, alpha=0.01)
    run = lambda seed: attack(model, x, y, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_default_step_sizes():
    assert PGDL2(eps=0.5, steps=20).step_size == pytest.approx(2.5 * 0.5 / 20)
    assert PGDL2(eps=0.5, alpha=0.1).step_size == 0.1
    assert CWLinf(eps=0.2).step_size == pytest.approx(0.05)


@pytest.mark.parametrize("cls", [PGDL2, CWLinf])
@pytest.mark.parametrize("bad, message", [
    ({"steps": 0}, "steps must be >= 1, got 0"),
    ({"alpha": 0.0}, "alpha must be > 0, got 0.0"),
    ({"alpha": -1.0}, "alpha must be > 0"),
    ({"random_start": "yes"}, "random_start"),
])
def test_invalid_params_raise(cls, bad, message):
    with pytest.raises(ValueError, match=message):
        cls(eps=0.1, **bad)


@pytest.mark.parametrize("kappa, message", [(-1.0, "kappa must be >= 0, got -1.0"), (float("inf"), "kappa")])
def test_invalid_kappa_raises(kappa, message):
    with pytest.raises(ValueError, match=message):
        CWLinf(eps=0.1, kappa=kappa)
