"""Attack-specific tests: closed forms on linear models, PGD vs FGSM, targets, the registry."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distfair.attacks import ATTACKS, FGSM, PGD, build_attack
from distfair.attacks._base import random_wrong_class

EPS = 0.05


def linear_model(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    model = nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    return model


@pytest.fixture
def binary():
    """Logits z = [0, w·x + b]; x in the interior [0.3, 0.7] so the ε-ball stays in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, generator=g, dtype=torch.float64)
    model = linear_model(torch.stack([torch.zeros_like(w), w]), torch.tensor([0.0, 0.1], dtype=torch.float64))
    x = 0.3 + 0.4 * torch.rand(32, 20, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (32,), generator=g)
    return model, w, x, y


def margin(model, x, y):
    z = model(x).detach()
    return z.gather(1, y[:, None]).squeeze(1) - z.gather(1, (1 - y)[:, None]).squeeze(1)


@pytest.mark.parametrize("attack", [FGSM(eps=EPS), PGD(eps=EPS, alpha=EPS / 4, steps=50)], ids=["fgsm", "pgd"])
def test_linear_binary_reaches_closed_form(binary, attack):
    model, w, x, y = binary
    x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(1))
    drop = margin(model, x, y) - margin(model, x_adv, y)
    expected = EPS * w.abs().sum()
    assert torch.allclose(drop, expected.expand_as(drop), atol=1e-5, rtol=0)


def test_closed_form_does_not_assume_unit_bounds(binary):
    """The same optimum for data in [-1, 1] (x mapped to [-0.4, 0.4]): no hard-coded [0, 1]."""
    model, w, x, y = binary
    x = x - 0.5
    x_adv = PGD(eps=EPS, steps=50, bounds=(-1.0, 1.0))(model, x, y, generator=torch.Generator().manual_seed(1))
    drop = margin(model, x, y) - margin(model, x_adv, y)
    assert torch.allclose(drop, (EPS * w.abs().sum()).expand_as(drop), atol=1e-5, rtol=0)


def test_clamps_to_bounds_at_the_edge():
    model = linear_model(torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # the untargeted step pushes x0 down, x1 up
    x_adv = FGSM(eps=0.1)(model, x, torch.tensor([1]))
    assert torch.allclose(x_adv, torch.tensor([[0.9, 0.1]], dtype=torch.float64))
    x_adv = FGSM(eps=0.1)(model, x, torch.tensor([0]))  # the step pushes x0 up, x1 down: clamped
    assert torch.equal(x_adv, x)


def test_pgd_targeted_reaches_feasible_target():
    """Logits near-tied at x (class y ahead by 0.1): every target is reachable within ε = 0.1."""
    g = torch.Generator().manual_seed(0)
    k, d = 5, 10
    weight = torch.randn(k, d, generator=g, dtype=torch.float64)
    x = 0.3 + 0.4 * torch.rand(1, d, generator=g, dtype=torch.float64)
    y = torch.tensor([2])
    bias = -(weight @ x[0]) + 0.1 * F.one_hot(y[0], k).double()
    model = linear_model(weight, bias)
    assert model(x).argmax(1).item() == 2
    attack = PGD(eps=0.1, steps=20)
    for t in [0, 1, 3, 4]:
        x_adv = attack(model, x, y, target=torch.tensor([t]), generator=torch.Generator().manual_seed(0))
        assert model(x_adv).argmax(1).item() == t


def test_pgd_at_least_as_strong_as_fgsm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    x, y = torch.rand(64, 8), torch.randint(0, 4, (64,))
    loss = lambda xa: F.cross_entropy(model(xa), y).item()  # noqa: E731
    fgsm = FGSM(eps=0.1)(model, x, y)
    pgd = PGD(eps=0.1, steps=20)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert loss(pgd) >= loss(fgsm) > loss(x)


def test_pgd_random_start_depends_on_seed_and_can_be_disabled():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.rand(8, 8), torch.randint(0, 3, (8,))
    pgd = PGD(eps=0.1, steps=1, alpha=0.01)
    a = pgd(model, x, y, generator=torch.Generator().manual_seed(0))
    b = pgd(model, x, y, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    plain = PGD(eps=0.1, steps=1, alpha=0.01, random_start=False)
    assert torch.equal(plain(model, x, y, generator=torch.Generator().manual_seed(0)),
                       plain(model, x, y, generator=torch.Generator().manual_seed(1)))


def test_pgd_default_alpha_is_quarter_eps():
    assert PGD(eps=0.2).step_size == pytest.approx(0.05)
    assert PGD(eps=0.2, alpha=0.01).step_size == 0.01


@pytest.mark.parametrize("bad, message", [
    ({"steps": 0}, "steps must be >= 1, got 0"),
    ({"steps": 2.5}, "steps must be an int"),
    ({"alpha": 0.0}, "alpha must be > 0, got 0.0"),
    ({"alpha": -1.0}, "alpha must be > 0"),
    ({"random_start": "yes"}, "random_start"),
])
def test_pgd_invalid_params(bad, message):
    with pytest.raises(ValueError, match=message):
        PGD(eps=0.1, **bad)


def test_random_wrong_class_never_true_class():
    y = torch.arange(10).repeat(200)
    target = random_wrong_class(y, 10, torch.Generator().manual_seed(0))
    assert (target != y).all() and ((target >= 0) & (target < 10)).all()
    assert set(target[y == 0].tolist()) == set(range(1, 10))  # every wrong class is drawn
    with pytest.raises(ValueError, match="num_classes"):
        random_wrong_class(y, 1)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_random_target_mode_passes_a_wrong_class(name, monkeypatch):
    seen = []
    cls = ATTACKS[name]
    original = cls._perturb
    monkeypatch.setattr(cls, "_perturb", lambda self, m, x, y, t, g: seen.append(t) or original(self, m, x, y, t, g))
    model = nn.Linear(4, 6)
    x, y = torch.rand(100, 4), torch.randint(0, 6, (100,))
    cls(eps=0.1, target_mode="random")(model, x, y, generator=torch.Generator().manual_seed(0))
    assert seen[0] is not None and (seen[0] != y).all()
    cls(eps=0.1)(model, x, y)
    assert seen[1] is None  # "none": untargeted
    explicit = torch.zeros(100, dtype=torch.long)
    cls(eps=0.1, target_mode="random")(model, x, y, target=explicit)
    assert torch.equal(seen[2], explicit)  # an explicit target wins over the random mode


def test_build_attack():
    attack = build_attack("pgd", bounds=(-1.0, 1.0), eps=0.01, steps=3)
    assert isinstance(attack, PGD) and attack.bounds == (-1.0, 1.0) and attack.steps == 3
    known = ", ".join(sorted(ATTACKS))
    with pytest.raises(ValueError, match=rf"unknown attack 'cw'; known: {known}$"):
        build_attack("cw", bounds=(0.0, 1.0), eps=0.1)
    with pytest.raises(ValueError, match="no parameter"):
        build_attack("fgsm", bounds=(0.0, 1.0), eps=0.1, steps=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_cpu_generator_with_cuda_inputs(name):
    model = nn.Linear(4, 3).cuda()
    x, y = torch.rand(8, 4, device="cuda"), torch.randint(0, 3, (8,), device="cuda")
    attack = ATTACKS[name](eps=0.1, target_mode="random")
    a = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    b = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert a.device == x.device and torch.equal(a, b)
