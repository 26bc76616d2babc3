"""The attack contract (``distfair/attacks/_base.py``) as checks any attack class can be run
through: the repository's registered attacks (``tests/test_attack_contract.py``) and a third
party's alike.

Each check is ``check(cls)``: ``cls`` an ``Attack`` subclass, built with ``eps`` 0.1, the case's
``bounds`` and ``cls.TEST_OPTIONS`` (its smallest options), and run on tiny models
(:data:`CASES`: a BatchNorm CNN on [0, 1], a linear model on [0, 1] and on [-1, 1]). A check
raises ``AssertionError`` naming the case that broke the contract; :data:`CHECKS` lists them all
and :func:`check_attack` runs every one. An attack declares with ``accepts_objective`` whether
it maximises any ``Objective`` given per call (then it must honour one: checked with a KL to
fixed soft targets) or refuses one with a ValueError.
"""
from __future__ import annotations

import inspect
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from distfair.attacks import Attack, SoftTargetKL, StagedAttack
from distfair.testing._asserts import raises

EPS = 0.1
SIMPLE_TYPES = (float, int, bool, str, float | None, int | None, str | None)


def make_attack(cls: type[Attack], **overrides) -> Attack:
    """``cls`` with ε 0.1 on [0, 1] and its ``TEST_OPTIONS``, then ``overrides``."""
    return cls(**{"eps": EPS, "bounds": (0.0, 1.0), **cls.TEST_OPTIONS, **overrides})


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 3))


#: name -> (model factory, bounds)
CASES = {
    "cnn01": (tiny_cnn, (0.0, 1.0)),
    "linear01": (linear, (0.0, 1.0)),
    "linear-11": (linear, (-1.0, 1.0)),
}


def cases() -> Iterator[tuple[str, nn.Module, torch.Tensor, torch.Tensor, tuple[float, float]]]:
    """(case, model, x (16, 1, 6, 6) in bounds, y (16,), bounds) of every case, seeded."""
    for case in sorted(CASES):
        torch.manual_seed(0)
        factory, (low, high) = CASES[case]
        model = factory()
        x = low + (high - low) * torch.rand(16, 1, 6, 6)
        y = torch.randint(0, 3, (16,))
        yield case, model, x, y, (low, high)


def ce(model, x, y) -> float:
    with torch.no_grad():
        return F.cross_entropy(model.eval()(x), y, reduction="sum").item()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------- the checks
def check_signature_and_declarations(cls: type[Attack]) -> None:
    """Keyword-only annotated parameters of simple types with defaults (``eps`` may lack one):
    the config validator reads them; the declarations have their types."""
    assert issubclass(cls, Attack) and isinstance(cls.name, str) and cls.name
    params = inspect.signature(cls, eval_str=True).parameters
    for pname in ("eps", "bounds", "target_mode"):
        assert pname in params, f"{cls.name}: no parameter {pname}"
    for pname, p in params.items():
        assert p.kind is p.KEYWORD_ONLY, pname
        assert p.annotation is not p.empty, pname
        if pname != "bounds":
            assert p.annotation in SIMPLE_TYPES, (pname, p.annotation)
        if pname != "eps":
            assert p.default is not p.empty, pname
    for option in cls.TEST_OPTIONS:
        assert option in params and option not in ("eps", "bounds"), f"{cls.name}: TEST_OPTIONS {option!r}"
    assert isinstance(cls.accepts_objective, bool) and isinstance(cls.black_box, bool)
    attack = make_attack(cls)
    assert isinstance(attack.steps, int) and attack.steps >= 0, f"{cls.name}: steps {attack.steps!r}"
    assert float(attack.step_size) > 0, f"{cls.name}: step_size {attack.step_size!r}"
    if isinstance(attack, StagedAttack):
        assert isinstance(attack.black_box_stages(), set)


def check_budget_bounds_dtype_and_shape(cls: type[Attack]) -> None:
    for case, model, x, y, bounds in cases():
        x_adv = make_attack(cls, bounds=bounds)(model, x, y, generator=gen())
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device, case
        assert not x_adv.requires_grad, case
        assert (x_adv - x).abs().max().item() <= EPS + 1e-6, case
        assert x_adv.min().item() >= bounds[0] and x_adv.max().item() <= bounds[1], case


def check_float64_keeps_dtype(cls: type[Attack]) -> None:
    torch.manual_seed(0)
    model, x, y = linear().double(), torch.rand(4, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    assert make_attack(cls)(model, x, y).dtype == torch.float64


def check_mode_restored_and_bn_stats_unchanged(cls: type[Attack]) -> None:
    for start in ("train", "eval", "mixed"):
        torch.manual_seed(0)
        model = tiny_cnn()
        model.train(start != "eval")
        if start == "mixed":
            model[1].eval()  # BatchNorm in eval, everything else in train
        before = [m.training for m in model.modules()]
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
        make_attack(cls)(model, x, y)
        assert [m.training for m in model.modules()] == before, f"{cls.name}: mode not restored ({start})"
        for k, v in model.named_buffers():
            assert torch.equal(v, buffers[k]), (start, k)


def check_mode_restored_when_model_raises(cls: type[Attack]) -> None:
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Identity(), Broken()).train()
    with raises(RuntimeError, match="boom"):
        make_attack(cls)(model, torch.rand(2, 3), torch.tensor([0, 1]))
    assert all(m.training for m in model.modules())


def check_caller_input_untouched(cls: type[Attack]) -> None:
    for case, model, x, y, bounds in cases():
        for requires_grad in (False, True):
            x_in = x.clone().requires_grad_(requires_grad)
            x_copy, y_copy = x_in.detach().clone(), y.clone()
            make_attack(cls, bounds=bounds)(model, x_in, y)
            assert torch.equal(x_in.detach(), x_copy) and torch.equal(y, y_copy), case
            assert x_in.requires_grad is requires_grad and x_in.grad is None, case


def check_parameter_grads_untouched(cls: type[Attack]) -> None:
    for case, model, x, y, bounds in cases():
        params = list(model.parameters())
        make_attack(cls, bounds=bounds)(model, x, y)
        assert all(p.grad is None for p in params), case
        preset = [torch.randn_like(p) for p in params]
        for p, g in zip(params, preset):
            p.grad = g.clone()
        make_attack(cls, bounds=bounds)(model, x, y)
        assert all(torch.equal(p.grad, g) for p, g in zip(params, preset)), case


def check_untargeted_increases_loss(cls: type[Attack]) -> None:
    for case, model, x, y, bounds in cases():
        x_adv = make_attack(cls, bounds=bounds)(model, x, y, generator=gen())
        assert ce(model, x_adv, y) >= ce(model, x, y), case


def check_targeted_decreases_loss_to_target(cls: type[Attack]) -> None:
    for case, model, x, y, bounds in cases():
        target = (y + 1) % 3
        x_adv = make_attack(cls, bounds=bounds)(model, x, y, target=target, generator=gen())
        assert ce(model, x_adv, target) < ce(model, x, target), case


def check_works_under_no_grad(cls: type[Attack]) -> None:
    for case, model, x, y, bounds in cases():
        with torch.no_grad():
            x_adv = make_attack(cls, bounds=bounds)(model, x, y)
        assert ce(model, x_adv, y) >= ce(model, x, y), case


def check_same_seed_same_output(cls: type[Attack]) -> None:
    for case, model, x, y, bounds in cases():
        for target_mode in ("none", "random"):
            attack = make_attack(cls, bounds=bounds, target_mode=target_mode)
            a = attack(model, x, y, generator=gen(123))
            b = attack(model, x, y, generator=gen(123))
            assert torch.equal(a, b), (case, target_mode)


def check_eps_zero_returns_x(cls: type[Attack]) -> None:
    for case, model, x, y, bounds in cases():
        assert torch.equal(make_attack(cls, eps=0.0, bounds=bounds)(model, x, y), x), case


#: (bad parameters, what the ValueError must say)
INVALID_PARAMS = [
    ({"eps": -0.1}, "eps must be >= 0, got -0.1"),
    ({"eps": float("nan")}, "eps"),
    ({"eps": "0.1"}, "eps"),
    ({"bounds": (1.0, 0.0)}, "bounds"),
    ({"bounds": (0.0, 0.0)}, "bounds"),
    ({"bounds": (0.0,)}, "bounds"),
    ({"target_mode": "least_likely"}, "target_mode"),
]


def check_invalid_params_raise(cls: type[Attack]) -> None:
    for bad, message in INVALID_PARAMS:
        with raises(ValueError, match=message.replace("(", r"\(")):
            make_attack(cls, **bad)


def check_invalid_shapes_raise(cls: type[Attack]) -> None:
    model, attack = linear(), make_attack(cls)
    x = torch.rand(4, 1, 6, 6)
    with raises(ValueError, match="y must be"):
        attack(model, x, torch.tensor([0, 1, 2]))
    with raises(ValueError, match="y must be"):
        attack(model, x, torch.zeros(4))
    with raises(ValueError, match="target must be"):
        attack(model, x, torch.tensor([0, 1, 2, 0]), target=torch.tensor([1]))
    with raises(ValueError, match="x must be"):
        attack(model, torch.zeros(4, 36, dtype=torch.long), torch.tensor([0, 1, 2, 0]))


def soft_targets(n: int, k: int = 3) -> torch.Tensor:
    return torch.softmax(2 * torch.randn(n, k, generator=gen(5)), dim=1)


def kl_to(model, x, p) -> float:  # Σ_i KL(p_i ‖ softmax(f(x_i))), each summed over classes
    with torch.no_grad():
        return F.kl_div(F.log_softmax(model(x), dim=1), p, reduction="sum").item()


def check_refuses_objective_clearly_or_honours_kl_to_soft_targets(cls: type[Attack]) -> None:
    """KL(p ‖ f(x')) to fixed soft targets p: it increases, the budget (ℓ∞ or ℓ2, per the
    attack's norm) and range hold, the input, the model's modes and parameters' .grad are
    untouched. On the linear models the objective is convex in x, so an ascent step cannot
    lower it; the CNN is checked the same way on this batch."""
    for case, model, x, y, bounds in cases():
        attack = make_attack(cls, bounds=bounds)
        objective = SoftTargetKL(soft_targets(len(y)))
        model.train()
        if not attack.accepts_objective:
            with raises(ValueError, match=f"attack '{cls.name}' does not accept a custom objective"):
                attack(model, x, y, objective=objective)
            assert all(m.training for m in model.modules()), case
            continue
        assert attack.norm in ("linf", "l2"), "an attack that accepts objectives declares its budget's norm"
        params = list(model.parameters())
        preset = [torch.randn_like(p) for p in params]
        for p, g in zip(params, preset):
            p.grad = g.clone()
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        x_in = x.clone().requires_grad_(True)
        x_adv = attack(model, x_in, y, objective=objective, generator=gen())
        assert all(m.training for m in model.modules()), case
        assert all(torch.equal(p.grad, g) for p, g in zip(params, preset)), case
        assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers()), case
        assert torch.equal(x_in.detach(), x) and x_in.grad is None and not x_adv.requires_grad, case
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype, case
        delta = (x_adv - x).flatten(1)
        if attack.norm == "l2":
            assert delta.norm(dim=1).max().item() <= EPS + 1e-6, case
        else:
            assert delta.abs().max().item() <= EPS + 1e-6, case
        assert x_adv.min().item() >= bounds[0] and x_adv.max().item() <= bounds[1], case
        model.eval()
        assert kl_to(model, x_adv, objective.targets) > kl_to(model, x, objective.targets), case


def check_objective_with_a_target_is_refused_unless_it_uses_one(cls: type[Attack]) -> None:
    for case, model, x, y, bounds in cases():
        objective = SoftTargetKL(soft_targets(len(y)))
        for kwargs, mode in (({"target": (y + 1) % 3}, "none"), ({}, "random")):
            with raises(ValueError, match="objective"):
                make_attack(cls, bounds=bounds, target_mode=mode)(model, x, y, objective=objective, **kwargs)


def check_default_objective_given_explicitly_changes_nothing(cls: type[Attack]) -> None:
    for case, model, x, y, bounds in cases():
        attack = make_attack(cls, bounds=bounds)
        if not attack.accepts_objective:
            return
        for target in (None, (y + 1) % 3):
            a = attack(model, x, y, target=target, generator=gen(3))
            b = attack(model, x, y, target=target, generator=gen(3), objective=attack.default_objective())
            assert torch.equal(a, b), case


#: name -> check; each is ``check(cls)``
CHECKS: dict[str, Callable[[type[Attack]], None]] = {
    check.__name__.removeprefix("check_"): check for check in (
        check_signature_and_declarations, check_budget_bounds_dtype_and_shape, check_float64_keeps_dtype,
        check_mode_restored_and_bn_stats_unchanged, check_mode_restored_when_model_raises,
        check_caller_input_untouched, check_parameter_grads_untouched, check_untargeted_increases_loss,
        check_targeted_decreases_loss_to_target, check_works_under_no_grad, check_same_seed_same_output,
        check_eps_zero_returns_x, check_invalid_params_raise, check_invalid_shapes_raise,
        check_refuses_objective_clearly_or_honours_kl_to_soft_targets,
        check_objective_with_a_target_is_refused_unless_it_uses_one,
        check_default_objective_given_explicitly_changes_nothing)
}


def check_attack(cls: type[Attack]) -> None:
    """Every contract check on ``cls`` (:data:`CHECKS`)."""
    for check in CHECKS.values():
        check(cls)
