"""Rejection defenses of the speech paper (003, §4.3): randomized smoothing (Cohen et al. 2019) and
neural rejection (Melis et al. 2017, single layer; its score: test_rejection_score.py), the
AUC_FPR / FPR-parity summary (§3.2 Eq. 2), and the ``configurations`` block that runs their
comparison in one ``distfair run``.

Hand values: binomial p-values and the abstain-iff-p>α rule on made-up counts; AUC_FPR and
FPR parity on a 4-sample, 5-threshold grid worked out in the comments.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from torch import nn

from distfair.attacks import PGD
from distfair.config import ConfigError, load_configurations, read_document, validate
from distfair.data import DataBundle
from distfair.defenses import DEFENSES, DefenseContext, build_defense
from distfair.defenses.neural_rejection import (NeuralRejection, SVMRejectPredictor, classifier_layer,
                                                dataset_features, penultimate)
from distfair.defenses.randomized_smoothing import (GaussianEOT, NoisyArgmax, RandomizedSmoothing, SmoothedPredictor,
                                                    binomial_p_value, smoothed_decision, top_two)
from distfair.evaluation import ABSTAIN, Predictions, entry_result, predict_dataset, rejected_at, resolve_groupings
from distfair.evaluation.summaries import SummaryContext
from distfair.evaluation.summaries.auc_fpr import FalseRejectionAUC, threshold_grid
from distfair.models.m5 import M5
from distfair.experiment.sweep import load_sweep

from conftest import tiny_spoken_words

#: tiny hand problems leave classes without samples, which the metrics announce (as designed)
pytestmark = pytest.mark.filterwarnings("ignore:.*have no samples.*:UserWarning")
REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
BOUNDS = (-1.0, 1.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Fixed(nn.Module):
    """Logits that favour ``cls`` by ``margin`` whatever the input (plus the input's mean, so
    gradients exist); ``calls`` counts forward passes."""

    def __init__(self, k: int = 3, cls: int = 0, margin: float = 5.0):
        super().__init__()
        self.k, self.cls, self.margin, self.calls = k, cls, margin, 0
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        self.calls += 1
        logits = torch.zeros(x.shape[0], self.k) + self.scale * x.flatten(1).mean(1, keepdim=True)
        logits[:, self.cls] += self.margin
        return logits


class SignOfFirst(nn.Module):
    """Class 1 when the first input value is positive, else class 0 (ties under noise: p ≈ 1)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(50.0))

    def forward(self, x):
        v = x.flatten(1)[:, :1] * self.w
        return torch.cat([-v, v, torch.full_like(v, -100.0)], dim=1)


# ------------------------------------------------------------------ randomized smoothing
def test_binomial_p_value_matches_scipy_and_hand_values():
    assert binomial_p_value(10, 0) == pytest.approx(2 * 0.5 ** 10, rel=1e-12)     # 0.001953125
    assert binomial_p_value(5, 5) == 1.0
    assert binomial_p_value(0, 0) == 1.0
    assert binomial_p_value(70, 30) == pytest.approx(binomtest(70, 100, 0.5).pvalue, rel=1e-12)


def test_smoothing_abstains_exactly_when_the_p_value_exceeds_alpha():
    counts = torch.tensor([[10, 0, 0],       # p = 2/1024 = 0.001953125
                           [0, 6, 4],        # p = binomtest(6, 10) = 0.75390625
                           [3, 3, 4],        # top two: class 2 (4) vs class 0 (3, lowest index): p = 1
                           [0, 0, 100]])     # p = 2^-99
    p = [2 / 1024, binomtest(6, 10).pvalue, 1.0, 2 * 0.5 ** 100]
    for alpha in (0.001, 2 / 1024, 0.002, 0.5, 0.75390625, 0.8, 1.0):
        pred, score = smoothed_decision(counts, alpha)
        assert score.dtype == torch.float64
        assert score.tolist() == pytest.approx(p, rel=1e-12)
        want = [c if pv <= alpha else ABSTAIN for c, pv in zip([0, 1, 2, 2], p)]
        assert pred.tolist() == want, alpha


def test_top_two_breaks_ties_by_lowest_class_index():
    c_a, n_a, n_b = top_two(torch.tensor([[2, 5, 5, 1], [0, 0, 0, 0]]))
    assert c_a.tolist() == [1, 0] and n_a.tolist() == [5, 0] and n_b.tolist() == [5, 0]


def test_smoothed_counts_add_up_to_n_and_are_reproducible():
    x = torch.rand(4, 1, 32) * 2 - 1
    model = SignOfFirst().eval()
    a = SmoothedPredictor(sigma=0.5, n_samples=37, alpha=0.001, bounds=BOUNDS, generator=gen(1), mc_batch=10)
    b = SmoothedPredictor(sigma=0.5, n_samples=37, alpha=0.001, bounds=BOUNDS, generator=gen(1), mc_batch=10)
    counts = a.counts(model, x)
    assert counts.shape == (4, 3) and counts.sum(1).tolist() == [37] * 4
    assert torch.equal(counts, b.counts(model, x))
    assert counts[:, 2].sum() == 0


def test_a_confident_model_is_predicted_and_a_coin_flip_abstains():
    x = torch.zeros(3, 1, 16)
    confident = SmoothedPredictor(sigma=0.1, n_samples=20, alpha=0.001, bounds=BOUNDS, generator=gen())
    pred, p = confident(Fixed(cls=2).eval(), x)
    assert pred.tolist() == [2, 2, 2] and p.tolist() == pytest.approx([2 * 0.5 ** 20] * 3)
    coin = SmoothedPredictor(sigma=1.0, n_samples=200, alpha=0.001, bounds=BOUNDS, generator=gen())
    pred, p = coin(SignOfFirst().eval(), x)          # x = 0: noise decides the sign, about 100 vs 100
    assert pred.tolist() == [ABSTAIN] * 3 and (p > 0.001).all()


def test_abstention_is_never_class_zero_in_accuracy_or_confusion():
    """Smoothing abstains on every sample of true class 0 (the coin-flip model at x = 0): the
    confusion matrix has no column-0 entries for them and their accuracy is 0, not 1."""
    x = torch.zeros(6, 1, 16)
    x[3:, 0, 0] = 0.9                                   # class-1 samples, far from the boundary
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    ds = torch.utils.data.TensorDataset(x, y)
    pred = predict_dataset(SignOfFirst().eval(), ds, 3, device=CPU, batch_size=4, predictor=SmoothedPredictor(
        sigma=1.0, n_samples=200, alpha=0.001, bounds=BOUNDS, generator=gen()))
    assert pred.preds[:3].tolist() == [ABSTAIN] * 3 and pred.reject_rule == "above" and pred.threshold == 0.001
    entry = entry_result("clean", pred, 3, None)
    assert entry.counts[:, 0].sum() == 0 and entry.counts[0].sum() == 0
    assert entry.per_class_acc[0] == 0.0 and entry.metrics["rejection_rate"] >= 0.5
    assert entry.metrics["false_rejection_rate"] == entry.metrics["rejection_rate"]


def test_eot_wrapper_is_a_normalised_differentiable_smoothed_classifier():
    model = Fixed(margin=1.0).train()
    eot = GaussianEOT(model, 0.1, 5, BOUNDS, gen())
    x = (torch.rand(2, 1, 8) * 2 - 1).requires_grad_(True)
    out = eot(x)
    assert out.shape == (2, 3) and torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-6)
    out[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert model.calls == 1 and model.training          # one batched pass over 2 x 5 copies, mode untouched


def test_evaluation_attacks_differentiate_the_eot_form():
    """predict_dataset hands the attack the predictor's attack_model (EOT for smoothing); the
    attack keeps its budget and range and leaves the input alone."""
    seen = []

    class Spy(PGD):
        def __call__(self, model, x, y, **kw):
            seen.append(type(model).__name__)
            return super().__call__(model, x, y, **kw)

    x = torch.rand(5, 1, 16) * 2 - 1
    y = torch.zeros(5, dtype=torch.long)
    x0 = x.clone()
    smoothing = SmoothedPredictor(sigma=0.1, n_samples=10, alpha=1.0, bounds=BOUNDS, generator=gen(), eot_samples=3)
    attack = Spy(eps=0.05, alpha=0.02, steps=3, bounds=BOUNDS)
    model = Fixed(margin=0.5).eval()
    pred = predict_dataset(model, torch.utils.data.TensorDataset(x, y), 3, device=CPU, batch_size=5, attack=attack,
                           generator=gen(2), predictor=smoothing)
    assert seen == ["GaussianEOT"] and torch.equal(x, x0) and not model.training
    adv = attack(smoothing.attack_model(model), x, y, generator=gen(2))
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.min() >= -1 and adv.max() <= 1
    assert len(pred.preds) == 5


def test_randomized_smoothing_defense_options_and_predictors():
    d = build_defense("randomized_smoothing", attack=None, num_classes=3)
    assert (d.sigma, d.n_samples, d.alpha) == (0.1, 100, 0.001)     # paper σ, Cohen et al.'s α
    for bad in ({"sigma": 0.0}, {"n_samples": 0}, {"alpha": 0.0}, {"alpha": 1.5}, {"eot_samples": True}):
        with pytest.raises(ValueError):
            RandomizedSmoothing(attack=None, num_classes=3, **bad)
    ctx = DefenseContext(num_classes=3, in_shape=(1, 16), bounds=BOUNDS, class_names=("a", "b", "c"), device=CPU,
                         make_generator=lambda *labels: gen(hash(labels) % 1000))
    d.setup(ctx)
    assert isinstance(d.epoch_predictor(0), NoisyArgmax) and not d.epoch_predictor(0).can_abstain
    final = d.predictor()
    assert isinstance(final, SmoothedPredictor) and final.can_abstain and final.reject_rule == "above"
    assert final.bounds == BOUNDS and final.threshold == 0.001


# ---------------------------------------------------------------------- neural rejection
def test_penultimate_is_the_input_of_the_last_linear_layer():
    model = M5(num_classes=4, in_shape=(1, 7000), width=4).eval()
    x = torch.rand(3, 1, 7000) * 2 - 1
    feats = penultimate(model, x)
    with torch.no_grad():
        want = model.features(model.normalize(x)).mean(dim=-1)
    assert torch.allclose(feats, want) and classifier_layer(model) is model.head
    with pytest.raises(ValueError, match="nn.Linear"):
        classifier_layer(nn.Sequential(nn.Conv1d(1, 2, 3)))


def blobs(n_per: int = 20, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(k, 6) * 4
    x = torch.cat([centres[c] + 0.3 * torch.randn(n_per, 6, generator=g) for c in range(k)])
    y = torch.arange(k).repeat_interleave(n_per)
    return torch.utils.data.TensorDataset(x, y)


class Identityish(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Identity()
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_neural_rejection_fits_ovr_rbf_svms_and_rejects_below_the_threshold():
    train = blobs()
    model = Identityish().train()
    d = NeuralRejection(attack=None, num_classes=3, threshold=0.6)
    assert d.predictor().can_abstain is False                      # no SVM before finish_training
    numbers = d.finish_training(model, train, batch_size=16)
    assert model.training                                          # mode restored
    assert numbers["svm_fit_samples"] == 60 and numbers["svm_support_vectors"] >= 3
    assert d.svm.estimator.kernel == "rbf" and len(d.svm.estimators_) == 3          # one-vs-rest, raw values
    lo, hi = d.score_range
    assert (numbers["svm_score_min"], numbers["svm_score_max"]) == (lo, hi) and lo < hi
    predictor = d.predictor()
    assert isinstance(predictor, SVMRejectPredictor) and predictor.reject_rule == "below"
    assert predictor.threshold == pytest.approx(lo + 0.6 * (hi - lo)) and predictor.score_range == (lo, hi)
    x = torch.cat([train.tensors[0][:5], torch.full((3, 6), 2.0)])  # 5 in-distribution, 3 between the blobs
    pred, score = predictor(model.eval(), x)
    assert score.dtype == torch.float64
    assert torch.equal(pred == ABSTAIN, score < predictor.threshold)
    assert set(pred[:5].tolist()) <= {0, ABSTAIN}
    kept, _ = SVMRejectPredictor(d.svm, lo, (lo, hi))(model.eval(), x[:5])   # position 0: no training sample rejected
    assert kept.tolist() == [0] * 5
    again = NeuralRejection(attack=None, num_classes=3, threshold=0.6)
    again.finish_training(model, train, batch_size=16)
    assert torch.equal(again.predictor()(model.eval(), x)[1], score)   # same features, same seed: same SVM


def test_neural_rejection_options_are_checked():
    for bad in ({"threshold": 1.5}, {"svm_c": 0}, {"svm_gamma": "wide"}, {"max_fit_samples": 1}):
        with pytest.raises(ValueError):
            NeuralRejection(attack=None, num_classes=3, **bad)
    d = NeuralRejection(attack=None, num_classes=3, max_fit_samples=30)
    assert d.finish_training(Identityish(), blobs(), batch_size=16)["svm_fit_samples"] == 30


def test_dataset_features_keep_order_and_labels():
    ds = blobs(n_per=3)
    feats, labels = dataset_features(Identityish(), ds, device=CPU, batch_size=4)
    assert feats.shape == (9, 6) and np.allclose(feats, ds.tensors[0].numpy()) and labels.tolist() == ds.tensors[1].tolist()


# ---------------------------------------------------------------------- AUC_FPR (Eq. 2)
def hand_context(rule: str = "above", options: dict | None = None) -> SummaryContext:
    y = torch.tensor([0, 1, 0, 1])
    scores = torch.tensor([0.15, 0.35, 0.05, 0.45], dtype=torch.float64)
    pred = Predictions(labels=y, preds=y.clone(), scores=scores, can_abstain=True, reject_rule=rule, threshold=0.1)
    data = DataBundle(train=None, val=None, test=torch.utils.data.TensorDataset(torch.zeros(4, 1), y), num_classes=2,
                      in_shape=(1,), bounds=(0.0, 1.0), class_names=["a", "b"],
                      test_attributes={"voice": ["g1", "g1", "g2", "g2"]})
    groupings = resolve_groupings({"voice": "metadata"}, data)
    return SummaryContext(split="test", entries={"clean": entry_result("clean", pred, 2, None)}, groupings=groupings,
                          class_names=["a", "b"], num_classes=2,
                          options=options or {"alpha_min": 0.1, "alpha_max": 0.5, "step": 0.1})


def test_auc_fpr_and_fpr_parity_by_hand():
    """p-values 0.15, 0.35 (group g1), 0.05, 0.45 (g2), rejected when p > α, α = 0.1 ... 0.5:
    all:  FPR 3/4, 2/4, 2/4, 1/4, 0   -> 0.1 * (0.625 + 0.5 + 0.375 + 0.125) = 0.1625
    g1:   FPR 1, 1/2, 1/2, 0, 0       -> 0.1 * (0.75 + 0.5 + 0.25 + 0)       = 0.15
    g2:   FPR 1/2, 1/2, 1/2, 1/2, 0   -> 0.1 * (0.5 + 0.5 + 0.5 + 0.25)      = 0.175
    parity = 0.175 - 0.15 = 0.025."""
    out = FalseRejectionAUC().summarize(hand_context())
    assert out.metrics["auc_fpr"] == pytest.approx(0.1625)
    assert out.metrics["group_auc_fpr/voice/g1"] == pytest.approx(0.15)
    assert out.metrics["group_auc_fpr/voice/g2"] == pytest.approx(0.175)
    assert out.metrics["fpr_parity/voice"] == pytest.approx(0.025)
    doc = out.document
    assert doc["fpr"] == pytest.approx([0.75, 0.5, 0.5, 0.25, 0.0]) and doc["rule"] == "above"
    assert doc["thresholds"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    json.dumps(doc)


def test_auc_fpr_for_a_below_rule_and_nothing_without_a_rule():
    """rule "below" (reject score < t) on the same scores: FPR 1/4, 2/4, 2/4, 3/4, 1 -> 0.1 * (0.375 +
    0.5 + 0.625 + 0.875) = 0.2375."""
    assert FalseRejectionAUC().summarize(hand_context("below")).metrics["auc_fpr"] == pytest.approx(0.2375)
    ctx = hand_context()
    ctx.entries["clean"].predictions.reject_rule = None
    out = FalseRejectionAUC().summarize(ctx)
    assert out.metrics == {} and out.document is None


@pytest.mark.parametrize("rule", ["above", "below"])
def test_false_rejection_is_monotone_in_the_threshold(rule):
    scores = np.random.default_rng(0).random(500)
    grid = threshold_grid(0.001, 1.0, 0.001)
    assert len(grid) == 1000 and grid[0] == 0.001 and grid[-1] == 1.0 and grid[499] == 0.5
    fpr = rejected_at(scores, rule, grid).mean(axis=1)
    steps = np.diff(fpr)
    assert (steps <= 0).all() if rule == "above" else (steps >= 0).all()


@pytest.mark.parametrize("options, key", [({"step": 0}, "step"), ({"alpha_min": 1.0}, "alpha_min"),
                                          ({"step": 0.3}, "step"), ({"width": 1}, "width"),
                                          ({"alpha_max": "1"}, "alpha_max")])
def test_auc_fpr_options_are_validated_with_their_key(options, key):
    raw = read_document(REPO / "tune_spaces" / "speech_rejection.yaml")
    raw.pop("configurations")
    raw["eval"]["summaries"] = {"auc_fpr": options}
    with pytest.raises(ConfigError) as err:
        validate(raw, "rej.yaml")
    assert any(k == f"eval.summaries.auc_fpr.{key}" for k, _ in err.value.problems), err.value.problems


# ------------------------------------------------------------------ configurations block
def test_speech_rejection_file_lists_its_configurations():
    configs = load_configurations(REPO / "tune_spaces" / "speech_rejection.yaml")
    assert [n for n, _ in configs] == ["rs_n10", "rs_n100", "rs_n1000", "nr"]
    assert [c["defense"].get("n_samples") for _, c in configs] == [10, 100, 1000, None]
    assert configs[-1][1]["defense"]["name"] == "neural_rejection" and "sigma" not in configs[-1][1]["defense"]
    assert all(c["seeds"] == [0, 1, 2] and "configurations" not in c for _, c in configs)
    assert "not people" in configs[0][1]["description"]
    assert set(DEFENSES) >= {"randomized_smoothing", "neural_rejection"}


def test_set_overrides_apply_to_every_configuration_last(tmp_path):
    configs = load_configurations(REPO / "tune_spaces" / "speech_rejection.yaml", ["train.epochs=1", "seeds=2"])
    assert all(c["train"]["epochs"] == 1 and c["seeds"] == [0, 1] for _, c in configs)
    assert [c["defense"].get("n_samples") for _, c in configs] == [10, 100, 1000, None]
    with pytest.raises(ConfigError) as err:          # --set wins over an entry, and must suit every entry
        load_configurations(REPO / "tune_spaces" / "speech_rejection.yaml", ["defense.n_samples=7"])
    assert [k for k, _ in err.value.problems] == ["configurations.nr: defense.n_samples"]


@pytest.mark.parametrize("block, key", [({"x": {"defense.n_samples": 0}}, "configurations.x: defense"),
                                        ({"bad name": {"train.epochs": 1}}, "configurations.bad name"),
                                        ({"x": {"seeds": 3}}, "configurations.x.seeds"),
                                        ({"x": {}}, "configurations.x"),
                                        ([], "configurations")])
def test_bad_configurations_name_the_entry_and_key(tmp_path, block, key):
    import yaml

    raw = read_document(REPO / "tune_spaces" / "speech_rejection.yaml")
    raw["configurations"] = block
    path = tmp_path / "rej.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_configurations(path)
    assert any(k.startswith(key) for k, _ in err.value.problems), err.value.problems


def test_a_sweep_refuses_configurations():
    with pytest.raises(ConfigError, match="configurations"):
        load_sweep(str(REPO / "tune_spaces" / "speech_rejection.yaml"))


# ------------------------------------------------------------------ the real command, end to end
@pytest.mark.ray
def test_tiny_rejection_comparison_through_the_cli_ray_and_mlflow(tmp_path, distfair_cli):
    """speech_rejection.yaml shrunk (3 words x 12 voices, short clips, 1 epoch, 2 seeds, N = 5 and 20
    against neural rejection) through `distfair run` (in this process, the session's Ray): one parent run per
    configuration, named and tagged after it, every seed run FINISHED, AUC_FPR and FPR parity with
    their seed spread, both smoothing configurations built on the same base network per seed."""
    import yaml
    from mlflow.tracking import MlflowClient

    raw = read_document(REPO / "tune_spaces" / "speech_rejection.yaml")
    raw.update({
        "dataset": tiny_spoken_words(tmp_path / "words"),
        "model": {"name": "m5", "width": 4},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adam", "lr": 0.001},
        "seeds": [0, 1],
        "configurations": {"rs_n5": {"defense.n_samples": 5}, "rs_n20": {"defense.n_samples": 20},
                           "nr": {"defense": {"name": "neural_rejection"}}},
    })
    raw["eval"]["attacks"][0]["steps"] = 1
    raw["defense"]["eot_samples"] = 2
    path = tmp_path / "rejection.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False))   # the file order is the run order
    proc = distfair_cli("run", path, "--json", "--tracking-uri", "sqlite:///mlflow.db", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)["configurations"]
    assert list(report) == ["rs_n5", "rs_n20", "nr"]
    assert "3 configurations: rs_n5, rs_n20, nr" in proc.stderr and "[nr] 2/2 seeds finished" in proc.stderr

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("rejection")
    fingerprints = {}
    for name, rep in report.items():
        parent = client.get_run(rep["parent_run_id"])
        assert parent.data.tags["distfair.configuration"] == name and parent.info.run_name.startswith(f"rejection-{name}-")
        assert "synthetic eSpeak NG voices, not people" in parent.data.tags["mlflow.note.content"]   # its description
        children = client.search_runs([exp.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{rep['parent_run_id']}'")
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
        for child in children:
            m = child.data.metrics
            assert {"auc_fpr", "val_auc_fpr", "fpr_parity/gender", "fpr_parity/accent", "fpr_parity/age",
                    "clean_false_rejection_rate", "pgd_1e-2/rejection_rate"} <= set(m)
            assert 0 <= m["auc_fpr"] <= 0.999 + 1e-9            # ∫ over [0.001, 1] of a rate
            local = client.download_artifacts(child.info.run_id, "auc_fpr.json", str(tmp_path))
            doc = json.loads(Path(local).read_text())
            assert doc["rule"] == ("below" if name == "nr" else "above") and len(doc["thresholds"]) == 1000
            fingerprints[(name, child.data.params["seed"])] = m["train_loss"]
        pm = parent.data.metrics
        for metric in ("auc_fpr", "fpr_parity/gender"):
            values = [c.data.metrics[metric] for c in children]
            assert pm[f"{metric}_mean"] == pytest.approx(sum(values) / 2, abs=1e-12) and f"{metric}_std" in pm
        assert parent.data.params["defense.name"] == ("neural_rejection" if name == "nr" else "randomized_smoothing")
    for seed in ("0", "1"):           # N acts at prediction only: the same training, bit for bit
        assert fingerprints[("rs_n5", seed)] == fingerprints[("rs_n20", seed)]
