"""AutoAttack (Croce & Hein, ICML 2020, §4), standard and "rand" versions, on ART's APGD and Square."""
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distfair.attacks._art import ART_NORMS, EOT, NORMS, is_randomized, run_art
from distfair.attacks._base import Attack, _check_int
from distfair.attacks.ensemble import StagedAttack, sequential
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
        version: "standard", "rand", or "auto" (default): "rand" when
            ``_art.is_randomized(model, x)`` (a ``model.randomized`` attribute, else two
            eval-mode passes differ), "standard" otherwise; see ``resolve_version``.
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

    def resolve_version(self, model: nn.Module, x: Tensor) -> str:
        """The version run on (model, x): ``version``, or for "auto" "rand"/"standard"."""
        if self.version != "auto":
            return self.version
        return "rand" if is_randomized(model, x) else "standard"

    def black_box_stages(self) -> set[str]:
        return {"square"}

    def _stages(self, model, x, y, target):
        version = self.resolve_version(model, x)
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


class _APGD(Attack):
    """One run of ART's APGD (Croce & Hein 2020, §3): η(0) = 2ε, one random start, no restarts."""

    name = "_apgd"

    def __init__(self, *, eps: float, bounds: tuple[float, float], norm: str, loss: str, n_iter: int,
                 eot_iter: int = 1):
        super().__init__(eps=eps, bounds=bounds)
        self.norm, self.loss, self.n_iter, self.eot_iter = norm, loss, n_iter, eot_iter

    def _perturb(self, model, x, y, target, generator):
        from art.attacks.evasion.auto_projected_gradient_descent import AutoProjectedGradientDescent

        def make(classifier):
            return AutoProjectedGradientDescent(
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
