"""AutoAttack (Croce & Hein, ICML 2020, §4), standard and "rand" versions, on ART's APGD and Square."""
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distfair.attacks._art import ART_NORMS, EOT, NORMS, declares_randomized, run_art
from distfair.attacks._base import Attack, StagedAttack, _check_int, sequential
from distfair.attacks.square import Square

VERSIONS = ("standard", "rand", "auto")
CE, DLR = "cross_entropy", "difference_logits_ratio"


class AutoAttack(StagedAttack):
    """AutoAttack: a per-sample ensemble of parameter-free attacks, robust = survives them all.

    Paper: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", ICML 2020: APGD §3 (step size η(0) = 2ε, halved at
    checkpoints; the DLR loss §3.3), the ensemble §4. Stages run one after the other on the
    still-robust samples (``ensemble.sequential``):

    * "standard": "apgd_ce" (APGD on the cross-entropy, no restarts) → "apgd_t" (APGD on a
      targeted DLR loss against each of the top ``n_target_classes`` wrong classes of the
      clean logits in turn, each run on the points still robust) → "square" (Square Attack,
      ``n_queries`` queries, p_init 0.8, 1 restart; black-box).
    * "rand" (randomised defenses): "apgd_ce" and "apgd_dlr" (untargeted DLR), both on the
      logits averaged over ``eot_iter`` forward passes (EOT, ``_art.EOT``), no restarts.

    FAB is missing. The standard AutoAttack runs FAB-T between APGD-T and Square. ART has no
    FAB; its own AutoAttack runs DeepFool in that slot, a minimal-perturbation attack that is
    not ε-bounded (its outputs are only clipped afterwards). We run nothing in its place, so
    this is standard AutoAttack without FAB-T: dropping an ensemble member can only leave
    more points robust, so robust accuracy here is an upper bound on the paper's. The
    targeted margin attack in the paper's role is APGD-T; Square is the gradient-free check.
    The "rand" version is the paper's (it has no FAB).

    Targeted DLR: ART's is its DLR evaluated at the target and minimised,
    −(z_t − max_{j≠t} z_j)/(z_π1 − z_π3), not the paper's −(z_y − z_t)/(z_π1 − (z_π3+z_π4)/2);
    both are shift- and scale-invariant margins that push z_t above the other logits, and
    ART's needs only K >= 3 classes. DLR needs K >= 3: for K = 2 APGD-T/APGD-DLR use the
    cross-entropy instead, with a UserWarning once per instance.
    With a target (``target`` given or ``target_mode="random"``) every stage attacks that
    target: APGD-CE and APGD-DLR targeted, APGD-T one run against the given target, Square
    on the target's cross-entropy; robust then means "not predicted as the target".
    Threat model: ℓ∞ or ℓ2 ball of radius ``eps`` around x, clamped to ``bounds``; white-box
    except the "square" stage. ``black_box_stages()`` returns {"square"}: the labels of
    ``run_stages``' dict that only query the outputs.

    Args (keyword-only):
        eps: budget (required: never ART's default 0.3); every ART component gets exactly it.
        bounds: valid input range (low, high); default (0.0, 1.0).
        target_mode: "none" (default) or "random".
        norm: "linf" (default) or "l2".
        version: "standard", "rand", or "auto" (default): "rand" when the model declares
            itself randomised (``model.randomized``, ``_art.declares_randomized``),
            "standard" otherwise; see ``resolve_version``. The decision never depends on a
            batch: comparing two eval-mode passes bitwise (as before) let nondeterministic GPU
            kernels flip a deterministic model to "rand" on some batches or ranks. A randomised
            defense must declare itself or be evaluated with ``version="rand"``.
            ``pin_versions`` fixes it once per evaluation and reports it.
        n_iter: APGD iterations per run; default 100.
        n_target_classes: APGD-T target classes; default 9, clipped to K − 1.
        n_queries: Square queries (ART iterations); default 5000.
        eot_iter: forward passes averaged per APGD step in the "rand" version; default 20.

    Randomness comes from the call's ``generator`` (the same seed gives the same output);
    parameter gradients and the global numpy/Python/torch RNG states are left untouched.

    Example:
        >>> attack = AutoAttack(eps=8 / 255)
        >>> x_adv, stages = attack.run_stages(model, x, y, generator=torch.Generator().manual_seed(0))
        >>> robust_accuracy = stages[list(stages)[-1]].float().mean()
    """

    name = "autoattack"
    #: a tenth of the default Square queries: the contract checks (distfair.testing) in about a second
    TEST_OPTIONS = {"n_queries": 500}

    def __init__(self, *, eps: float, bounds: tuple[float, float] = (0.0, 1.0), target_mode: str = "none",
                 norm: str = "linf", version: str = "auto", n_iter: int = 100, n_target_classes: int = 9,
                 n_queries: int = 5000, eot_iter: int = 20):
        super().__init__(eps=eps, bounds=bounds, target_mode=target_mode)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
        self.norm, self.version = norm, version
        self.n_iter = _check_int("n_iter", n_iter, minimum=1)
        self.n_target_classes = _check_int("n_target_classes", n_target_classes, minimum=1)
        self.n_queries = _check_int("n_queries", n_queries, minimum=1)
        self.eot_iter = _check_int("eot_iter", eot_iter, minimum=1)
        self._warned_binary = False

    def resolve_version(self, model: nn.Module, x: Tensor | None = None) -> str:
        """The version run on ``model``: ``version``, or for "auto" "rand" if the model
        declares itself randomised, else "standard". ``x`` is not used: the version is a
        property of the model, the same on every batch and rank."""
        if self.version != "auto":
            return self.version
        return "rand" if declares_randomized(model) else "standard"

    def black_box_stages(self) -> set[str]:
        return {"square"}

    def _stages(self, model, x, y, target):
        version = self.resolve_version(model)
        with torch.no_grad():
            num_classes = model(x).shape[1]
        dlr = DLR
        if num_classes < 3:
            dlr = CE
            if not self._warned_binary:
                self._warned_binary = True
                warnings.warn(f"AutoAttack's DLR loss needs >= 3 classes, got K={num_classes}: "
                              "APGD-T/APGD-DLR use the cross-entropy instead", UserWarning, stacklevel=2)
        common = {"eps": self.eps, "bounds": self.bounds, "norm": self.norm, "n_iter": self.n_iter}
        if version == "rand":
            return [("apgd_ce", _APGD(loss=CE, eot_iter=self.eot_iter, **common)),
                    ("apgd_dlr", _APGD(loss=dlr, eot_iter=self.eot_iter, **common))]
        return [("apgd_ce", _APGD(loss=CE, **common)),
                ("apgd_t", _APGDT(_APGD(loss=dlr, **common), min(self.n_target_classes, num_classes - 1))),
                ("square", Square(eps=self.eps, bounds=self.bounds, norm=self.norm, n_queries=self.n_queries,
                                  p_init=0.8, restarts=1))]


def pin_versions(attack: Attack, model: nn.Module) -> dict[str, str]:
    """Fix the version of every AutoAttack in ``attack`` for one evaluation of ``model``.

    ``attack`` itself, or the members of an ensemble (anything with ``members`` as
    (label, attack) pairs), when they are ``AutoAttack``: each "auto" one is set to its
    resolved version (``resolve_version``), so every batch and DDP rank of the evaluation
    runs the same stages (Croce & Hein 2020, §4: "standard" or "rand"). Mutates those
    instances (build one per evaluation). Returns ``{label: version}``: "" for ``attack``
    itself, else the member label; empty when there is no AutoAttack.
    """
    found = [("", attack)] + [(label, member) for label, member in getattr(attack, "members", None) or []]
    versions = {}
    for label, candidate in found:
        if isinstance(candidate, AutoAttack):
            candidate.version = candidate.resolve_version(model)
            versions[label] = candidate.version
    return versions


class _APGD(Attack):
    """One run of ART's APGD (Croce & Hein 2020, §3): η(0) = 2ε, one random start, no restarts;
    a sample's output is an adversarial iterate whenever any iterate was one (the reference's
    ``x_best_adv``), see ``_keep_adversarial_apgd``."""

    name = "_apgd"

    def __init__(self, *, eps: float, bounds: tuple[float, float], norm: str, loss: str, n_iter: int,
                 eot_iter: int = 1):
        super().__init__(eps=eps, bounds=bounds)
        self.norm, self.loss, self.n_iter, self.eot_iter = norm, loss, n_iter, eot_iter

    def _perturb(self, model, x, y, target, generator):
        def make(classifier):
            return _keep_adversarial_apgd()(
                classifier, norm=ART_NORMS[self.norm], eps=self.eps, eps_step=2 * self.eps, max_iter=self.n_iter,
                targeted=target is not None, nb_random_init=1, batch_size=max(1, len(x)), loss_type=self.loss,
                verbose=False)

        net = model if self.eot_iter == 1 else EOT(model, self.eot_iter)
        return run_art(net, x, y if target is None else target, make, generator=generator, eps=self.eps,
                       norm=self.norm, bounds=self.bounds)


class _RankTarget(Attack):
    """``inner`` targeted at each sample's ``rank``-th most likely wrong class (clean logits)."""

    name = "_rank_target"

    def __init__(self, inner: Attack, rank: int):
        super().__init__(eps=inner.eps, bounds=inner.bounds)
        self.inner, self.rank = inner, rank

    def _perturb(self, model, x, y, target, generator):
        with torch.no_grad():
            logits = model(x)
        wrong = logits.masked_fill(F.one_hot(y.to(logits.device), logits.shape[1]).bool(), float("-inf"))
        ranked = torch.sort(wrong, dim=1, descending=True, stable=True).indices
        return self.inner(model, x, y, target=ranked[:, self.rank].to(y.device), generator=generator)


class _APGDT(Attack):
    """APGD-T (§4): ``inner`` (targeted-DLR APGD) against the top wrong classes in turn."""

    name = "_apgd_t"

    def __init__(self, inner: Attack, n_target_classes: int):
        super().__init__(eps=inner.eps, bounds=inner.bounds)
        self.inner, self.n_target_classes = inner, n_target_classes

    def _perturb(self, model, x, y, target, generator):
        if target is not None:
            return self.inner(model, x, y, target=target, generator=generator)
        members = [(f"target{rank + 1}", _RankTarget(self.inner, rank)) for rank in range(self.n_target_classes)]
        return sequential(model, x, y, members, target=None, generator=generator)[0]


_KEEP_APGD = None


def _keep_adversarial_apgd():
    """ART's ``AutoProjectedGradientDescent`` keeping any adversarial iterate (built on first use).

    Croce & Hein 2020, §3 / Alg. 1 and their reference code: APGD returns, per sample, an
    iterate that is misclassified (targeted: classified as the target) if any iterate was
    (``x_best_adv``, updated every iteration). ART 1.20 keeps a sample's perturbation only if
    its *last* iterate is adversarial, so a point crossed on the way (the loss can keep
    rising after the prediction has turned back, e.g. CE spreading mass over two wrong
    classes) counts as robust. This subclass watches every forward pass of ART's
    ``loss_gradient`` and ``compute_loss`` (the random start and every iterate, as one batch
    of the still-robust rows, in order; ``_Adapted.observer``), keeps the latest adversarial
    iterate of each row, and returns it for every row that had one. The watched rows are
    matched to the inputs by their order and checked to lie in their own ε-ball (otherwise,
    e.g. when a randomised model's robust set differed from ART's, the call falls back to
    ART's output). Needs ``nb_random_init == 1`` and ``batch_size >= len(x)`` (as ``_APGD``
    builds it) and class-index labels.
    """
    global _KEEP_APGD
    if _KEEP_APGD is None:
        from art.attacks.evasion.auto_projected_gradient_descent import AutoProjectedGradientDescent

        class KeepAdversarialAPGD(AutoProjectedGradientDescent):
            _rows = None

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                for method in ("loss_gradient", "compute_loss"):
                    setattr(self.estimator, method, self._watching(getattr(self.estimator, method)))

            def _watching(self, method):
                def call(*args, **kwargs):
                    adapted = self.estimator.model
                    adapted.observer = self._observe
                    try:
                        return method(*args, **kwargs)
                    finally:
                        adapted.observer = None
                return call

            def _observe(self, z: Tensor, logits: Tensor) -> None:
                if self._rows is None or len(z) != len(self._rows):
                    return
                z_np = z.cpu().numpy().astype(np.float32)
                delta = (z_np - self._x_r).reshape(len(z_np), -1)
                size = np.abs(delta).max(axis=1) if self.norm in (np.inf, "inf") else np.linalg.norm(delta, axis=1)
                if np.any(size > self.eps * (1 + 1e-4) + 1e-6):      # not our rows: stop watching
                    self._rows = None
                    return
                pred = logits.argmax(dim=1).cpu().numpy()
                adversarial = pred == self._labels if self.targeted else pred != self._labels
                self._best[adversarial] = z_np[adversarial]
                self._found |= adversarial

            def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
                labels = None if y is None else np.asarray(y)
                if (labels is None or labels.ndim != 1 or self.nb_random_init != 1 or self.batch_size < len(x)
                        or kwargs.get("mask") is not None):
                    return super().generate(x, y, **kwargs)
                pred = self.estimator.predict(x.astype(np.float32), batch_size=max(1, len(x))).argmax(axis=1)
                rows = np.flatnonzero(pred != labels if self.targeted else pred == labels)
                self._rows, self._labels = rows, labels[rows]
                self._x_r = x[rows].astype(np.float32)
                self._best, self._found = self._x_r.copy(), np.zeros(len(rows), dtype=bool)
                try:
                    out = np.array(super().generate(x, y, **kwargs), copy=True)
                    if self._rows is not None:
                        out[rows[self._found]] = self._best[self._found]
                    return out
                finally:
                    self._rows = self._labels = self._x_r = self._best = self._found = None

        _KEEP_APGD = KeepAdversarialAPGD
    return _KEEP_APGD
