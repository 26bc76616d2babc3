"""Properties every registered attack must have, run over every entry of ``ATTACKS``.

Adding an attack to the registry adds it here; its constructor must accept
``cls(eps=..., bounds=...)`` with every other parameter defaulting. An attack declares with
``accepts_objective`` whether it maximises any ``Objective`` given per call (then it must honour
one: tests below with a KL to fixed soft targets) or refuses one with a ValueError.
"""
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distfair.attacks import ATTACKS, Attack, SoftTargetKL

NAMES = sorted(ATTACKS)
EPS = 0.1
SIMPLE_TYPES = (float, int, bool, str, float | None, int | None, str | None)


def default_params(cls: type[Attack]) -> dict:
    """Per-attack table built from the class: every defaulted keyword parameter's default."""
    return {n: p.default for n, p in inspect.signature(cls).parameters.items() if p.default is not p.empty}


def make_attack(name: str, **overrides) -> Attack:
    cls = ATTACKS[name]
    return cls(**{**default_params(cls), "eps": EPS, "bounds": (0.0, 1.0), **overrides})


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 3))


CASES = {  # model factory, bounds
    "cnn01": (tiny_cnn, (0.0, 1.0)),
    "linear01": (linear, (0.0, 1.0)),
    "linear-11": (linear, (-1.0, 1.0)),
}


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


@pytest.fixture(params=sorted(CASES))
def setup(request):
    torch.manual_seed(0)
    factory, (low, high) = CASES[request.param]
    model = factory()
    x = low + (high - low) * torch.rand(16, 1, 6, 6)
    y = torch.randint(0, 3, (16,))
    return model, x, y, (low, high)


def ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model.eval()(x), y, reduction="sum").item()


def test_registry_name_and_signature(name):
    cls = ATTACKS[name]
    assert issubclass(cls, Attack) and cls.name == name
    params = inspect.signature(cls, eval_str=True).parameters
    for pname in ("eps", "bounds", "target_mode"):
        assert pname in params
    for pname, p in params.items():
        assert p.kind is p.KEYWORD_ONLY, pname
        assert p.annotation is not p.empty, pname
        if pname != "bounds":
            assert p.annotation in SIMPLE_TYPES, (pname, p.annotation)
        if pname != "eps":
            assert p.default is not p.empty, pname


def test_budget_bounds_dtype_and_shape(name, setup):
    model, x, y, bounds = setup
    x_adv = make_attack(name, bounds=bounds)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= bounds[0] and x_adv.max().item() <= bounds[1]


def test_float64_keeps_dtype(name):
    torch.manual_seed(0)
    model, x, y = linear().double(), torch.rand(4, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    assert make_attack(name)(model, x, y).dtype == torch.float64


@pytest.mark.parametrize("start", ["train", "eval", "mixed"])
def test_mode_restored_and_bn_stats_unchanged(name, start):
    torch.manual_seed(0)
    model = tiny_cnn()
    model.train(start != "eval")
    if start == "mixed":
        model[1].eval()  # BatchNorm in eval, everything else in train
    before = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
    make_attack(name)(model, x, y)
    assert [m.training for m in model.modules()] == before
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k


def test_mode_restored_when_model_raises(name):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Identity(), Broken()).train()
    with pytest.raises(RuntimeError, match="boom"):
        make_attack(name)(model, torch.rand(2, 3), torch.tensor([0, 1]))
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("requires_grad", [False, True])
def test_caller_input_untouched(name, setup, requires_grad):
    model, x, y, bounds = setup
    x = x.clone().requires_grad_(requires_grad)
    x_copy, y_copy = x.detach().clone(), y.clone()
    make_attack(name, bounds=bounds)(model, x, y)
    assert torch.equal(x.detach(), x_copy) and torch.equal(y, y_copy)
    assert x.requires_grad is requires_grad and x.grad is None


def test_parameter_grads_untouched(name, setup):
    model, x, y, bounds = setup
    params = list(model.parameters())
    make_attack(name, bounds=bounds)(model, x, y)
    assert all(p.grad is None for p in params)
    preset = [torch.randn_like(p) for p in params]
    for p, g in zip(params, preset):
        p.grad = g.clone()
    make_attack(name, bounds=bounds)(model, x, y)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, preset))


def test_untargeted_increases_loss(name, setup):
    model, x, y, bounds = setup
    x_adv = make_attack(name, bounds=bounds)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert ce(model, x_adv, y) >= ce(model, x, y)


def test_targeted_decreases_loss_to_target(name, setup):
    model, x, y, bounds = setup
    target = (y + 1) % 3
    x_adv = make_attack(name, bounds=bounds)(model, x, y, target=target, generator=torch.Generator().manual_seed(0))
    assert ce(model, x_adv, target) < ce(model, x, target)


def test_works_under_no_grad(name, setup):
    model, x, y, bounds = setup
    with torch.no_grad():
        x_adv = make_attack(name, bounds=bounds)(model, x, y)
    assert ce(model, x_adv, y) >= ce(model, x, y)


@pytest.mark.parametrize("target_mode", ["none", "random"])
def test_same_seed_same_output(name, setup, target_mode):
    model, x, y, bounds = setup
    attack = make_attack(name, bounds=bounds, target_mode=target_mode)
    a = attack(model, x, y, generator=torch.Generator().manual_seed(123))
    b = attack(model, x, y, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a, b)


def test_eps_zero_returns_x(name, setup):
    model, x, y, bounds = setup
    assert torch.equal(make_attack(name, eps=0.0, bounds=bounds)(model, x, y), x)


@pytest.mark.parametrize("bad, message", [
    ({"eps": -0.1}, "eps must be >= 0, got -0.1"),
    ({"eps": float("nan")}, "eps"),
    ({"eps": "0.1"}, "eps"),
    ({"bounds": (1.0, 0.0)}, "bounds"),
    ({"bounds": (0.0, 0.0)}, "bounds"),
    ({"bounds": (0.0,)}, "bounds"),
    ({"target_mode": "least_likely"}, "target_mode"),
])
def test_invalid_params_raise(name, bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make_attack(name, **bad)


def test_invalid_shapes_raise(name):
    model, attack = linear(), make_attack(name)
    x = torch.rand(4, 1, 6, 6)
    with pytest.raises(ValueError, match="y must be"):
        attack(model, x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="y must be"):
        attack(model, x, torch.zeros(4))
    with pytest.raises(ValueError, match="target must be"):
        attack(model, x, torch.tensor([0, 1, 2, 0]), target=torch.tensor([1]))
    with pytest.raises(ValueError, match="x must be"):
        attack(model, torch.zeros(4, 36, dtype=torch.long), torch.tensor([0, 1, 2, 0]))


def soft_targets(n: int, k: int = 3) -> torch.Tensor:
    return torch.softmax(2 * torch.randn(n, k, generator=torch.Generator().manual_seed(5)), dim=1)


def kl_to(model, x, p):  # Σ_i KL(p_i ‖ softmax(f(x_i))), each summed over classes
    with torch.no_grad():
        return F.kl_div(F.log_softmax(model(x), dim=1), p, reduction="sum").item()


def test_accepts_objective_is_declared(name):
    assert isinstance(ATTACKS[name].accepts_objective, bool)


def test_refuses_objective_clearly_or_honours_kl_to_soft_targets(name, setup):
    """KL(p ‖ f(x')) to fixed soft targets p: it increases, the budget (ℓ∞ or ℓ2, per the
    attack's norm) and range hold, the input, the model's modes and parameters' .grad are
    untouched. On the linear models the objective is convex in x, so an ascent step cannot
    lower it; the CNN is checked the same way on this batch."""
    model, x, y, bounds = setup
    attack = make_attack(name, bounds=bounds)
    objective = SoftTargetKL(soft_targets(len(y)))
    model.train()
    if not attack.accepts_objective:
        with pytest.raises(ValueError, match=f"attack '{name}' does not accept a custom objective"):
            attack(model, x, y, objective=objective)
        assert all(m.training for m in model.modules())
        return
    assert attack.norm in ("linf", "l2"), "an attack that accepts objectives declares its budget's norm"
    params = list(model.parameters())
    preset = [torch.randn_like(p) for p in params]
    for p, g in zip(params, preset):
        p.grad = g.clone()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x_in = x.clone().requires_grad_(True)
    x_adv = attack(model, x_in, y, objective=objective, generator=torch.Generator().manual_seed(0))
    assert all(m.training for m in model.modules())
    assert all(torch.equal(p.grad, g) for p, g in zip(params, preset))
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert torch.equal(x_in.detach(), x) and x_in.grad is None and not x_adv.requires_grad
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    delta = (x_adv - x).flatten(1)
    if attack.norm == "l2":
        assert delta.norm(dim=1).max().item() <= EPS + 1e-6
    else:
        assert delta.abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= bounds[0] and x_adv.max().item() <= bounds[1]
    model.eval()
    assert kl_to(model, x_adv, objective.targets) > kl_to(model, x, objective.targets)


def test_objective_with_a_target_is_refused_unless_it_uses_one(name, setup):
    model, x, y, bounds = setup
    objective = SoftTargetKL(soft_targets(len(y)))
    for kwargs, mode in (({"target": (y + 1) % 3}, "none"), ({}, "random")):
        with pytest.raises(ValueError, match="objective"):
            make_attack(name, bounds=bounds, target_mode=mode)(model, x, y, objective=objective, **kwargs)


def test_default_objective_given_explicitly_changes_nothing(name, setup):
    model, x, y, bounds = setup
    attack = make_attack(name, bounds=bounds)
    if not attack.accepts_objective:
        pytest.skip("refuses objectives")
    for target in (None, (y + 1) % 3):
        a = attack(model, x, y, target=target, generator=torch.Generator().manual_seed(3))
        b = attack(model, x, y, target=target, generator=torch.Generator().manual_seed(3),
                   objective=attack.default_objective())
        assert torch.equal(a, b)
