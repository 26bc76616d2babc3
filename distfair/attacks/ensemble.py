"""Per-sample attack ensembles: each attack runs only on the samples every earlier one failed on.

This is the worst-case evaluation of AutoAttack (Croce & Hein, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", ICML 2020, §4):
a sample counts as robust only if it survives every member, and the members run one after
the other on the still-robust samples, so later (costlier) members see fewer points.
"""
import abc

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distfair.attacks._base import Attack


def sequential(model: nn.Module, x: Tensor, y: Tensor, members: list[tuple[str, Attack]], *,
               target: Tensor | None, generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
    """Run ``members`` one after the other, each on the samples still robust; the shared logic.

    Robust means: untargeted (``target`` None) — predicted as y; targeted — not predicted as
    the target. At the start this is judged on the clean x, so misclassified clean points
    (untargeted) are non-robust from the start and never attacked. Each member is called
    through its own ``Attack.__call__`` on the robust subset, with ``target`` restricted to
    it (a member's own ``target_mode`` only matters when ``target`` is None). The model is
    used in its current mode: ``Attack.__call__`` of the caller has put it in eval mode.

    Args:
        model: returns logits (B, K).
        x, y, target: clean inputs (B, ...), labels (B,), optional targets (B,).
        members: (label, attack) pairs in running order; labels must be distinct.
        generator: passed to every member call, in order.

    Returns:
        (x_adv, stages). x_adv per sample: the output of the first member that broke it; for
        a sample never broken, the member output with the highest objective (CE of y, or
        −CE of the target; the earliest on ties); x itself for samples never attacked.
        ``stages`` maps each label, in order, to a bool tensor (B,) of the samples still
        robust after that member (cumulative: the last entry is the final per-sample flag).
    """
    labels = [label for label, _ in members]
    if len(set(labels)) != len(labels):
        raise ValueError(f"members must have distinct labels, got {labels}")
    with torch.no_grad():
        robust = _still_robust(model(x), y, target)
    x_adv = x.detach().clone()
    best = torch.full(y.shape, float("-inf"), device=y.device)
    stages: dict[str, Tensor] = {}
    for label, attack in members:
        idx = robust.nonzero().squeeze(1)
        if idx.numel() > 0:
            sub_target = None if target is None else target[idx]
            out = attack(model, x[idx], y[idx], target=sub_target, generator=generator)
            with torch.no_grad():
                logits = model(out)
                ok = _still_robust(logits, y[idx], sub_target)
                if sub_target is None:
                    objective = F.cross_entropy(logits, y[idx], reduction="none")
                else:
                    objective = -F.cross_entropy(logits, sub_target, reduction="none")
            objective = objective.to(device=best.device, dtype=best.dtype)
            better = ~ok | (objective > best[idx])  # broken, or a better failed try
            x_adv[idx[better]] = out[better].to(x_adv.dtype)
            best[idx[better & ok]] = objective[better & ok]
            robust = robust.clone()
            robust[idx[~ok]] = False
        stages[label] = robust.clone()
    return x_adv, stages


def _still_robust(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    pred = logits.argmax(dim=1).to(y.device)
    return pred == y if target is None else pred != target


class StagedAttack(Attack):
    """An attack made of stages run by ``sequential``; adds ``run_stages`` to the contract.

    Subclasses implement ``_stages(model, x, y, target) -> list[(label, Attack)]`` (called
    in eval mode, per call) and ``black_box_stages()``.
    """

    def run_stages(self, model: nn.Module, x: Tensor, y: Tensor, *, target: Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(x_adv, stages) as in ``sequential``, with ``Attack.__call__``'s bookkeeping.

        x_adv equals what ``attack(model, x, y, ...)`` returns; ``stages`` maps each stage
        label to the bool tensor (B,) of samples still robust after it (cumulative). With
        eps = 0 every stage returns x, so the flags are the clean ones.
        """
        runner = _StageRunner(self)
        x_adv = runner(model, x, y, target=target, generator=generator)
        return x_adv, runner.stages

    @abc.abstractmethod
    def black_box_stages(self) -> set[str]:
        """Labels of the stages (keys of ``run_stages``' dict) that only query outputs."""

    @abc.abstractmethod
    def _stages(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None) -> list[tuple[str, Attack]]:
        """The (label, attack) pairs to run, in order."""

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        return sequential(model, x, y, self._stages(model, x, y, target), target=target, generator=generator)

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
                 generator: torch.Generator | None) -> Tensor:
        return self._run(model, x, y, target, generator)[0]


class _StageRunner(Attack):
    """Runs a StagedAttack's ``_run`` under ``Attack.__call__`` and keeps its stages."""

    name = "_stage_runner"

    def __init__(self, owner: StagedAttack):
        # eps only gates Attack.__call__'s eps == 0 shortcut here: the budget lives in the
        # stages, which return x themselves when eps == 0, so the flags are still computed.
        super().__init__(eps=owner.eps or 1.0, bounds=owner.bounds, target_mode=owner.target_mode)
        self.owner = owner
        self.stages: dict[str, Tensor] = {}

    def _perturb(self, model, x, y, target, generator):
        x_adv, self.stages = self.owner._run(model, x, y, target, generator)
        return x_adv


class Ensemble(StagedAttack):
    """Per-sample worst case over registered attacks, run in sequence on still-robust points.

    Method: the per-sample ensemble of AutoAttack (Croce & Hein, ICML 2020, §4) over any
    registered attacks: a sample is robust only if no member breaks it; each member runs only
    on the samples all earlier members failed on (see ``sequential``).
    Threat model: that of the members (each built with this ensemble's eps and bounds).

    Args (keyword-only):
        eps: budget passed to every member (no default).
        bounds: valid input range (low, high); default (0.0, 1.0).
        target_mode: "none" (default) or "random"; with "random" the target is drawn once
            here and every member attacks that same target.
        members: comma-separated registered attack names, in running order; default
            "pgd,cw_linf". Each is built with this eps, bounds and target_mode and its own
            defaults. Repeats are allowed (a second random start); their stage labels get
            "#2", "#3" suffixes ("pgd", "pgd#2").

    ``run_stages`` returns the per-member cumulative robust flags; ``black_box_stages()``
    the labels of black-box members. The instance's ``black_box`` is True only if every
    member is black-box; its ``norm`` is the members' common one, "mixed" if they differ.

    Example:
        >>> attack = Ensemble(eps=8 / 255, members="pgd,cw_linf,square")
        >>> x_adv, stages = attack.run_stages(model, x, y, generator=torch.Generator().manual_seed(0))
        >>> robust = stages[list(stages)[-1]]
    """

    name = "ensemble"

    def __init__(self, *, eps: float, bounds: tuple[float, float] = (0.0, 1.0), target_mode: str = "none",
                 members: str = "pgd,cw_linf"):
        super().__init__(eps=eps, bounds=bounds, target_mode=target_mode)
        from distfair.attacks import ATTACKS  # the registry imports this module

        names = [n.strip() for n in members.split(",")] if isinstance(members, str) else []
        if not names or not all(names):
            raise ValueError(f"members must be a non-empty comma-separated list of attack names, got {members!r}")
        unknown = sorted(set(names) - set(ATTACKS))
        if unknown:
            raise ValueError(f"members has unknown attack(s) {unknown}; known: {', '.join(sorted(ATTACKS))}")
        self.members: list[tuple[str, Attack]] = []
        for name in names:
            count = sum(n == name for n in names[:len(self.members) + 1])
            label = name if count == 1 else f"{name}#{count}"
            self.members.append((label, ATTACKS[name](eps=self.eps, bounds=self.bounds, target_mode=target_mode)))
        self.black_box = all(attack.black_box for _, attack in self.members)
        norms = {attack.norm for _, attack in self.members}
        self.norm = norms.pop() if len(norms) == 1 else "mixed"

    def black_box_stages(self) -> set[str]:
        return {label for label, attack in self.members if attack.black_box}

    def _stages(self, model, x, y, target):
        return self.members
