"""Neural rejection's score (Melis et al. 2017, single layer; issue 27 §1): the raw maximum of the
one-vs-rest RBF SVM decision values on the penultimate features, which falls away from the
training data (the property rejection rests on), and the AUC_FPR threshold grid mapped onto
that score's range.

Hand-checkable setting: the network is a 2-D identity body with a linear head, so the
penultimate features are the inputs themselves; three Gaussian clusters (sd 0.3) at (0, 0),
(3, 0) and (0, 3); far points (10, 10) and (100, -50), more than 12 units (40 sd) from every
cluster, where every RBF term is below 1e-15 and each decision value is its bias.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import SVC
from torch import nn

from distfair.data import DataBundle
from distfair.defenses.neural_rejection import NeuralRejection, SVMRejectPredictor
from distfair.evaluation import Predictions, entry_result, predict_dataset, resolve_groupings
from distfair.evaluation.predict import thresholds_on_range
from distfair.evaluation.summaries import SummaryContext
from distfair.evaluation.summaries.auc_fpr import FalseRejectionAUC

CPU = torch.device("cpu")
K = 3
CENTRES = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
FAR = torch.tensor([[10.0, 10.0], [100.0, -50.0]])


class Plane(nn.Module):
    """Penultimate features = the 2-D input (the input of the last nn.Linear)."""

    def __init__(self, k: int = K):
        super().__init__()
        self.body = nn.Identity()
        self.head = nn.Linear(2, k)

    def forward(self, x):
        return self.head(self.body(x))


def clusters(n_per: int, seed: int, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([CENTRES[c] + 0.3 * rng.standard_normal((n_per, 2)) for c in range(k)])
    return torch.tensor(x, dtype=torch.float32), torch.arange(k).repeat_interleave(n_per)


def fitted(k: int = K, threshold: float = 0.5) -> tuple[NeuralRejection, nn.Module, torch.Tensor, torch.Tensor]:
    x, y = clusters(30, seed=0, k=k)
    model = Plane(k)
    defense = NeuralRejection(attack=None, num_classes=k, threshold=threshold)
    defense.finish_training(model, torch.utils.data.TensorDataset(x, y), batch_size=16)
    return defense, model.eval(), x, y


def test_points_far_from_every_cluster_score_lowest_and_below_one_over_k():
    """The old score (Platt probabilities renormalised over the classes) never fell below 1/K:
    the issue measured 0.882 at both far points against 0.938 in distribution. The raw
    one-vs-rest maximum falls to the largest bias, below every in-distribution test point and
    below 1/K (below 0: with a negative majority each bias is negative)."""
    defense, model, _, _ = fitted()
    inside, _ = clusters(20, seed=1)                                # fresh in-distribution test points
    predictor = defense.predictor()
    _, score_in = predictor(model, inside)
    pred_far, score_far = predictor(model, FAR)
    assert score_far.max() < score_in.min()
    assert (score_far < 1 / K).all() and (score_far < 0).all()
    biases = [float(e.intercept_[0]) for e in defense.svm.estimators_]
    assert score_far.tolist() == pytest.approx([max(biases)] * 2, abs=1e-9)     # the decision value far away
    assert (pred_far == -1).all()                                   # rejected at the operating threshold
    lo, hi = defense.score_range
    assert score_far.max() < lo                                     # ... and at every position α >= 0 of the grid
    assert (score_in > lo + 0.001 * (hi - lo)).float().mean() > 0.9  # in distribution: accepted at the grid's start


@pytest.mark.parametrize("k", [3, 2])
def test_score_is_the_maximum_one_vs_rest_decision_value_of_scikit_learn(k):
    """Computed directly with scikit-learn on the same features and labels: the score is
    max_k of ``OneVsRestClassifier(SVC(kernel="rbf")).decision_function``, the class its
    arg-max; with two classes (one binary SVM s, values -s and s) the score is |s|."""
    defense, model, x, y = fitted(k=k)
    test = torch.cat([clusters(10, seed=2, k=k)[0], FAR, torch.tensor([[1.5, 1.5], [-2.0, 1.0]])])
    pred, score = SVMRejectPredictor(defense.svm, -np.inf)(model, test)          # threshold -inf: never rejects
    feats, labels = x.double().numpy(), y.numpy()
    svm = OneVsRestClassifier(SVC(kernel="rbf", C=1.0, gamma="scale")).fit(feats, labels)

    def by_hand(points):
        values = svm.decision_function(points)
        return np.stack([-values, values], axis=1) if k == 2 else values

    values = by_hand(test.double().numpy())
    assert score.numpy() == pytest.approx(values.max(axis=1), abs=1e-9)
    assert pred.tolist() == values.argmax(axis=1).tolist()
    if k == 2:
        binary = SVC(kernel="rbf", C=1.0, gamma="scale").fit(feats, labels).decision_function(test.double().numpy())
        assert score.numpy() == pytest.approx(np.abs(binary), abs=1e-9)
    train_scores = by_hand(feats).max(axis=1)                       # the range: over the fitted samples
    assert defense.score_range == pytest.approx((train_scores.min(), train_scores.max()), abs=1e-9)


def summary_of(scores, score_range, options=None) -> dict:
    y = torch.arange(len(scores)) % 2                               # both classes present
    pred = Predictions(labels=y, preds=y.clone(), scores=torch.as_tensor(scores, dtype=torch.float64),
                       can_abstain=True, reject_rule="below", threshold=0.0, score_range=score_range)
    data = DataBundle(train=None, val=None, test=torch.utils.data.TensorDataset(torch.zeros(len(scores), 1), y),
                      num_classes=2, in_shape=(1,), bounds=(0.0, 1.0), class_names=["a", "b"],
                      test_attributes={"voice": [f"g{i % 2}" for i in range(len(scores))]})
    ctx = SummaryContext(split="test", entries={"clean": entry_result("clean", pred, 2, None)},
                         groupings=resolve_groupings({"voice": "metadata"}, data), class_names=["a", "b"],
                         num_classes=2, options=options or {})
    return FalseRejectionAUC().summarize(ctx).document


def test_the_threshold_grid_is_mapped_onto_the_score_range_by_hand():
    """Scores -1, 0, 1, 2 with range (-2, 2), α = 0.25, 0.5, 0.75, 1 -> thresholds -1, 0, 1, 2;
    rejected when score < t: FPR 0, 1/4, 2/4, 3/4 -> AUC 0.25 * (0.125 + 0.375 + 0.625) = 0.28125
    (an integral over α, as for a p-value). Without a range the same α are the thresholds."""
    doc = summary_of([-1.0, 0.0, 1.0, 2.0], (-2.0, 2.0), {"alpha_min": 0.25, "alpha_max": 1.0, "step": 0.25})
    assert doc["thresholds"] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and doc["score_range"] == [-2.0, 2.0]
    assert doc["score_thresholds"] == pytest.approx([-1.0, 0.0, 1.0, 2.0])
    assert doc["fpr"] == pytest.approx([0.0, 0.25, 0.5, 0.75]) and doc["auc_fpr"] == pytest.approx(0.28125)
    plain = summary_of([-1.0, 0.0, 1.0, 2.0], None, {"alpha_min": 0.25, "alpha_max": 1.0, "step": 0.25})
    assert plain["score_range"] is None and plain["score_thresholds"] is None
    assert plain["fpr"] == pytest.approx([0.5, 0.5, 0.5, 0.5])        # -1, 0 below every α in (0, 1]


def test_the_default_grid_covers_the_neural_rejection_score_range():
    """The paper's grid α = 0.001 ... 1 becomes score thresholds from just above the lowest
    training score to the highest, so on the training samples' scores the false rejection
    climbs from (almost) none to all but the top sample; the range comes from the training
    samples, and predict_dataset carries it to the summary."""
    defense, model, x, y = fitted()
    lo, hi = defense.score_range
    predictor = defense.predictor()
    assert predictor.threshold == pytest.approx((lo + hi) / 2)      # operating position 0.5
    train = predict_dataset(model, torch.utils.data.TensorDataset(x, y), K, device=CPU, batch_size=16,
                            predictor=predictor)
    assert train.score_range == (lo, hi)
    assert train.scores.min().item() == pytest.approx(lo) and train.scores.max().item() == pytest.approx(hi)
    doc = summary_of(train.scores.numpy(), train.score_range)
    cuts = np.array(doc["score_thresholds"])
    assert len(cuts) == 1000 and cuts[0] == pytest.approx(lo + 0.001 * (hi - lo)) and cuts[-1] == pytest.approx(hi)
    assert np.array_equal(cuts, thresholds_on_range(doc["thresholds"], (lo, hi)))
    assert doc["fpr"][0] <= 1 / len(x) and doc["fpr"][-1] == pytest.approx(1 - 1 / len(x))
    assert (np.diff(doc["fpr"]) >= 0).all() and 0 < doc["auc_fpr"] < 0.999
    far = summary_of(np.concatenate([train.scores.numpy(), predictor(model, FAR)[1].numpy()]), (lo, hi))
    assert sum(g["n"] for g in far["attributes"]["voice"]["groups"].values()) == len(x) + 2
    assert far["fpr"][0] == pytest.approx((2 + len(x) * doc["fpr"][0]) / (len(x) + 2))   # far: rejected everywhere
