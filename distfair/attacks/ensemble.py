"""Per-sample attack ensembles: each attack runs only on the samples every earlier one failed on.

This is the worst-case evaluation of AutoAttack (Croce & Hein, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", ICML 2020, §4):
a sample counts as robust only if it survives every member, and the members run one after
the other on the still-robust samples, so later (costlier) members see fewer points.
"""
from distfair.attacks._base import Attack, StagedAttack, sequential

__all__ = ["Ensemble", "StagedAttack", "sequential"]


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
