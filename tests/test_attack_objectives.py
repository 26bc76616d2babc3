"""Attack objectives (issue 10, part 2): the default path bit for bit, the objectives (FERD's
UTAE objective of issue 11 among them), the second-model objective's hygiene and refusals.
(The attacks package's import boundary is enforced for every part by
tests/test_import_direction.py.)"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distfair.attacks import (CWLinf, CWMargin, CrossEntropy, FGSM, Objective, PGD, PGDL2, ReferenceKL, SoftTargetKL,
                              UniformTargetKL)


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


# ---- a frozen copy of the code path before objectives existed (distfair/attacks/*.py, issue 10 part 1)
def _old_grad(model, x_adv, y, target, kind, kappa=0.0):
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv)
    if kind == "ce":
        loss = (F.cross_entropy(logits, y, reduction="sum") if target is None
                else -F.cross_entropy(logits, target, reduction="sum"))
    else:
        def margin(labels):
            own = logits.gather(1, labels[:, None]).squeeze(1)
            others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
            return own - others.amax(dim=1)
        loss = (-margin(y) if target is None else margin(target)).clamp(max=kappa).sum()
    (grad,) = torch.autograd.grad(loss, x_adv)
    return grad


def _l2(t):
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def _safe(n):
    return torch.where(n > 0, n, torch.ones_like(n))


def _old_attack(name, model, x, y, target, generator, *, eps, bounds, steps=10, kappa=0.0):
    """The old FGSM / PGD / PGD-ℓ2 / CW-ℓ∞ ``_perturb`` loops with their defaults (model in eval)."""
    kind = "cw" if name == "cw_linf" else "ce"
    linf = lambda xa: torch.maximum(torch.minimum(xa, x + eps), x - eps).clamp(*bounds)  # noqa: E731

    def l2(xa):
        delta = xa - x
        norm = _l2(delta)
        return (x + delta * torch.where(norm > eps, eps / _safe(norm), torch.ones_like(norm))).clamp(*bounds)

    if name == "fgsm":
        return linf(x + eps * _old_grad(model, x, y, target, kind).sign())
    if name == "pgd_l2":
        direction = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        radius = torch.rand((x.shape[0],), generator=generator, dtype=x.dtype).view_as(_l2(x))
        x_adv = (x + direction / _safe(_l2(direction)) * radius * eps).clamp(*bounds)
        for _ in range(steps):
            grad = _old_grad(model, x_adv, y, target, kind)
            x_adv = l2(x_adv + 2.5 * eps / steps * grad / _safe(_l2(grad)))
        return x_adv
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    x_adv = (x + (2 * noise - 1) * eps).clamp(*bounds)
    for _ in range(steps):
        x_adv = linf(x_adv + eps / 4 * _old_grad(model, x_adv, y, target, kind, kappa).sign())
    return x_adv


NEW = {"fgsm": FGSM, "pgd": PGD, "pgd_l2": PGDL2, "cw_linf": CWLinf}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 1.0)])
@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("name", sorted(NEW))
def test_default_outputs_are_bit_for_bit_those_of_the_old_code(name, targeted, bounds, dtype):
    torch.manual_seed(0)
    model = tiny_cnn().to(dtype)
    low, high = bounds
    x = low + (high - low) * torch.rand(12, 1, 6, 6, dtype=dtype)
    y = torch.randint(0, 3, (12,))
    target = (y + 1) % 3 if targeted else None
    eps, kwargs = (0.5, {}) if name == "pgd_l2" else (0.1, {})
    if name == "cw_linf":
        kwargs = {"kappa": 2.0}
    new = NEW[name](eps=eps, bounds=bounds, **kwargs)(model, x, y, target=target,
                                                       generator=torch.Generator().manual_seed(11))
    model.eval()
    old = _old_attack(name, model, x, y, target, torch.Generator().manual_seed(11), eps=eps, bounds=bounds,
                      **({"kappa": 2.0} if name == "cw_linf" else {}))
    assert torch.equal(new, old.detach())


# ---- the objectives themselves
def test_objective_values_and_reductions():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    target = (y + 1) % 4
    kw = {"x_adv": torch.zeros(5, 2), "y": y}
    assert torch.equal(CrossEntropy()(logits, target=None, **kw), F.cross_entropy(logits, y, reduction="none"))
    assert torch.equal(CrossEntropy()(logits, target=target, **kw), -F.cross_entropy(logits, target, reduction="none"))
    top2 = logits.topk(2, dim=1).values
    own = logits.gather(1, y[:, None]).squeeze(1)
    best_other = torch.where(own == top2[:, 0], top2[:, 1], top2[:, 0])
    assert torch.allclose(CWMargin(kappa=100.0)(logits, target=None, **kw), best_other - own)
    assert (CWMargin(kappa=0.5)(logits, target=None, **kw) <= 0.5).all()
    p = torch.softmax(torch.randn(5, 4), dim=1)
    expected = (p * (p.log() - F.log_softmax(logits, dim=1))).sum(dim=1)  # summed over classes, not / K
    assert torch.allclose(SoftTargetKL(p)(logits, target=None, **kw), expected, atol=1e-6)
    assert torch.allclose(SoftTargetKL(p.log(), log_target=True)(logits, target=None, **kw), expected, atol=1e-6)
    assert CrossEntropy.uses_target and CWMargin.uses_target
    assert not SoftTargetKL.uses_target and not ReferenceKL.uses_target


@pytest.mark.parametrize("bad, message", [
    (torch.full((3, 4), 0.5), "probabilities"),
    (torch.tensor([[1.5, -0.5]]), "probabilities"),
    (torch.ones(3), "shape"),
    (torch.ones(3, 2, dtype=torch.long), "floating-point"),
])
def test_soft_targets_are_validated(bad, message):
    with pytest.raises(ValueError, match=message):
        SoftTargetKL(bad)


def test_objective_errors_name_what_is_wrong():
    torch.manual_seed(0)
    model, x, y = nn.Linear(4, 3), torch.rand(6, 4), torch.randint(0, 3, (6,))
    with pytest.raises(ValueError, match="do not match"):  # soft targets of another batch
        PGD(eps=0.1)(model, x, y, objective=SoftTargetKL(torch.full((5, 3), 1 / 3)))
    with pytest.raises(ValueError, match="must be a distfair.attacks.Objective"):
        PGD(eps=0.1)(model, x, y, objective=lambda logits, **_: logits.sum(1))

    class Scalar(Objective):
        def __call__(self, logits, *, x_adv, y, target):
            return logits.sum()

    with pytest.raises(ValueError, match="one value per sample"):
        FGSM(eps=0.1)(model, x, y, objective=Scalar())
    with pytest.raises(ValueError, match="kappa"):
        CWMargin(kappa=-1.0)


def test_soft_target_kl_to_the_clean_prediction_is_trades_inner_objective():
    """TRADES' KL(f(x) ‖ f(x')) (Zhang et al., ICML 2019, Alg. 1): SoftTargetKL of the clean
    log-probabilities and ReferenceKL through the attacked model itself give the same x_adv."""
    torch.manual_seed(0)
    model, x, y = tiny_cnn().eval(), torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
    with torch.no_grad():
        log_p = F.log_softmax(model(x), dim=1)
    attack = PGD(eps=0.1, steps=5)
    a = attack(model, x, y, objective=SoftTargetKL(log_p, log_target=True), generator=torch.Generator().manual_seed(0))
    b = attack(model, x, y, objective=ReferenceKL(model, x), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


class UTAE(Objective):
    """FERD's UTAE objective (paper 002, Eq. 10) on the teacher's logits, as FERD can write it:
    KL(T(x) ‖ T(x')) − γ·KL(U ‖ T(x'))."""

    def __init__(self, teacher_probs, gamma):
        self.first, self.gamma = SoftTargetKL(teacher_probs), gamma
        self.uniform = SoftTargetKL(torch.full_like(teacher_probs, 1 / teacher_probs.shape[1]))

    def __call__(self, logits, *, x_adv, y, target):
        kw = {"x_adv": x_adv, "y": y, "target": target}
        return self.first(logits, **kw) - self.gamma * self.uniform(logits, **kw)


def test_a_composed_objective_runs_and_gamma_zero_is_plain_kl_pgd():
    torch.manual_seed(0)
    teacher, x, y = tiny_cnn().eval(), torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
    with torch.no_grad():
        p = torch.softmax(teacher(x), dim=1)
    attack = PGD(eps=0.1, steps=5)
    plain = attack(teacher, x, y, objective=SoftTargetKL(p), generator=torch.Generator().manual_seed(0))
    zero = attack(teacher, x, y, objective=UTAE(p, 0.0), generator=torch.Generator().manual_seed(0))
    half = attack(teacher, x, y, objective=UTAE(p, 0.5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, zero) and not torch.equal(plain, half)


def test_uniform_target_kl_by_hand_and_gamma_zero_is_plain_kl_pgd():
    """FERD Eq. 10 as distfair ships it (``UniformTargetKL``): per sample
    KL(T(x) ‖ T(x')) − γ·KL(U ‖ T(x')), each summed over classes; γ = 0 gives the same x_adv
    as SoftTargetKL of the reference's log-probabilities, bit for bit."""
    torch.manual_seed(0)
    reference, logits = torch.randn(5, 4), torch.randn(5, 4)
    p, log_q = torch.softmax(reference, dim=1), F.log_softmax(logits, dim=1)
    away = (p * (p.log() - log_q)).sum(dim=1)
    to_uniform = (0.25 * (math.log(0.25) - log_q)).sum(dim=1)
    kw = {"x_adv": torch.zeros(5, 2), "y": torch.zeros(5, dtype=torch.long), "target": None}
    assert torch.allclose(UniformTargetKL(reference, gamma=0.7)(logits, **kw), away - 0.7 * to_uniform, atol=1e-6)
    assert torch.allclose(UniformTargetKL(reference)(logits, **kw), away - 0.5 * to_uniform, atol=1e-6)  # γ = 0.5
    assert not UniformTargetKL.uses_target

    teacher, x, y = tiny_cnn().eval(), torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
    with torch.no_grad():
        t = teacher(x)
    attack = PGD(eps=0.1, steps=5)
    plain = attack(teacher, x, y, objective=SoftTargetKL(F.log_softmax(t, dim=1), log_target=True),
                   generator=torch.Generator().manual_seed(0))
    zero = attack(teacher, x, y, objective=UniformTargetKL(t, gamma=0.0), generator=torch.Generator().manual_seed(0))
    half = attack(teacher, x, y, objective=UniformTargetKL(t, gamma=0.5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, zero) and not torch.equal(plain, half)
    with torch.no_grad():   # the γ term keeps the teacher's prediction closer to uniform
        uniform = torch.full((8, 3), 1 / 3)
        assert SoftTargetKL(uniform)(teacher(half), **{**kw, "y": y}).mean() < \
            SoftTargetKL(uniform)(teacher(plain), **{**kw, "y": y}).mean()


@pytest.mark.parametrize("kwargs, message", [
    ({"reference_logits": torch.ones(3), "gamma": 0.5}, "shape"),
    ({"reference_logits": torch.ones(3, 2, dtype=torch.long), "gamma": 0.5}, "floating-point"),
    ({"reference_logits": torch.tensor([[0.0, float("inf")]]), "gamma": 0.5}, "finite"),
    ({"reference_logits": torch.zeros(2, 3), "gamma": -0.1}, "gamma"),
    ({"reference_logits": torch.zeros(2, 3), "gamma": float("nan")}, "gamma"),
])
def test_uniform_target_kl_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UniformTargetKL(**kwargs)
    with pytest.raises(ValueError, match="does not use a target"):
        PGD(eps=0.1)(nn.Linear(4, 3), torch.rand(2, 4), torch.tensor([0, 1]), target=torch.tensor([1, 2]),
                     objective=UniformTargetKL(torch.zeros(2, 3)))


# ---- the second-model objective leaves that model as it found it
@pytest.mark.parametrize("name", sorted(NEW))
@pytest.mark.parametrize("start", ["train", "eval", "mixed"])
def test_reference_kl_hygiene_and_increase(name, start):
    torch.manual_seed(0)
    student, teacher = tiny_cnn(), tiny_cnn()
    teacher.train(start != "eval")
    if start == "mixed":
        teacher[1].eval()
    teacher[0].weight.requires_grad_(False)  # a partly frozen teacher keeps its flags
    modes = [m.training for m in teacher.modules()]
    flags = [p.requires_grad for p in teacher.parameters()]
    preset = [None if not p.requires_grad else torch.randn_like(p) for p in teacher.parameters()]
    for p, g in zip(teacher.parameters(), preset):
        p.grad = None if g is None else g.clone()
    buffers = {k: v.clone() for k, v in teacher.named_buffers()}
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
    objective = ReferenceKL(teacher, x)
    assert [m.training for m in teacher.modules()] == modes  # construction restores too
    eps = 0.5 if name == "pgd_l2" else 0.1
    x_adv = NEW[name](eps=eps)(student, x, y, objective=objective, generator=torch.Generator().manual_seed(0))
    assert [m.training for m in teacher.modules()] == modes
    assert [p.requires_grad for p in teacher.parameters()] == flags
    for p, g in zip(teacher.parameters(), preset):
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    assert all(torch.equal(v, buffers[k]) for k, v in teacher.named_buffers())
    assert all(p.grad is None for p in student.parameters())
    value = lambda inp: ReferenceKL(teacher, x)(None, x_adv=inp, y=y, target=None)  # noqa: E731
    with torch.no_grad():
        assert value(x).abs().max().item() == 0.0 and value(x_adv).sum().item() > 1e-6


def test_reference_kl_refuses_a_non_module():
    with pytest.raises(ValueError, match="reference must be a torch.nn.Module"):
        ReferenceKL(lambda x: x, torch.rand(2, 3))

