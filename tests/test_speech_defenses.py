"""The speech paper's training interventions (paper 003 §4.2): ``noise_aug`` (Gaussian noise
augmentation) and ``waveform_at`` (clean + adversarial examples in one batch, joint loss with
λ = 0.5), checked against losses computed by hand; the shipped speech tune files load; and one
Ray end-to-end run of a tiny quickstart with MLflow. The registry contract is checked for both
defenses by tests/test_defense_contract.py."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distfair.attacks import PGD
from distfair.config import load_config, validate
from distfair.defenses import DEFENSES, DefenseContext, build_defense
from distfair.defenses.noise_aug import NoiseAug, gaussian_augment
from distfair.defenses.waveform_at import WaveformAT
from distfair.experiment.sweep import load_sweep

from conftest import tiny_spoken_words

REPO = Path(__file__).resolve().parent.parent
K = 3
BOUNDS = (-1.0, 1.0)
T = 64


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def waveforms(n: int = 12, seed: int = 0):
    """(n, 1, T) waveforms in [-1, 1], some at the edges (so the clamp matters), labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, T, generator=g) * 2 - 1).mul(1.05).clamp(*BOUNDS)
    return x, torch.arange(n) % K


def tiny_linear() -> nn.Module:
    """No BatchNorm: one pass of [x; x_adv] equals two separate passes, so losses compare exactly."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(T, 8), nn.Tanh(), nn.Linear(8, K)).train()


def tiny_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 4, 5, stride=2), nn.BatchNorm1d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, K)).train()


def set_up(defense, bounds=BOUNDS):
    defense.setup(DefenseContext(num_classes=K, in_shape=(1, T), bounds=bounds, class_names=("a", "b", "c"),
                                 device=torch.device("cpu"), make_generator=lambda *labels: gen()))
    return defense


def attack(eps: float = 0.05) -> PGD:
    return PGD(eps=eps, alpha=eps / 5, steps=3, bounds=BOUNDS)


# ----------------------------------------------------------------------------- noise_aug
def test_registered_with_their_paper_defaults():
    assert DEFENSES["noise_aug"] is NoiseAug and DEFENSES["waveform_at"] is WaveformAT
    assert not NoiseAug.needs_attack and WaveformAT.needs_attack
    assert NoiseAug(num_classes=K).sigma == 0.0
    at = WaveformAT(attack=attack(), num_classes=K)
    assert (at.adv_weight, at.sigma) == (0.5, 0.0)


def test_sigma_zero_is_plain_cross_entropy():
    model, (x, y) = tiny_linear(), waveforms()
    loss, parts = set_up(NoiseAug(num_classes=K, sigma=0.0)).loss(model, x, y, generator=gen())
    expected = F.cross_entropy(model(x), y)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    torch.testing.assert_close(parts["clean_ce"], expected.detach(), rtol=0, atol=0)
    # and the same as the `standard` defense
    standard, _ = build_defense("standard", attack=None, num_classes=K).loss(model, x, y)
    torch.testing.assert_close(loss, standard, rtol=0, atol=0)


def test_sigma_zero_draws_nothing_from_the_generator():
    g = gen(3)
    before = g.get_state()
    gaussian_augment(waveforms()[0], 0.0, bounds=BOUNDS, generator=g)
    assert torch.equal(g.get_state(), before)


def test_noise_stays_in_bounds_and_is_the_clamped_gaussian():
    x, _ = waveforms()
    noisy = gaussian_augment(x, 0.1, bounds=BOUNDS, generator=gen(5))
    assert noisy.shape == x.shape and noisy.dtype == x.dtype
    assert noisy.min() >= -1.0 and noisy.max() <= 1.0
    expected = (x + 0.1 * torch.randn(x.shape, generator=gen(5))).clamp(*BOUNDS)
    torch.testing.assert_close(noisy, expected, rtol=0, atol=0)
    assert ((x + 0.1 * torch.randn(x.shape, generator=gen(5))).abs() > 1).any()   # the clamp did something
    # its standard deviation is sigma (away from the edges)
    inner = (x.abs() < 0.5)
    assert (noisy - x)[inner].std().item() == pytest.approx(0.1, rel=0.15)


def test_noise_reproducible_from_the_generator_and_never_global():
    x, _ = waveforms()
    torch.manual_seed(0)
    a = gaussian_augment(x, 0.05, bounds=BOUNDS, generator=gen(1))
    torch.manual_seed(123)                       # the global RNG has no say
    b = gaussian_augment(x, 0.05, bounds=BOUNDS, generator=gen(1))
    c = gaussian_augment(x, 0.05, bounds=BOUNDS, generator=gen(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    state = torch.random.get_rng_state()
    gaussian_augment(x, 0.05, bounds=BOUNDS, generator=gen(1))
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ValueError, match="generator"):
        gaussian_augment(x, 0.05, bounds=BOUNDS, generator=None)


def test_noise_aug_loss_is_ce_of_the_noisy_batch_and_leaves_x_alone():
    model, (x, y) = tiny_linear(), waveforms()
    x0 = x.clone()
    defense = set_up(NoiseAug(num_classes=K, sigma=0.05))
    loss, parts = defense.loss(model, x, y, generator=gen(4))
    expected = F.cross_entropy(model((x + 0.05 * torch.randn(x.shape, generator=gen(4))).clamp(*BOUNDS)), y)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    assert torch.equal(x, x0)
    other, _ = defense.loss(model, x, y, generator=gen(5))
    assert not torch.equal(loss, other)
    # the context's bounds are used (images in [0, 1] clamp at 0 and 1)
    unit = set_up(NoiseAug(num_classes=K, sigma=0.5), bounds=(0.0, 1.0))
    seen = []
    unit.loss(lambda inp: seen.append(inp) or torch.zeros(len(inp), K, requires_grad=True), x.abs(), y,
              generator=gen())
    assert seen[0].min() >= 0 and seen[0].max() <= 1


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_impossible_sigma_refused(sigma):
    with pytest.raises(ValueError, match="sigma"):
        NoiseAug(num_classes=K, sigma=sigma)
    with pytest.raises(ValueError, match="sigma"):
        WaveformAT(attack=attack(), num_classes=K, sigma=sigma)


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), None])
def test_impossible_adv_weight_refused(weight):
    with pytest.raises(ValueError, match="adv_weight"):
        WaveformAT(attack=attack(), num_classes=K, adv_weight=weight)


# --------------------------------------------------------------------------- waveform_at
class FixedAttack:
    """A deterministic stand-in for the training attack: x + 0.03·sign pattern, clamped, and
    it records what it was called with (model mode, input)."""

    name, norm, eps, bounds = "fixed", "linf", 0.03, BOUNDS

    def __init__(self):
        self.calls = []

    def __call__(self, model, x, y, *, generator=None):
        self.calls.append({"x": x.clone(), "training": model.training})
        pattern = torch.where(torch.arange(x.shape[-1]) % 2 == 0, 1.0, -1.0)
        return (x + self.eps * pattern).clamp(*self.bounds).detach()


@pytest.mark.parametrize("weight", [0.5, 0.0, 0.3, 1.0])
def test_joint_loss_is_the_weighted_sum(weight):
    model, (x, y) = tiny_linear(), waveforms()
    fixed = FixedAttack()
    defense = WaveformAT(attack=fixed, num_classes=K, adv_weight=weight)
    loss, parts = defense.loss(model, x, y, generator=gen())
    x_adv = fixed(model, x, y)
    clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    torch.testing.assert_close(loss, (1 - weight) * clean + weight * adv, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts["clean_ce"], clean.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts["adv_ce"], adv.detach(), rtol=1e-6, atol=1e-7)
    assert adv.item() != pytest.approx(clean.item())         # the two terms differ: the check is not vacuous
    if weight == 0.5:                                        # λ = 0.5: the mean CE over the 2B samples
        both = F.cross_entropy(model(torch.cat([x, x_adv])), torch.cat([y, y]))
        torch.testing.assert_close(loss, both, rtol=1e-6, atol=1e-7)


def test_joint_loss_with_the_real_pgd_and_the_same_generator():
    model, (x, y) = tiny_linear(), waveforms()
    loss, _ = WaveformAT(attack=attack(), num_classes=K).loss(model, x, y, generator=gen(7))
    x_adv = attack()(model, x, y, generator=gen(7))
    assert not torch.equal(x_adv, x) and (x_adv - x).abs().max() <= 0.05 + 1e-7
    expected = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_adv), y)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)


def test_clean_and_adversarial_share_one_batchnorm_pass():
    """§4.2 "in the same batch": with BatchNorm, the batch statistics are over [x; x_adv]."""
    model, (x, y) = tiny_bn(), waveforms()
    fixed = FixedAttack()
    loss, _ = WaveformAT(attack=fixed, num_classes=K).loss(copy.deepcopy(model), x, y, generator=gen())
    x_adv = fixed(model, x, y)
    logits = copy.deepcopy(model)(torch.cat([x, x_adv]))
    joint = 0.5 * F.cross_entropy(logits[:12], y) + 0.5 * F.cross_entropy(logits[12:], y)
    torch.testing.assert_close(loss, joint, rtol=1e-6, atol=1e-7)
    separate = copy.deepcopy(model)
    apart = 0.5 * F.cross_entropy(separate(x), y) + 0.5 * F.cross_entropy(separate(x_adv), y)
    assert loss.item() != pytest.approx(apart.item(), rel=1e-6, abs=1e-7)


def test_attack_runs_on_the_noisy_batch_from_the_same_generator():
    """Noise first (from the step's generator), then the attack on x̃; both terms see x̃."""
    model, (x, y) = tiny_linear(), waveforms()
    fixed = FixedAttack()
    loss, _ = WaveformAT(attack=fixed, num_classes=K, sigma=0.05).loss(model, x, y, generator=gen(9))
    x_aug = (x + 0.05 * torch.randn(x.shape, generator=gen(9))).clamp(*BOUNDS)
    torch.testing.assert_close(fixed.calls[0]["x"], x_aug, rtol=0, atol=0)
    x_adv = fixed(model, x_aug, y)
    expected = 0.5 * F.cross_entropy(model(x_aug), y) + 0.5 * F.cross_entropy(model(x_adv), y)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)


def test_budget_zero_is_plain_training():
    """The sweep's "no AT" rows: PGD with ε = 0 returns x, so the loss is CE(x)."""
    model, (x, y) = tiny_linear(), waveforms()
    loss, parts = WaveformAT(attack=PGD(eps=0.0, steps=10, bounds=BOUNDS), num_classes=K).loss(
        model, x, y, generator=gen())
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts["adv_ce"], parts["clean_ce"], rtol=0, atol=0)


@pytest.mark.parametrize("make_model", [tiny_bn, tiny_linear])
def test_model_mode_restored_and_attack_sees_eval_mode(make_model):
    model, (x, y) = make_model(), waveforms()
    for name, defense in (("waveform_at", WaveformAT(attack=attack(), num_classes=K, sigma=0.01)),
                          ("noise_aug", set_up(NoiseAug(num_classes=K, sigma=0.01)))):
        loss, _ = defense.loss(model, x, y, generator=gen())
        loss.backward()
        assert all(m.training for m in model.modules()), name
    model.eval()
    WaveformAT(attack=attack(), num_classes=K).loss(model, x, y, generator=gen())
    assert not any(m.training for m in model.modules())
    fixed = FixedAttack()
    WaveformAT(attack=fixed, num_classes=K).loss(make_model().train(), x, y, generator=gen())
    assert fixed.calls[0]["training"] is True          # the attack itself switches (and restores) the mode


# ------------------------------------------------------------------------ tune files
def test_speech_quickstart_validates():
    cfg = load_config(REPO / "tune_spaces" / "speech_quickstart.yaml")
    assert cfg["dataset"]["name"] == "spoken_words" and cfg["model"]["name"] == "m5"
    assert cfg["defense"]["name"] == "waveform_at" and cfg["defense"]["adv_weight"] == 0.5
    assert (cfg["train"]["optimizer"], cfg["train"]["lr"]) == ("adam", 0.001)
    attacks = cfg["eval"]["attacks"]
    assert [a["eps"] for a in attacks] == [0.0001, 0.001, 0.01, 0.1, 0.2, 0.3]
    assert all(a["alpha"] == pytest.approx(a["eps"] / 5) for a in attacks)
    assert cfg["attack"]["alpha"] == pytest.approx(cfg["attack"]["eps"] / 5)
    assert cfg["eval"]["summaries"]["auc_acc"]["entries"] == [a["name"] for a in attacks]
    assert set(cfg["eval"]["subgroups"]) == {"gender", "accent", "age"}
    assert "not people" in cfg["description"]


def test_speech_interventions_sweep_loads():
    cfg, spec = load_sweep(str(REPO / "tune_spaces" / "speech_interventions.yaml"))
    grid = {d.key: list(d.choices) for d in spec.grid}
    assert grid == {"attack.eps": [0.0, 0.001, 0.005, 0.01, 0.1], "defense.sigma": [0.0, 0.01, 0.05, 0.1],
                    "model.name": ["m5", "m5_tricks"]}
    assert spec.sampler == "grid" and spec.total_trials() == 40 and not spec.dims
    assert cfg["seeds"] == [0, 1, 2] and cfg["defense"]["name"] == "waveform_at"
    assert [t.metric for t in spec.objective] == ["val_auc_acc"]
    assert "not people" in cfg["description"]


# --------------------------------------------------------------------- Ray end to end
@pytest.mark.ray
def test_tiny_speech_quickstart_through_ray_and_mlflow(ray_local, tmp_path):
    """The quickstart, shrunk (3 words x 12 voices, 4 per split, short clips, 1 epoch, 2 seeds, a 2-entry ε
    grid): every seed run FINISHED, AUC_acc and defense parity reached MLflow with their spread."""
    from mlflow.tracking import MlflowClient

    from distfair.experiment.run import run_configuration_with_tracking

    raw = load_config(REPO / "tune_spaces" / "speech_quickstart.yaml")
    raw = {k: v for k, v in raw.items() if k in ("description", "defense", "model", "attack", "scaling")}
    raw.update({
        "dataset": tiny_spoken_words(tmp_path / "words"),
        "model": {"name": "m5", "width": 4},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adam", "lr": 0.001},
        "attack": {"name": "pgd", "eps": 0.005, "alpha": 0.001, "steps": 2},
        "eval": {"attacks": [{"name": "pgd_1e-3", "attack": "pgd", "eps": 0.001, "alpha": 0.0002, "steps": 2},
                             {"name": "pgd_1e-1", "attack": "pgd", "eps": 0.1, "alpha": 0.02, "steps": 2}],
                 "subgroups": {"gender": "metadata", "accent": "metadata", "age": "metadata"},
                 "summaries": {"auc_acc": {"entries": ["pgd_1e-3", "pgd_1e-1"]}}},
        "seeds": [0, 1],
    })
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    report = run_configuration_with_tracking(validate(raw, "speech_tiny.yaml"), config_path="speech_tiny.yaml",
                                             experiment="speech", tracking_uri=uri,
                                             storage_path=tmp_path / "storage", log=lambda msg: None)
    assert report.errors == {}, report.errors
    client = MlflowClient(uri)
    children = client.search_runs([report.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{report.parent_run_id}'")
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    for child in children:
        m = child.data.metrics
        assert {"auc_acc", "defense_parity/gender", "val_auc_acc", "train_clean_ce", "train_adv_ce"} <= set(m)
        assert 0 <= m["auc_acc"] <= 0.1 - 0.001 + 1e-9          # linear ε axis, not normalised
    parent = client.get_run(report.parent_run_id)
    pm = parent.data.metrics
    for name in ("auc_acc", "defense_parity/gender", "defense_parity/accent", "defense_parity/age"):
        values = [c.data.metrics[name] for c in children]
        assert pm[f"{name}_mean"] == pytest.approx(sum(values) / 2, abs=1e-12)
        assert f"{name}_std" in pm
    assert parent.data.params["defense.name"] == "waveform_at"
