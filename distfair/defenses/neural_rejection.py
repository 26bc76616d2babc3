"""Neural rejection (Sotgiu et al., "Deep neural rejection against adversarial examples", EURASIP
J. Inf. Security 2020), as the speech paper studies it (paper 003, §4.3).

Training: the plain network, cross-entropy on clean inputs (§4.3: "the M5 model architecture
and training procedure ... without adversarial training or noise augmentation"), exactly
:class:`~distfair.defenses.standard.Standard`.

After training (:meth:`NeuralRejection.finish_training`): the penultimate representation
h_{N-1} of every training sample (the input of the network's last ``nn.Linear``, the final
fully connected layer the paper assumes) is computed with the trained model in eval mode, and
an RBF-kernel SVM (scikit-learn ``SVC(kernel="rbf")``) is fitted on those features and the
training labels, its scores turned into class probabilities by Platt scaling
(``CalibratedClassifierCV(method="sigmoid", ensemble=False)``: the sigmoids fitted on 5-fold
cross-validated decision values, fewer folds when a class has fewer samples, the SVM itself
on all samples; scikit-learn 1.9 deprecates ``SVC(probability=True)`` for exactly this). Every DDP rank computes the features of the whole training
set and fits the same SVM (same data, same seed), so no collective is needed.

Prediction (:class:`SVMRejectPredictor`): the SVM classifies the sample's penultimate features
(the rejection model "can also perform classification", §4.3): the class of highest SVM
probability, with that probability as the score; the sample is rejected when the score is
below the threshold t (``reject_rule = "below"``; the paper's CAP argument: the RBF SVM's
support decays away from the training distribution). The operating ``threshold`` is an
option (default 0.5); the ``auc_fpr`` summary sweeps t over [0.001, 1] (step 0.001, the
paper's grid) on the stored scores. Before the SVM exists (the per-epoch validation counts)
the network's own arg-max is used.

Options: ``threshold`` (0.5), ``svm_c`` (C, 1.0), ``svm_gamma`` (RBF γ: "scale", sklearn's
default, or a positive number), ``max_fit_samples`` (None: all training samples; else a
seeded subset of that size, for large training sets).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from distfair.defenses.standard import Standard
from distfair.evaluation.predict import ABSTAIN, ARGMAX, Predictor

#: cross-validation folds of the Platt scaling (fewer when a class has fewer training samples)
CALIBRATION_FOLDS = 5


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


class SVMRejectPredictor(Predictor):
    """The RBF SVM on the penultimate features: its most probable class, score = that
    probability, rejected below ``threshold``."""
    can_abstain = True
    reject_rule = "below"

    def __init__(self, svm, threshold: float):
        self.svm, self.threshold = svm, threshold

    def __call__(self, model, x):
        if len(x) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=x.device)
            return empty, empty.double()
        proba = self.svm.predict_proba(penultimate(model, x).cpu().double().numpy())
        best = proba.argmax(axis=1)
        pred = torch.as_tensor(self.svm.classes_[best], dtype=torch.long, device=x.device)
        score = torch.as_tensor(proba[np.arange(len(best)), best], dtype=torch.float64, device=x.device)
        return torch.where(score < self.threshold, torch.full_like(pred, ABSTAIN), pred), score


class NeuralRejection(Standard):
    """Standard training, then an RBF SVM on the penultimate features that classifies and
    rejects (module docstring)."""
    name = "neural_rejection"
    needs_attack = False

    def __init__(self, *, attack=None, num_classes: int, threshold: float = 0.5, svm_c: float = 1.0,
                 svm_gamma: str | float = "scale", max_fit_samples: int | None = None):
        super().__init__(attack=attack, num_classes=num_classes)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a number in [0, 1] (an SVM probability), got {threshold!r}")
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

    def _seed(self) -> int:
        if self.context is None:
            return 0
        g = self.context.generator("neural_rejection", "svm")
        return int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device))

    def finish_training(self, model, train_set, *, batch_size):
        from sklearn.calibration import CalibratedClassifierCV
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
            raise ValueError("neural rejection: the SVM needs at least 2 training samples of each of at least 2 "
                             f"classes, got {per_class.tolist()}")
        folds = int(min(CALIBRATION_FOLDS, per_class.min()))
        self.svm = CalibratedClassifierCV(SVC(kernel="rbf", C=self.svm_c, gamma=self.svm_gamma), method="sigmoid",
                                          cv=folds, ensemble=False)
        self.svm.fit(feats, labels)
        support = self.svm.calibrated_classifiers_[0].estimator.n_support_.sum()
        return {"svm_support_vectors": float(support), "svm_fit_samples": float(len(labels)),
                "svm_calibration_folds": float(folds)}

    def epoch_predictor(self, epoch: int):
        return ARGMAX

    def predictor(self):
        if self.svm is None:
            return ARGMAX
        return SVMRejectPredictor(self.svm, self.threshold)
