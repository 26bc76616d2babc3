"""FERD (paper 002) and its data-free DFRD baseline: the generator, the loss terms by hand, the
information bottleneck, the class reweighting, the UTAE objective, the ablation switches, the
frozen teacher, and exact resume through the engine.

The teacher is a digits_cnn trained for one epoch by the engine itself (its ``last.pt``), so
the defenses load it exactly as a real run does (``model_from_checkpoint``)."""
from __future__ import annotations

import copy
import dataclasses
import math
import zlib

import pytest
import torch
from torch import nn

from distfair.attacks import UniformTargetKL
from distfair.config import validate
from distfair.defenses import DEFENSES, DefenseContext
from distfair.defenses._datafree import (BatchNormStatistics, NoBatchNormWarning, bn_matching_term,
                                         channel_statistics, generator_objective, kl_to_teacher, one_hot_loss,
                                         rslad_loss, uniform_kl)
from distfair.defenses.dfrd import DFRD
from distfair.defenses.ferd import (FERD, InformationBottleneck, ib_objective, nonrobust_mask,
                                    reweighted_probabilities)
from distfair.engine import run_seed
from distfair.engine.train import CHECKPOINT_NAME
from distfair.models import build_model
from distfair.models.generator import Generator
from toy_defenses import NoSamples, untimed

K = 10
DIGITS = (1, 8, 8)
#: tiny but complete: every part of FERD runs (reweighting, bottleneck, UTAEs)
SMALL = {"iterations_per_epoch": 2, "batch_size": 16, "z_dim": 8, "generator_width": 4, "steps": 2,
         "loop": "alternating"}
SMALL_FERD = {**SMALL, "reweight_steps": 3, "ib_steps": 2}
EVAL = {"attacks": [{"name": "fgsm", "attack": "fgsm", "eps": 0.1}]}


def _engine_run(cfg: dict, workdir, seed: int = 0, **kwargs):
    return run_seed(validate(copy.deepcopy(cfg), "cfg.yaml"), seed, workdir=workdir, **kwargs)


def _trained_teacher(tmp_path_factory, model: dict, name: str) -> str:
    cfg = {"defense": {"name": "standard"}, "dataset": {"name": "digits"}, "model": model,
           "train": {"epochs": 1, "batch_size": 64, "lr": 0.05}, "eval": EVAL, "seeds": [0]}
    workdir = tmp_path_factory.mktemp(name)
    _engine_run(cfg, workdir)
    return str(workdir / CHECKPOINT_NAME)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory) -> str:
    """A digits_cnn (with BatchNorm and ``feature_layer``) trained one epoch by the engine."""
    return _trained_teacher(tmp_path_factory, {"name": "digits_cnn", "width": 8}, "teacher")


@pytest.fixture(scope="module")
def mlp_teacher_path(tmp_path_factory) -> str:
    """A teacher without BatchNorm and without ``feature_layer`` (an mlp on digits)."""
    return _trained_teacher(tmp_path_factory, {"name": "mlp", "hidden": 16}, "mlp_teacher")


def context(teacher: str | None, rank: int = 0) -> DefenseContext:
    """A digits context whose generators are seeded from their labels and rank (as the engine's)."""
    def make_generator(*labels):
        return torch.Generator().manual_seed(zlib.crc32(repr((labels, rank)).encode()))

    return DefenseContext(num_classes=K, in_shape=DIGITS, bounds=(0.0, 1.0), class_names=tuple(map(str, range(K))),
                          device=torch.device("cpu"), make_generator=make_generator, rank=rank,
                          references={"teacher": teacher} if teacher else {})


def ferd(teacher: str, **options) -> FERD:
    defense = FERD(num_classes=K, **{**SMALL_FERD, **options})
    defense.setup(context(teacher))
    return defense


def dfrd(teacher: str, **options) -> DFRD:
    defense = DFRD(num_classes=K, **{**SMALL, **options})
    defense.setup(context(teacher))
    return defense


def student() -> nn.Module:
    torch.manual_seed(0)
    return build_model("digits_cnn", num_classes=K, in_shape=DIGITS, width=4).train()


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def run_steps(defense, model, *, epoch: int = 0, steps: int | None = None) -> list[dict]:
    optimizer = sgd(model)
    logged = []
    g = torch.Generator().manual_seed(100 + epoch)
    for i, batch in enumerate(defense.batches(None, epoch=epoch)):
        if steps is not None and i == steps:
            break
        logged.append(defense.train_step(model, batch, optimizer, generator=g))
    return logged


def entropy_of_predictions(logits: torch.Tensor) -> float:
    counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


# ------------------------------------------------------------------------------ generator
@pytest.mark.parametrize("in_shape", [(1, 8, 8), (3, 32, 32), (1, 6, 6), (3, 7, 5)])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 1.0)])
def test_generator_makes_class_conditional_inputs_of_any_image_shape_within_bounds(in_shape, bounds):
    torch.manual_seed(0)
    g = Generator(num_classes=4, in_shape=in_shape, bounds=bounds, z_dim=6, width=4).train()
    z = torch.randn(5, 6)
    x = g(z, torch.tensor([0, 1, 2, 3, 0]))
    assert x.shape == (5, *in_shape)
    assert x.min() >= bounds[0] and x.max() <= bounds[1]
    assert not torch.equal(x, g(z, torch.tensor([1, 2, 3, 0, 1])))       # the label conditions the output
    x.sum().backward()
    assert all(p.grad is not None for p in g.parameters())


def test_generator_refuses_what_it_cannot_make():
    with pytest.raises(ValueError, match="in_shape must be"):
        Generator(num_classes=3, in_shape=(6,))
    with pytest.raises(ValueError, match="z_dim"):
        Generator(num_classes=3, in_shape=(1, 8, 8), z_dim=0)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 4\)"):
        Generator(num_classes=3, in_shape=(1, 8, 8), z_dim=4)(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------- loss terms by hand
def test_generator_loss_terms_closed_form():
    half_log_4_3 = 0.5 * math.log(4 / 3)
    # L_adv = KL(T ‖ S): p = (1/2, 1/2), q = (3/4, 1/4): ½·log(½/¾) + ½·log(½/¼) = ½·log(4/3); batchmean
    teacher, pupil = torch.zeros(2, 2), torch.tensor([[math.log(3), 0.0], [math.log(3), 0.0]])
    assert kl_to_teacher(teacher, pupil).item() == pytest.approx(half_log_4_3, abs=1e-7)
    # the direction matters: KL(q ‖ p) is another number
    assert kl_to_teacher(pupil, teacher).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-7)
    # L_uni = KL(U ‖ q) (Eq. 7): the same ½·log(4/3) for q = (3/4, 1/4); for K = 3, q = (1/2, 1/4, 1/4):
    assert uniform_kl(pupil[:1]).item() == pytest.approx(half_log_4_3, abs=1e-7)
    q3 = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    assert uniform_kl(q3).item() == pytest.approx(sum(math.log((1 / 3) / q) / 3 for q in (0.5, 0.25, 0.25)), abs=1e-7)
    # L_oh = CE(T(x), y): uniform logits over 3 classes -> log 3
    assert one_hot_loss(torch.zeros(1, 3), torch.tensor([1])).item() == pytest.approx(math.log(3), abs=1e-7)
    # L_bn, one layer: channel 0 holds {1, 3} (mean 2, biased var 1), channel 1 {0, 0};
    # running mean (0, 0), var (1, 1): ‖(2, 0)‖ + ‖(0, -1)‖ = 3
    x = torch.tensor([[[[1.0]], [[0.0]]], [[[3.0]], [[0.0]]]])
    assert bn_matching_term(x, torch.zeros(2), torch.ones(2)).item() == pytest.approx(3.0)
    # Eq. 9 with L_adv maximised: -1·2 + 5·3 + 1·5 + 5·7
    terms = {k: torch.tensor(v) for k, v in {"adv": 2.0, "bn": 3.0, "oh": 5.0, "uni": 7.0}.items()}
    weights = {"adv": 1.0, "bn": 5.0, "oh": 1.0, "uni": 5.0}
    assert generator_objective(terms, weights).item() == pytest.approx(53.0)
    assert generator_objective({k: terms[k] for k in ("adv", "oh")}, weights).item() == pytest.approx(3.0)


def test_bn_statistics_hooks_sum_every_layer_and_are_removed():
    net = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2)).eval()
    with torch.no_grad():
        net[0].running_mean.copy_(torch.tensor([0.0, 0.0]))
        net[0].running_var.copy_(torch.tensor([1.0, 1.0]))
        net[1].running_mean.copy_(torch.tensor([1.0, 0.0]))
        net[1].running_var.copy_(torch.tensor([2.0, 2.0]))
    x = torch.tensor([[[[1.0]], [[0.0]]], [[[3.0]], [[0.0]]]])
    with BatchNormStatistics(net) as bn:
        out = net(x)
    # layer 1 sees x: 3 (above); layer 2 sees BN_1(x) = (x - 0) / sqrt(1 + eps)
    second = bn_matching_term(net[0](x), net[1].running_mean, net[1].running_var)
    assert bn.loss().item() == pytest.approx(3.0 + second.item(), rel=1e-6)
    assert out.shape == x.shape and all(not m._forward_hooks for m in net.modules())
    assert torch.equal(net[0].running_mean, torch.zeros(2))                   # eval mode: buffers untouched


def test_rslad_loss_by_hand():
    teacher, adv, clean = torch.zeros(2, 2), torch.tensor([[math.log(3), 0.0]] * 2), torch.zeros(2, 2)
    loss, parts = rslad_loss(teacher, adv, clean)
    assert parts["kl_adv"].item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-7)
    assert parts["kl_clean"].item() == pytest.approx(0.0, abs=1e-7)
    assert loss.item() == pytest.approx(5 / 6 * 0.5 * math.log(4 / 3), abs=1e-7)


# ---------------------------------------------------------------- information bottleneck
def test_ib_objective_closed_form():
    # CE of uniform logits over 2 classes = log 2; one channel, σ = 1, v = 2: 2/1 + log(1/2) - 1
    value = ib_objective(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([1.0]), torch.tensor([2.0]), beta=0.5)
    assert value.item() == pytest.approx(math.log(2) + 0.5 * (1 - math.log(2)), abs=1e-6)


def _known_variance_batch() -> torch.Tensor:
    """(4, 3, 2, 2): channel 0 holds ±1 (var 1), channel 1 ±2 (var 4), channel 2 the constant 5."""
    signs = torch.tensor([1.0, -1.0]).repeat(8).view(4, 2, 2)
    return torch.stack([signs, 2 * signs, torch.full_like(signs, 5.0)], dim=1)


def test_channel_variances_are_over_batch_and_spatial_dims():
    mean, var = channel_statistics(_known_variance_batch())
    assert torch.allclose(mean, torch.tensor([0.0, 0.0, 5.0])) and torch.allclose(var, torch.tensor([1.0, 4.0, 0.0]))
    _, var2d = channel_statistics(torch.tensor([[1.0, 0.0], [3.0, 0.0]]))     # (B, C): over the batch only
    assert torch.allclose(var2d, torch.tensor([1.0, 0.0]))


def test_nonrobust_mask_compares_noise_scales_with_the_largest_variance():
    # max v = 4: σ² = 0.25, 3.61 < 4 are non-robust (1), 9 is not (Eq. 6, strict)
    assert nonrobust_mask(torch.tensor([0.5, 1.9, 3.0]), torch.tensor([1.0, 4.0, 0.0])).tolist() == [1.0, 1.0, 0.0]
    assert nonrobust_mask(torch.tensor([2.0]), torch.tensor([4.0])).tolist() == [0.0]


class _FeatureTeacher(nn.Module):
    """x (B, 3, 2, 2) -> features (identity: their variances are those of x) -> linear head."""

    feature_layer = "features"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Identity()
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def test_ib_mask_on_a_layer_with_known_variances_and_l_uni_through_it():
    teacher = _FeatureTeacher().eval().requires_grad_(False)
    ib = InformationBottleneck(teacher, "features", in_shape=(3, 2, 2), bounds=(0.0, 1.0), beta=0.3, lr=1e-9,
                               steps=1, device=torch.device("cpu"))
    assert ib.channels == 3 and ib.noise_scale().tolist() == pytest.approx([math.log(2)] * 3)
    sigma = torch.tensor([0.5, 1.9, 3.0])
    with torch.no_grad():
        ib.raw_scale.copy_(torch.log(torch.expm1(sigma)))                    # softplus^-1
    x = _known_variance_batch()
    logs = ib.fit(teacher, x, torch.tensor([0, 1, 2, 3]), torch.Generator().manual_seed(0))
    assert ib.mask.tolist() == [1.0, 1.0, 0.0]                               # variances (1, 4, 0): max 4
    assert logs["ib_nonrobust_fraction"].item() == pytest.approx(2 / 3)
    assert torch.isfinite(logs["ib_loss"])
    masked = x * torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)
    assert ib.uniform_loss(teacher, x).item() == pytest.approx(uniform_kl(teacher.head(masked.flatten(1))).item())
    assert not teacher.features._forward_hooks and not teacher.training


def test_ib_learns_its_noise_scale_and_only_it(teacher_path):
    defense = ferd(teacher_path)
    teacher_state = {k: v.clone() for k, v in defense.teacher.state_dict().items()}
    before = defense.ib.raw_scale.detach().clone()
    x = defense.synthesize(torch.randn(16, 8), torch.arange(16) % K)
    defense.ib.fit(defense.teacher, x, torch.arange(16) % K, torch.Generator().manual_seed(0))
    assert not torch.equal(before, defense.ib.raw_scale.detach())
    assert defense.ib.optimizer.state                                        # its own Adam has moments
    assert all(torch.equal(v, teacher_state[k]) for k, v in defense.teacher.state_dict().items())


# ------------------------------------------------------------------------- reweighting
def test_reweighted_probabilities_by_hand():
    uniform = torch.full((3,), 1 / 3)
    d, present = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([True, True, True])
    assert torch.allclose(reweighted_probabilities(d, present, uniform, "softmax"), torch.softmax(d, 0))
    official = reweighted_probabilities(d, present, uniform, "official_rescale")
    assert torch.allclose(official, torch.tensor([0.05, 0.125, 0.2]) / 0.375, atol=1e-6)
    assert torch.equal(reweighted_probabilities(d, present, uniform, "none"), uniform)
    # a class with no sample keeps its previous probability, the others share the rest
    previous = torch.tensor([0.5, 0.3, 0.2])
    out = reweighted_probabilities(torch.tensor([0.0, 0.0, float("nan")]), torch.tensor([True, True, False]),
                                   previous, "softmax")
    assert torch.allclose(out, torch.tensor([0.4, 0.4, 0.2]))
    with pytest.raises(ValueError, match="reweight"):
        reweighted_probabilities(d, present, uniform, "bogus")


@pytest.fixture(scope="module")
def weak_on_3_teacher(teacher_path, tmp_path_factory) -> str:
    """The teacher with class 3's logit lowered by 3: every class-3 margin (Eq. 1) shrinks."""
    state = torch.load(teacher_path, weights_only=False)
    state["model"]["head.bias"][3] -= 3.0
    path = tmp_path_factory.mktemp("weak") / CHECKPOINT_NAME
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("rule", ["softmax", "official_rescale"])
def test_reweighting_favours_the_class_the_teacher_is_weak_on(weak_on_3_teacher, rule):
    # logit margins: lowering a logit shows in them whatever the teacher's confidence (the
    # probability margins of this barely trained teacher saturate: see the test below)
    defense = ferd(weak_on_3_teacher, reweight=rule, reweight_samples=60, reweight_margin="logit")
    uniform = torch.full((K,), 1 / K)
    logged = defense.start_epoch(None, None, epoch=0, batch_size=16, generator=None)
    assert torch.equal(defense.class_probs, uniform) and "vulnerability_max" not in logged   # epoch 0: uniform
    logged = defense.start_epoch(None, None, epoch=1, batch_size=16, generator=None)
    assert int(defense.vulnerability.argmax()) == 3 and int(defense.class_probs.argmax()) == 3
    assert defense.class_probs.sum().item() == pytest.approx(1.0)
    assert logged["class_prob_max"] == pytest.approx(float(defense.class_probs[3]))
    if rule == "official_rescale":                     # [0.05, 0.2] before normalisation: ratio at most 4
        assert defense.class_probs.max() / defense.class_probs.min() == pytest.approx(4.0, rel=1e-4)
    # the labels of the next epoch follow the probabilities
    defense.iterations_per_epoch = 40
    labels = torch.cat([y for _, y in defense.batches(None, epoch=1)])
    assert int(torch.bincount(labels, minlength=K).argmax()) == 3


def test_reweight_none_measures_but_keeps_uniform(weak_on_3_teacher):
    defense = ferd(weak_on_3_teacher, reweight="none", reweight_samples=60, reweight_margin="logit")
    logged = defense.start_epoch(None, None, epoch=1, batch_size=16, generator=None)
    assert torch.equal(defense.class_probs, torch.full((K,), 1 / K))
    assert int(defense.vulnerability.argmax()) == 3 and "vulnerability_max" in logged


def _margins_by_hand(defense, epoch: int, on_probabilities: bool) -> torch.Tensor:
    """D_c (Eq. 1-2) recomputed from the same reweighting pass (same generator, same attack)."""
    from distfair.defenses._datafree import balanced_labels
    g = defense.context.generator("reweight", epoch)
    n = defense.reweight_samples
    y = balanced_labels(n, K, g)
    x = defense.synthesize(torch.randn(n, defense.z_dim, generator=g), y)
    x_adv = defense.reweight_attack(defense.teacher, x, y, generator=g)
    with torch.no_grad():
        scores = defense.teacher(x_adv)
    if on_probabilities:
        scores = scores.softmax(1)
    own = scores.gather(1, y[:, None]).squeeze(1)
    other = scores.masked_fill(torch.nn.functional.one_hot(y, K).bool(), float("-inf")).amax(1)
    return torch.stack([(other - own)[y == c].mean() for c in range(K)])


@pytest.fixture(scope="module")
def soft_weak_on_3_teacher(teacher_path, tmp_path_factory) -> str:
    """The teacher's head scaled by 1/4 (probabilities far from 0 and 1), class 3's logit then
    lowered by 2: class 3's margins shrink in probabilities too."""
    state = torch.load(teacher_path, weights_only=False)
    state["model"]["head.weight"] *= 0.25
    state["model"]["head.bias"] *= 0.25
    state["model"]["head.bias"][3] -= 2.0
    path = tmp_path_factory.mktemp("soft_weak") / CHECKPOINT_NAME
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("rule", ["softmax", "official_rescale"])
@pytest.mark.parametrize("margin", ["probability", "logit"])
def test_reweighting_margin_is_on_the_teachers_probabilities_by_default(soft_weak_on_3_teacher, margin, rule):
    """Eq. 1 on f^T's probabilities (the paper's f^T is a distribution in Eq. 7-11; "confidence"):
    D in [-1, 1], so softmax(D) favours no class more than e^2 times another; ``logit`` keeps the
    margin on logits (the official code's, before its min-max rescale)."""
    options = {} if margin == "probability" else {"reweight_margin": "logit"}
    defense = ferd(soft_weak_on_3_teacher, reweight_samples=60, reweight=rule, **options)
    assert defense.reweight_margin == margin
    defense.start_epoch(None, None, epoch=1, batch_size=16, generator=None)
    expected = _margins_by_hand(defense, 1, on_probabilities=margin == "probability")
    assert torch.allclose(defense.vulnerability, expected, atol=1e-5)
    if margin == "probability":
        assert defense.vulnerability.abs().max() <= 1.0
        assert defense.class_probs.max() / defense.class_probs.min() <= math.exp(2.0) + 1e-4
    assert int(defense.vulnerability.argmax()) == 3 and int(defense.class_probs.argmax()) == 3


# ------------------------------------------------------------------------------- UTAEs
def test_gamma_spreads_the_utae_targets_over_more_classes(teacher_path):
    """FERD Eq. 10: with the same teacher, FAEs and random starts, γ = 0.5 leaves the teacher's
    predicted classes on the adversarial batch more evenly spread (higher entropy of their
    histogram) than γ = 0 (plain KL-PGD). Measured here on synthetic samples of an untrained
    generator against a standard-trained teacher at ε = 0.2; the effect is not universal (on
    real digits and with a PGD-trained teacher it was not seen), see the defense's notes."""
    defense = ferd(teacher_path, eps=0.2, alpha=0.05, steps=10)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(150) % K
        x = defense.synthesize(torch.randn(150, 8, generator=g), y)
        t = defense.teacher_logits(x)
        spread = {}
        for gamma in (0.0, 0.5):
            x_u = defense.adversarial(defense.teacher, x, y, UniformTargetKL(t, gamma=gamma),
                                      torch.Generator().manual_seed(seed))
            spread[gamma] = entropy_of_predictions(defense.teacher_logits(x_u))
        assert spread[0.5] > spread[0.0] + 0.2, (seed, spread)


# ---------------------------------------------------------------------- frozen teacher
@pytest.mark.parametrize("make", [ferd, dfrd], ids=["ferd", "dfrd"])
def test_teacher_parameters_buffers_and_eval_mode_never_change(teacher_path, make):
    defense = make(teacher_path, **({"utae_network": "teacher"} if make is ferd else {}))
    teacher = defense.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes: list[bool] = []
    handles = [m.register_forward_pre_hook(lambda module, inputs: modes.append(module.training))
               for m in teacher.modules()]
    model = student()
    defense.start_epoch(model, None, epoch=1, batch_size=16, generator=None)
    run_steps(defense, model, epoch=1)
    for h in handles:
        h.remove()
    forwards = len(modes) / len(list(teacher.modules()))
    # watched: per step the generator step's and the student loss's forwards; for FERD also the
    # reweighting PGD, the bottleneck fit, L_uni and every step of the UTAE PGD (on the teacher)
    expected = 2 if make is dfrd else 2 + defense.ib_steps + 1 + defense.steps
    assert forwards >= expected * defense.iterations_per_epoch
    assert not any(modes) and not any(m.training for m in teacher.modules())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("make", [ferd, dfrd], ids=["ferd", "dfrd"])
def test_a_step_trains_generator_and_student_and_restores_the_students_mode(teacher_path, make):
    defense = make(teacher_path)
    model = student()
    g0 = copy.deepcopy(defense.net.state_dict())
    s0 = copy.deepcopy(model.state_dict())
    (logged,) = run_steps(defense, model, steps=1)
    assert all(m.training for m in model.modules())
    assert not all(torch.equal(v, g0[k]) for k, v in defense.net.state_dict().items())
    assert not all(torch.equal(v, s0[k]) for k, v in model.state_dict().items())
    assert {"loss", "generator_loss", "gen_adv", "gen_bn", "gen_oh"} <= logged.keys()
    assert all(v.ndim == 0 and not v.requires_grad and torch.isfinite(v) for v in logged.values())
    assert defense.steps_done == 1


# ---------------------------------------------------------------------------- ablations
def _one_step(defense, model):
    (logged,) = run_steps(defense, model, steps=1)
    return logged


def test_without_faes_there_is_no_bottleneck_and_no_l_uni(teacher_path, mlp_teacher_path):
    with_faes, without = ferd(teacher_path), ferd(teacher_path, faes=False)
    assert without.ib is None and "uni" in with_faes.weights
    (a, _), (b, _) = run_steps(with_faes, student()), run_steps(without, student())
    assert {"gen_uni", "ib_loss", "ib_nonrobust_fraction"} <= a.keys() and a["gen_uni"] > 0
    assert not {"gen_uni", "ib_loss", "ib_nonrobust_fraction"} & b.keys()
    assert a["generator_loss"] != b["generator_loss"]
    # (Adam's first step is sign(gradient) · lr, which L_uni need not change: compare after two)
    assert not all(torch.equal(v, without.net.state_dict()[k]) for k, v in with_faes.net.state_dict().items())
    # the bottleneck's layer is needed only with FAEs
    with pytest.warns(NoBatchNormWarning):
        ferd(mlp_teacher_path, faes=False)


def test_without_utaes_the_adversarial_examples_are_plain_kl_pgd(teacher_path):
    x = ferd(teacher_path).synthesize(torch.randn(16, 8), torch.arange(16) % K)
    y = torch.arange(16) % K
    runs = {}
    for label, options in {"utae": {}, "ablated": {"utaes": False}, "gamma0": {"gamma": 0.0}}.items():
        runs[label] = ferd(teacher_path, eps=0.2, alpha=0.05, **options).loss(
            student(), x, y, generator=torch.Generator().manual_seed(0))
    (utae, utae_parts), (ablated, ablated_parts), (gamma0, gamma0_parts) = runs.values()
    assert "utae_uniform_kl" in utae_parts and "utae_uniform_kl" not in ablated_parts
    assert torch.equal(ablated, gamma0) and ablated != utae                 # the γ term is gone, for real
    assert torch.equal(ablated_parts["kl_adv"], gamma0_parts["kl_adv"])


def test_utae_network_default_is_the_student_and_the_attack_uses_the_network_named(teacher_path):
    """``utae_network: student`` (default: the official code's ``generate_adv(student_model, ...)``
    and Eq. 11's f^S(x_U)) runs Eq. 10's objective through the student, ``teacher`` (Eq. 10's
    f^T as written) through the teacher: the PGD's input gradients come from that network only."""
    assert FERD(num_classes=K).utae_network == "student"
    y = torch.arange(16) % K
    net = student()
    seen = {}
    for choice in ("teacher", "student"):
        defense = ferd(teacher_path, **({} if choice == "student" else {"utae_network": "teacher"}))
        x = defense.synthesize(torch.randn(16, 8, generator=torch.Generator().manual_seed(1)), y)
        calls, forwards = [], {"teacher": 0, "student": 0}
        real = defense.adversarial
        defense.adversarial = lambda network, *a, **k: calls.append(network) or real(network, *a, **k)
        hooks = [m.register_forward_hook(lambda mod, i, o, who=who: forwards.__setitem__(
                     who, forwards[who] + int(torch.is_grad_enabled() and i[0].requires_grad)))
                 for who, m in (("teacher", defense.teacher), ("student", net))]
        seen[choice] = defense.loss(net, x, y, generator=torch.Generator().manual_seed(0))[1]["kl_adv"]
        for h in hooks:
            h.remove()
        assert calls == [defense.teacher if choice == "teacher" else net]
        # forwards whose input needs a gradient: the PGD's steps, on the network named only
        other = "student" if choice == "teacher" else "teacher"
        assert forwards[choice] == defense.steps and forwards[other] == 0, forwards
    assert seen["teacher"] != seen["student"]
    with pytest.raises(ValueError, match="utae_network must be one of student, teacher"):
        ferd(teacher_path, utae_network="both")


def test_without_reweighting_there_is_no_reweighting_pass_and_labels_are_balanced(weak_on_3_teacher):
    on, off = ferd(weak_on_3_teacher), ferd(weak_on_3_teacher, reweighting=False)
    kwargs = {"batch_size": 16, "generator": None}
    assert {"class_prob_max", "vulnerability_max"} <= on.start_epoch(None, None, epoch=1, **kwargs).keys()
    assert off.start_epoch(None, None, epoch=1, **kwargs) == {}
    assert torch.equal(off.class_probs, torch.full((K,), 1 / K)) and torch.isnan(off.vulnerability).all()
    labels_on = [y for _, y in on.batches(None, epoch=1)]
    labels_off = [y for _, y in off.batches(None, epoch=1)]
    assert not all(torch.equal(a, b) for a, b in zip(labels_on, labels_off))
    for y in labels_off:                                                    # 16 over 10 classes: 1 or 2 each
        assert set(torch.bincount(y, minlength=K).tolist()) <= {1, 2}
    assert _one_step(on, student())["loss"] != _one_step(off, student())["loss"]


# --------------------------------------------------------------------------- no BatchNorm
@pytest.mark.parametrize("make", [ferd, dfrd], ids=["ferd", "dfrd"])
def test_a_teacher_without_batchnorm_warns_and_trains_without_l_bn(mlp_teacher_path, make):
    options = {"ib_layer": "net.2"} if make is ferd else {}                 # the mlp's hidden ReLU: (B, 16)
    with pytest.warns(NoBatchNormWarning, match="no BatchNorm"):
        defense = make(mlp_teacher_path, **options)
    logged = _one_step(defense, student())
    assert "gen_bn" not in logged and {"gen_adv", "gen_oh", "loss"} <= logged.keys()
    assert all(torch.isfinite(v) for v in logged.values())


# ---------------------------------------------------------------------------- validation
def test_setup_needs_the_teacher_and_a_bottleneck_layer(teacher_path, mlp_teacher_path):
    for cls in (FERD, DFRD):
        with pytest.raises(ValueError, match="needs a teacher"):
            cls(num_classes=K, **SMALL).setup(context(None))
    with pytest.warns(NoBatchNormWarning), pytest.raises(ValueError, match="ib_layer"):
        ferd(mlp_teacher_path)                                               # no feature_layer
    with pytest.raises(ValueError, match="ib_layer 'nope' is not a module"):
        ferd(teacher_path, ib_layer="nope")
    with pytest.raises(RuntimeError, match="setup"):
        FERD(num_classes=K).loss(student(), torch.rand(2, *DIGITS), torch.tensor([0, 1]))


@pytest.mark.parametrize("option,value,message", [
    ("reweight", "uniform", "reweight must be one of"), ("gamma", -0.5, "gamma"), ("lambda1", 2.0, "lambda2"),
    ("batch_size", 1, "batch_size"), ("ib_steps", 0, "ib_steps"), ("eps", 0.0, "eps"), ("faes", "yes", "faes"),
    ("lambda_uni", -1.0, "lambda_uni"), ("reweight_samples", 1, "reweight_samples"),
    ("reweight_margin", "margin", "reweight_margin must be one of"),
])
def test_impossible_options_are_refused(option, value, message):
    with pytest.raises(ValueError, match=message):
        FERD(num_classes=K, **{option: value})


def test_defaults_are_the_papers():
    d = FERD(num_classes=K)
    assert d.weights == {"adv": 1.0, "bn": 5.0, "oh": 1.0, "uni": 5.0}
    assert (d.gamma, d.lambda1, d.lambda2) == (0.5, 5 / 6, pytest.approx(1 / 6))
    assert (d.iterations_per_epoch, d.batch_size, d.generator_lr, d.reweight_steps) == (400, 256, 2e-3, 20)
    assert (d.reweight, d.reweighting, d.faes, d.utaes) == ("softmax", True, True, True)
    assert d.reweight_margin == "probability"
    assert FERD.reference_options == DFRD.reference_options == ("teacher",)
    assert not FERD.needs_attack and not DFRD.needs_attack
    assert FERD(num_classes=K, lambda1=0.5, lambda2=2.0).lambda2 == 2.0


def test_configuration_validates_with_every_option():
    cfg = validate({"defense": {"name": "ferd", "teacher": "t.pt", "lambda2": None, "reweight": "official_rescale",
                                "ib_layer": "features", "faes": False, "reweight_samples": 64,
                                "reweight_margin": "logit"},
                    "dataset": {"name": "digits"}, "model": {"name": "digits_cnn"}, "eval": EVAL, "seeds": [0]},
                   "ferd.yaml")
    assert cfg["defense"]["reweight"] == "official_rescale" and cfg["defense"]["faes"] is False


# -------------------------------------------------------------- through the engine, resumed
@pytest.fixture
def ferd_cfg(teacher_path) -> dict:
    return {"defense": {"name": "ferd", **SMALL_FERD, "reweight_samples": 30},
            "dataset": {"name": "digits"}, "model": {"name": "digits_cnn", "width": 4},
            "train": {"epochs": 3, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
            "eval": EVAL, "seeds": [0]}



@pytest.mark.parametrize("loop", ["alternating", "official"])
@pytest.mark.parametrize("name", ["ferd", "dfrd"])
def test_trains_through_the_engine_without_reading_the_training_set(name, loop, ferd_cfg, teacher_path, tmp_path,
                                                                    monkeypatch):
    import distfair.engine.train as train

    real = train.build_dataset
    monkeypatch.setattr(train, "build_dataset", lambda *a, **k: (lambda d: dataclasses.replace(
        d, train=NoSamples(len(d.train))))(real(*a, **k)))
    cfg = copy.deepcopy(ferd_cfg)
    cfg["train"]["epochs"] = 2
    if name == "dfrd":
        cfg["defense"] = {"name": "dfrd", **SMALL}
    if loop == "official":                              # 2 epochs × 2 student steps, no warm-up
        cfg["defense"].update({**OFFICIAL, "loop": "official", "student_steps": 2})
    result = _engine_run(cfg, tmp_path, references={"teacher": teacher_path})
    assert "clean_acc" in result.metrics and len(result.history) == 2
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["defense"][0]
    assert state["steps_done"] == 4
    if loop == "alternating":
        assert state["generator_optimizer"]["state"] and state["bank_x"] is None
    else:
        assert state["bank_x"].shape == (2 * 16, *DIGITS)


def test_resume_equals_the_uninterrupted_run(ferd_cfg, teacher_path, tmp_path):
    refs = {"teacher": teacher_path}
    straight = _engine_run(ferd_cfg, tmp_path / "straight", references=refs)
    first = copy.deepcopy(ferd_cfg)
    first["train"]["epochs"] = 1
    _engine_run(first, tmp_path / "resumed", references=refs)                # "crash" after epoch 1
    resumed = _engine_run(ferd_cfg, tmp_path / "resumed", references=refs)
    assert untimed(resumed.history) == untimed(straight.history)
    assert resumed.param_fingerprints == straight.param_fingerprints
    assert resumed.confusion == straight.confusion
    a, b = (torch.load(tmp_path / d / CHECKPOINT_NAME, weights_only=False)["defense"][0]
            for d in ("straight", "resumed"))
    assert a["steps_done"] == b["steps_done"] == 6

    def assert_same(x, y, where):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for key in x:
                assert_same(x[key], y[key], f"{where}.{key}")
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y) or (torch.isnan(x).all() and torch.isnan(y).all()), where
        elif isinstance(x, (list, tuple)):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                assert_same(u, v, f"{where}[{i}]")
        else:
            assert x == y, where

    assert_same(a, b, "defense")
    assert not torch.allclose(a["class_probs"], torch.full((K,), 1 / K))  # reweighting ran: the test is not vacuous
    assert a["ib"]["optimizer"]["state"] and a["generator_optimizer"]["state"]


def test_resume_without_the_defense_state_differs(ferd_cfg, teacher_path, tmp_path, monkeypatch):
    """The resume test is not vacuous: dropping the defense's state changes the run."""
    refs = {"teacher": teacher_path}
    cfg = copy.deepcopy(ferd_cfg)
    cfg["train"]["epochs"] = 2
    straight = _engine_run(cfg, tmp_path / "straight", references=refs)
    first = copy.deepcopy(cfg)
    first["train"]["epochs"] = 1
    _engine_run(first, tmp_path / "resumed", references=refs)
    monkeypatch.setattr(FERD, "load_state_dict", lambda self, state: None)
    resumed = _engine_run(cfg, tmp_path / "resumed", references=refs)
    assert resumed.history[1]["train_loss"] != straight.history[1]["train_loss"]
    assert DEFENSES["ferd"] is FERD


# ----------------------------------------------------------------- the official loop (default)
#: the official loop at test size: 6 generator steps per stage, 3 student steps per epoch
OFFICIAL = {"batch_size": 16, "z_dim": 8, "generator_width": 4, "steps": 2, "gen_steps": 6, "student_steps": 3,
            "warmup": 0, "crop_padding": 1}
OFFICIAL_FERD = {**OFFICIAL, "reweight_steps": 3, "ib_steps": 2}


def official(make, teacher: str, **options):
    base = OFFICIAL_FERD if make is ferd else OFFICIAL
    return make(teacher, **{**{k: v for k, v in SMALL.items() if k != "loop"}, **base, "loop": "official", **options})


def test_the_official_loop_and_its_options_are_the_default():
    for cls in (FERD, DFRD):
        d = cls(num_classes=K)
        assert (d.loop, d.gen_steps, d.student_steps, d.warmup, d.noise_lr) == ("official", 200, 400, 20, 0.015)
        assert (d.generator_lr, d.augment, d.crop_padding, d.bank_size) == (2e-3, None, 4, None)
    d = FERD(num_classes=K)
    assert (d.utae_network, d.ib_fit, d.ib_steps, d.reweight) == ("student", "channel", 5, "softmax")
    assert FERD(num_classes=K, ib_fit="official").ib_steps == 50
    for option, value, message in [("loop", "both", "loop must be one of official, alternating"),
                                   ("gen_steps", 0, "gen_steps"), ("warmup", -1, "warmup"),
                                   ("noise_lr", 0.0, "noise_lr"), ("augment", "yes", "augment"),
                                   ("bank_size", 0, "bank_size"), ("ib_fit", "per_sample", "ib_fit must be one of")]:
        with pytest.raises(ValueError, match=message):
            FERD(num_classes=K, **{option: value})


@pytest.mark.parametrize("make,gen_steps", [(ferd, 11), (dfrd, 12)], ids=["ferd", "dfrd"])
def test_generation_stage_lowers_its_loss_and_banks_the_lowest_loss_batch(teacher_path, make, gen_steps, monkeypatch):
    """A re-initialised generator and its learnable noise are optimised ``gen_steps`` steps; the
    batch G(z, y) of the step with the lowest objective goes to the bank. ``gen_steps`` is chosen
    so that this step is not the last (checked), so keeping the last batch would fail."""
    import distfair.defenses._datafree as datafree

    defense = official(make, teacher_path, gen_steps=gen_steps)
    outputs, objectives = [], []
    real_forward, real_objective = defense.net.forward, datafree.generator_objective
    monkeypatch.setattr(defense.net, "forward", lambda z, y: _record(outputs, real_forward(z, y)))
    monkeypatch.setattr(datafree, "generator_objective",
                        lambda terms, weights: _record(objectives, real_objective(terms, weights)))
    model = student()
    before = copy.deepcopy(model.state_dict())
    logs = defense.start_epoch(model, None, epoch=0, batch_size=16, generator=None)
    assert len(outputs) == len(objectives) == gen_steps
    values = torch.stack([o.detach() for o in objectives])
    best = int(values.argmin())
    assert best < gen_steps - 1                                                    # the test discriminates
    assert logs["generation_loss_best"] == pytest.approx(float(values[best]))
    assert logs["generation_loss_first"] == pytest.approx(float(values[0]))
    assert logs["generation_loss_best"] < logs["generation_loss_first"]            # the stage lowers its loss
    assert torch.equal(defense.bank_x, outputs[best].detach()) and defense.bank_x.shape == (16, *DIGITS)
    assert logs["bank_samples"] == 16 and defense.bank_y.shape == (16,)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # the student is untouched
    # the next epoch re-initialises the generator and appends its own kept batch
    defense.start_epoch(model, None, epoch=1, batch_size=16, generator=None)
    assert defense.bank_x.shape[0] == 32 and torch.equal(defense.bank_x[:16], outputs[best].detach())


def _record(store: list, value):
    store.append(value)
    return value


def test_generation_stage_resets_the_generator_from_the_epochs_generator(teacher_path):
    a, b = official(dfrd, teacher_path, gen_steps=1), official(dfrd, teacher_path, gen_steps=1)
    model = student()
    with torch.no_grad():
        for p in b.net.parameters():
            p.add_(1.0)                                       # whatever b's generator was, the reset redraws it
    a.start_epoch(model, None, epoch=3, batch_size=16, generator=None)
    b.start_epoch(model, None, epoch=3, batch_size=16, generator=None)
    assert torch.equal(a.bank_x, b.bank_x)
    conv = [m for m in a.net.modules() if isinstance(m, nn.Conv2d)][0]
    assert conv.weight.std().item() == pytest.approx(0.02, rel=0.5)            # N(0, 0.02) (reset_model)


@pytest.mark.parametrize("make", [ferd, dfrd], ids=["ferd", "dfrd"])
def test_distillation_stage_takes_student_steps_bank_batches_and_none_in_warmup(teacher_path, make):
    defense = official(make, teacher_path, warmup=2, student_steps=5, augment=False)
    model = student()
    optimizer = sgd(model)
    for epoch in range(3):
        defense.start_epoch(model, None, epoch=epoch, batch_size=16, generator=None)
        before = copy.deepcopy(model.state_dict())
        batches = list(defense.batches(None, epoch=epoch))
        for batch in batches:
            defense.train_step(model, batch, optimizer, generator=torch.Generator().manual_seed(epoch))
        changed = not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        if epoch < 2:                                          # warm-up: generation only, the student untouched
            assert batches == [] and not changed and defense.steps_done == 0
        else:
            assert len(batches) == 5 and changed and defense.steps_done == 5
    assert defense.bank_x.shape[0] == 48
    # every sample of a batch is a bank sample with its bank label; an order covers the bank once
    rows = {tuple(x.flatten().tolist()): int(y) for x, y in zip(defense.bank_x, defense.bank_y)}
    seen = []
    for x, y in batches:
        for xi, yi in zip(x, y):
            assert rows[tuple(xi.flatten().tolist())] == int(yi)
            seen.append(tuple(xi.flatten().tolist()))
    assert len(set(seen[:48])) == 48                           # 5 batches of 16 = one whole order, then more
    with pytest.raises(RuntimeError, match="memory bank is empty"):
        list(official(make, teacher_path).batches(None, epoch=0))


def test_crop_flip_pads_crops_and_flips_per_sample():
    from distfair.defenses._datafree import crop_flip

    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float).view(2, 1, 3, 3) + 1
    out = crop_flip(x, 1, 0.0, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        windows = [padded[i, :, r:r + 3, c:c + 3] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    assert torch.equal(crop_flip(x, 0, 0.0, torch.Generator().manual_seed(1))[0], x[0]) or \
        torch.equal(crop_flip(x, 0, 0.0, torch.Generator().manual_seed(1))[0], x[0].flip(-1))
    many = crop_flip(x.repeat(200, 1, 1, 1), 1, 0.0, torch.Generator().manual_seed(2))
    assert 0 < sum(not torch.equal(m, x[i % 2]) for i, m in enumerate(many)) < 400      # random, not always


def test_augmentation_is_off_for_inputs_that_are_not_images(teacher_path):
    defense = official(dfrd, teacher_path)
    assert defense.augments                                                       # digits (1, 8, 8): images
    assert not official(dfrd, teacher_path, augment=False).augments
    vector = DFRD(num_classes=K, **OFFICIAL)
    ctx = dataclasses.replace(context(teacher_path), in_shape=(64,))
    vector.augment = True
    with pytest.raises(ValueError, match="augment"):
        vector.setup(ctx)


# ------------------------------------------------------------- the official bottleneck (IFP.py)
def test_official_ib_kl_closed_form():
    from distfair.defenses.ferd import official_ib_kl

    latent = torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]]])          # (1, 2, 1, 2): unbiased spatial var 2 and 0
    sigma = torch.tensor([[1.0, 2.0]])
    delta = 1e-10
    c0 = 2.0 / (1 + delta) + math.log((1 + delta) / (2 + delta)) - 1
    c1 = 0.0 + math.log((4 + delta) / delta) - 1
    assert official_ib_kl(latent, sigma).item() == pytest.approx(0.5 * (c0 + c1) / 2, rel=1e-6)


def test_official_ib_fits_a_fresh_lambda_per_sample_and_channel_at_the_last_batchnorm(teacher_path):
    from distfair.defenses.ferd import SampleInformationBottleneck

    defense = ferd(teacher_path, ib_fit="official", ib_steps=3)
    assert isinstance(defense.ib, SampleInformationBottleneck) and defense.ib.layer == "features.4"
    assert isinstance(defense.teacher.get_submodule("features.4"), nn.BatchNorm2d)    # before the ReLU
    y = torch.arange(16) % K
    x = defense.synthesize(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), y)
    logs = defense.ib.fit(defense.teacher, x, y, torch.Generator().manual_seed(0))
    assert defense.ib.mask.shape == (16, defense.ib.channels)                        # one per (sample, channel)
    assert torch.isfinite(logs["ib_loss"]) and 0 <= logs["ib_nonrobust_fraction"] <= 1
    first = defense.ib.mask.clone()
    defense.ib.fit(defense.teacher, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(first, defense.ib.mask)                                       # fresh λ: nothing carried
    x_req = x.clone().requires_grad_()
    loss = defense.ib.uniform_loss(defense.teacher, x_req)
    (grad,) = torch.autograd.grad(loss, [x_req])
    assert torch.isfinite(loss) and grad.abs().sum() > 0                             # L_uni reaches the input
    with pytest.raises(RuntimeError, match="batch of its last fit"):
        defense.ib.uniform_loss(defense.teacher, x[:4])
    with pytest.raises(ValueError, match="spatial dims"):
        ferd(teacher_path, ib_fit="official", ib_layer="head")


def test_official_ib_mask_compares_each_noise_variance_with_the_largest_sample_variance():
    from distfair.defenses.ferd import SampleInformationBottleneck

    class Spatial(nn.Module):
        feature_layer = "features"

        def __init__(self):
            super().__init__()
            self.features = nn.Identity()
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            return self.head(self.features(x).flatten(1))

    teacher = Spatial().eval().requires_grad_(False)
    ib = SampleInformationBottleneck(teacher, "features", in_shape=(2, 2, 2), bounds=(0.0, 1.0), beta=0.3,
                                     lr=1e-9, steps=1, device=torch.device("cpu"))
    y = torch.tensor([0, 1])
    # λ starts at 0: σ² = log(2)² ≈ 0.48 everywhere. Largest per-sample spatial variance 0.1 < 0.48: all robust
    small = torch.tensor([0.0, 0.5, 0.0, 0.5]).view(1, 1, 2, 2).repeat(2, 2, 1, 1) * 0.5
    ib.fit(teacher, small, y, torch.Generator().manual_seed(0))
    assert ib.mask.tolist() == [[0.0, 0.0], [0.0, 0.0]]
    # one (sample, channel) with variance 12 makes every σ² <= max: all non-robust (official rule)
    large = small.clone()
    large[1, 0] = torch.tensor([[0.0, 6.0], [0.0, 0.0]])
    ib.fit(teacher, large, y, torch.Generator().manual_seed(0))
    assert ib.mask.tolist() == [[1.0, 1.0], [1.0, 1.0]]


# ----------------------------------------------------------------- reweighting rules by hand
def test_both_reweighting_rules_from_logit_margins_by_hand():
    """Eq. 1-2 from hand-made teacher logits on adversarial samples, then the paper's softmax and the
    official min-max rescale into [0.05, 0.2] (``test.py``)."""
    from distfair.attacks import cw_margin
    from distfair.defenses.ferd import class_vulnerability

    logits = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0], [2.0, 2.5, 0.0]])
    y = torch.tensor([0, 0, 2, 1])
    margins = cw_margin(logits, y)                                  # 2, -1, 1, 0.5
    assert margins.tolist() == [2.0, -1.0, 1.0, 0.5]
    sums, counts = class_vulnerability(margins, y, 3)
    d = sums / counts                                               # D = (-(2 - 1)/2, -0.5, -1) = (-0.5, -0.5, -1)
    assert d.tolist() == [-0.5, -0.5, -1.0]
    uniform, present = torch.full((3,), 1 / 3), torch.tensor([True, True, True])
    e = [math.exp(-0.5), math.exp(-0.5), math.exp(-1.0)]
    expected_softmax = [v / sum(e) for v in e]
    assert reweighted_probabilities(d, present, uniform, "softmax").tolist() == pytest.approx(expected_softmax)
    # min-max: (-0.5 → 0.2, -0.5 → 0.2, -1 → 0.05), normalised by 0.45
    assert reweighted_probabilities(d, present, uniform, "official_rescale").tolist() == pytest.approx(
        [0.2 / 0.45, 0.2 / 0.45, 0.05 / 0.45], abs=1e-6)


# --------------------------------------------------------------------- official loop, engine
@pytest.fixture
def official_cfg() -> dict:
    return {"defense": {"name": "ferd", **OFFICIAL_FERD, "warmup": 1},
            "dataset": {"name": "digits"}, "model": {"name": "digits_cnn", "width": 4},
            "train": {"epochs": 3, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
            "eval": EVAL, "seeds": [0]}


@pytest.mark.parametrize("name", ["ferd", "dfrd"])
def test_official_loop_resume_equals_the_uninterrupted_run(name, official_cfg, teacher_path, tmp_path):
    cfg = copy.deepcopy(official_cfg)
    if name == "dfrd":
        cfg["defense"] = {"name": "dfrd", **OFFICIAL, "warmup": 1}
    refs = {"teacher": teacher_path}
    straight = _engine_run(cfg, tmp_path / "straight", references=refs)
    first = copy.deepcopy(cfg)
    first["train"]["epochs"] = 1
    _engine_run(first, tmp_path / "resumed", references=refs)                # "crash" after the warm-up epoch
    resumed = _engine_run(cfg, tmp_path / "resumed", references=refs)
    assert untimed(resumed.history) == untimed(straight.history)
    assert resumed.param_fingerprints == straight.param_fingerprints and resumed.confusion == straight.confusion
    a, b = (torch.load(tmp_path / d / CHECKPOINT_NAME, weights_only=False)["defense"][0]
            for d in ("straight", "resumed"))
    assert a["steps_done"] == b["steps_done"] == 6                            # 2 epochs after warm-up × 3
    assert torch.equal(a["bank_x"], b["bank_x"]) and a["bank_x"].shape[0] == 3 * 16
    assert "train_loss" not in straight.history[0] and "train_loss" in straight.history[1]
    assert straight.history[0]["defense_bank_samples"] == 16


def test_official_loop_resume_without_the_bank_differs(official_cfg, teacher_path, tmp_path, monkeypatch):
    """The resume test is not vacuous: a resumed run that lost the memory bank trains otherwise."""
    import distfair.defenses._datafree as datafree

    refs = {"teacher": teacher_path}
    cfg = copy.deepcopy(official_cfg)
    cfg["train"]["epochs"] = 2
    straight = _engine_run(cfg, tmp_path / "straight", references=refs)
    first = copy.deepcopy(cfg)
    first["train"]["epochs"] = 1
    _engine_run(first, tmp_path / "resumed", references=refs)
    real = datafree.DataFreeDistillation.load_state_dict

    def forget_bank(self, state):
        real(self, {**state, "bank_x": None, "bank_y": None})

    monkeypatch.setattr(datafree.DataFreeDistillation, "load_state_dict", forget_bank)
    resumed = _engine_run(cfg, tmp_path / "resumed", references=refs)
    assert resumed.history[1]["train_loss"] != straight.history[1]["train_loss"]


def test_a_generation_stage_without_a_finite_loss_fails_and_banks_nothing(teacher_path, monkeypatch):
    import distfair.defenses._datafree as datafree

    defense = official(dfrd, teacher_path, gen_steps=3)
    real = datafree.generator_objective
    monkeypatch.setattr(datafree, "generator_objective", lambda terms, weights: real(terms, weights) * float("nan"))
    message = "generator_loss is nan at every step of the generation stage of epoch 1"
    with pytest.raises(FloatingPointError, match=message):
        defense.start_epoch(student(), None, epoch=0, batch_size=16, generator=None)
    assert defense.bank_x is None


@pytest.mark.parametrize("base", [FERD, DFRD], ids=["ferd", "dfrd"])
def test_the_contracts_exact_resume_check_holds_for_the_official_loop(base, tmp_path):
    """distfair.testing's own resume check (the contract runs the alternating loop: its other
    checks draw batches without ``start_epoch``), here with the official loop at test size."""
    from distfair.testing import contract_references
    from distfair.testing.defenses import check_own_state_dict_resumes_exactly

    options = {k: v for k, v in base.TEST_OPTIONS.items() if k != "loop"}
    # batches of 24 over the contract's 3 classes: every class is in the kept batch FERD reweights
    # on, so no class's D is NaN (the check compares states with torch.equal, where NaN != NaN)
    official_cls = type(f"Official{base.__name__}", (base,), {"TEST_OPTIONS": {
        **options, "batch_size": 24, "loop": "official", "gen_steps": 2, "student_steps": 2, "warmup": 0,
        "crop_padding": 1}})
    with contract_references(tmp_path) as references:
        check_own_state_dict_resumes_exactly(official_cls, references)
