"""Neural rejection, single layer: Melis et al., "Is deep learning safe for robot vision?
Adversarial examples against the iCub humanoid" (ICCV Workshops 2017), the method the speech
paper studies (paper 003, §4.3, its reference [30]). Sotgiu et al.'s multi-layer variant ("Deep
neural rejection against adversarial examples", EURASIP J. Inf. Security 2020: SVMs on several
layers combined by a further SVM) is not implemented.

Training: the plain network, cross-entropy on clean inputs (§4.3: "the M5 model architecture
and training procedure ... without adversarial training or noise augmentation"), exactly
:class:`~distfair.defenses.standard.Standard`.

After training (:meth:`NeuralRejection.finish_training`): the penultimate representation
h_{N-1} of every training sample (the input of the network's last ``nn.Linear``, the final
fully connected layer the paper assumes) is computed with the trained model in eval mode, and
one-vs-rest RBF SVMs are fitted on those features and the training labels (scikit-learn
``OneVsRestClassifier(SVC(kernel="rbf"))``: per class k a binary SVM, class k against the
rest, with decision value s_k(x) = Σ_i α_i y_i exp(−γ‖x − x_i‖²) + b_k). Every DDP rank
computes the features of the whole training set and fits the same SVMs (same data, same
seed), so no collective is needed.

Prediction (:class:`SVMRejectPredictor`): the SVMs classify the sample's penultimate features
(the rejection model "can also perform classification", §4.3): the class k* = argmax_k s_k(x),
and the score is the raw maximum decision value max_k s_k(x) (not Platt-scaled, no
probabilities); the sample is rejected when the score is below the threshold t
(``reject_rule = "below"``), as Melis et al. do. This is the property the method rests on
(the paper's CAP argument): far from every training sample each RBF term vanishes and s_k
falls to its bias b_k (negative: in one-vs-rest the rest is the majority), so points away
from the training data get the lowest scores. (Platt-scaled probabilities renormalised over
the classes cannot: their maximum never falls below 1/K.) With two classes scikit-learn fits a
single binary SVM s; the two one-vs-rest values are then −s and s.

The raw score has no fixed scale, so thresholds are positions in the range [lo, hi] of the
scores of the training samples the SVMs were fitted on (fixed before any validation or test
sample is seen; the predictor's ``score_range``): position α is the score threshold
lo + α·(hi − lo). The operating ``threshold`` option is such a position (default 0.5), and the
``auc_fpr`` summary maps its grid, the paper's α ∈ [0.001, 1] step 0.001, onto the range the
same way (:func:`~distfair.evaluation.predict.thresholds_on_range`). Before the SVMs exist (the
per-epoch validation counts) the network's own arg-max is used.

Options: ``threshold`` (0.5, a position in [0, 1]), ``svm_c`` (C, 1.0), ``svm_gamma`` (RBF γ:
"scale", sklearn's default, or a positive number), ``max_fit_samples`` (None: all training
samples; else a seeded subset of that size, for large training sets).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from distfair.defenses.standard import Standard
from distfair.evaluation.predict import ABSTAIN, ARGMAX, Predictor, thresholds_on_range


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` (in registration order): its input is the penultimate
    representation. ValueError for a model without one."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"neural rejection needs a model whose last layer is nn.Linear (the penultimate "
                         f"representation is its input); {type(model).__name__} has none")
    return linears[-1]


@torch.no_grad()
def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, D) float: the input of the model's last ``nn.Linear`` for inputs x (one forward
    pass of the model as it is; the caller sets eval mode)."""
    captured = []
    handle = classifier_layer(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[-1].flatten(1).float()


def dataset_features(model: nn.Module, dataset, *, device: torch.device, batch_size: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (N, D) float64 and labels (N,) of a whole dataset, in order; the
    model is put in eval mode and its previous mode restored."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            feats.append(penultimate(model, x.to(device)).cpu().double().numpy())
            labels.append(y.numpy())
    finally:
        model.train(was_training)
    return np.concatenate(feats), np.concatenate(labels)


def ovr_decision(svm, feats: np.ndarray) -> np.ndarray:
    """(N, K) raw one-vs-rest decision values of the fitted ``OneVsRestClassifier`` ``svm``,
    column k for class ``svm.classes_[k]`` (two classes: one binary SVM s, columns −s, s)."""
    values = svm.decision_function(feats)
    return np.stack([-values, values], axis=1) if values.ndim == 1 else values


def rejection_scores(svm, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) predicted class labels (argmax_k s_k) and (N,) scores max_k s_k(x), float64."""
    values = ovr_decision(svm, feats)
    best = values.argmax(axis=1)
    return svm.classes_[best], values[np.arange(len(best)), best].astype(np.float64)


class SVMRejectPredictor(Predictor):
    """The one-vs-rest RBF SVMs on the penultimate features: the class of the largest decision
    value, score = that raw value, rejected below ``threshold`` (a score threshold; the
    defense maps its position option onto ``score_range``)."""
    can_abstain = True
    reject_rule = "below"

    def __init__(self, svm, threshold: float, score_range: tuple[float, float] | None = None):
        self.svm, self.threshold = svm, float(threshold)
        self.score_range = None if score_range is None else (float(score_range[0]), float(score_range[1]))

    def __call__(self, model, x):
        if len(x) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=x.device)
            return empty, empty.double()
        labels, scores = rejection_scores(self.svm, penultimate(model, x).cpu().double().numpy())
        pred = torch.as_tensor(labels, dtype=torch.long, device=x.device)
        score = torch.as_tensor(scores, dtype=torch.float64, device=x.device)
        return torch.where(score < self.threshold, torch.full_like(pred, ABSTAIN), pred), score


class NeuralRejection(Standard):
    """Standard training, then one-vs-rest RBF SVMs on the penultimate features that classify
    and reject (module docstring)."""
    name = "neural_rejection"
    needs_attack = False

    def __init__(self, *, attack=None, num_classes: int, threshold: float = 0.5, svm_c: float = 1.0,
                 svm_gamma: str | float = "scale", max_fit_samples: int | None = None):
        super().__init__(attack=attack, num_classes=num_classes)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a number in [0, 1] (a position in the training scores' range), "
                             f"got {threshold!r}")
        if isinstance(svm_c, bool) or not isinstance(svm_c, (int, float)) or not svm_c > 0:
            raise ValueError(f"svm_c must be a number > 0, got {svm_c!r}")
        if not (svm_gamma in ("scale", "auto") or (isinstance(svm_gamma, (int, float))
                                                   and not isinstance(svm_gamma, bool) and svm_gamma > 0)):
            raise ValueError(f"svm_gamma must be 'scale', 'auto' or a number > 0, got {svm_gamma!r}")
        if max_fit_samples is not None and (isinstance(max_fit_samples, bool) or not isinstance(max_fit_samples, int)
                                            or max_fit_samples < 2):
            raise ValueError(f"max_fit_samples must be an integer >= 2 or null, got {max_fit_samples!r}")
        self.threshold, self.svm_c, self.svm_gamma = float(threshold), float(svm_c), svm_gamma
        self.max_fit_samples = max_fit_samples
        self.svm = None
        #: (lo, hi): min and max of the score over the samples the SVMs were fitted on
        self.score_range: tuple[float, float] | None = None

    def _seed(self) -> int:
        if self.context is None:
            return 0
        g = self.context.generator("neural_rejection", "svm")
        return int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device))

    def finish_training(self, model, train_set, *, batch_size):
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.svm import SVC

        # every rank fits on the whole training set, on the device the model is on
        device = next(model.parameters()).device
        feats, labels = dataset_features(model, train_set, device=device, batch_size=batch_size)
        seed = self._seed()
        if self.max_fit_samples is not None and len(labels) > self.max_fit_samples:
            keep = np.sort(np.random.default_rng(seed).choice(len(labels), self.max_fit_samples, replace=False))
            feats, labels = feats[keep], labels[keep]
        _, per_class = np.unique(labels, return_counts=True)
        if len(per_class) < 2 or per_class.min() < 2:
            raise ValueError("neural rejection: the SVMs need at least 2 training samples of each of at least 2 "
                             f"classes, got {per_class.tolist()}")
        self.svm = OneVsRestClassifier(SVC(kernel="rbf", C=self.svm_c, gamma=self.svm_gamma))
        self.svm.fit(feats, labels)
        _, scores = rejection_scores(self.svm, feats)
        self.score_range = (float(scores.min()), float(scores.max()))
        support = sum(int(e.n_support_.sum()) for e in self.svm.estimators_)
        return {"svm_support_vectors": float(support), "svm_fit_samples": float(len(labels)),
                "svm_score_min": self.score_range[0], "svm_score_max": self.score_range[1]}

    def epoch_predictor(self, epoch: int):
        return ARGMAX

    def predictor(self):
        if self.svm is None:
            return ARGMAX
        cut = float(thresholds_on_range([self.threshold], self.score_range)[0])
        return SVMRejectPredictor(self.svm, cut, self.score_range)
