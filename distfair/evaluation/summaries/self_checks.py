"""The evaluation self-checks (AutoAttack's sanity checks, Croce & Hein ICML 2020 §5;
methods.md "Attacks") as a summary across evaluations; the checks themselves are in
``distfair.evaluation.checks``.

Findings (robust accuracy above clean, all-zero input gradients, a black-box attack breaking
what every white-box attack failed on) go to ``self_checks.json`` (an empty list: passed) and
to the seed run's tags ``distfair.check.<id>``. Runs on the test split, with the model.
"""
from __future__ import annotations

from torch.utils.data import DataLoader

from distfair.attacks import StagedAttack
from distfair.evaluation import checks
from distfair.evaluation.summaries._base import Summary, SummaryContext, SummaryOutput


def black_box_stages(attack) -> set[str]:
    """Labels of a staged attack's black-box stages (empty for a plain attack)."""
    return set(attack.black_box_stages()) if isinstance(attack, StagedAttack) else set()


class SelfChecks(Summary):
    name = "self_checks"
    artifact = "self_checks.json"
    needs_model = True

    def summarize(self, ctx: SummaryContext) -> SummaryOutput:
        if "clean" not in ctx.entries:       # every check compares against the clean evaluation
            return SummaryOutput(document=[])
        clean = ctx.entries["clean"]
        attacked = {n: e for n, e in ctx.entries.items() if n != "clean" and e.attack is not None}
        found = checks.robust_above_clean(clean.metrics["acc"], {n: e.metrics["acc"] for n, e in attacked.items()})
        if attacked:
            x, y = next(iter(DataLoader(ctx.data.test, batch_size=ctx.batch_size, shuffle=False)))
            found += checks.zero_gradients(
                checks.zero_gradient_fraction(ctx.model, x.to(ctx.device), y.to(ctx.device)), len(y))
        white, black = [], {}
        for name, entry in attacked.items():
            pred = entry.predictions
            if entry.attack.black_box:
                black[name] = pred.correct
                continue
            bb = black_box_stages(entry.attack)
            stages = list(pred.stages.items())
            for i, (label, flags) in enumerate(stages):
                if label in bb:     # broken at this stage = robust before it, not after it
                    before = stages[i - 1][1] if i else clean.predictions.correct
                    black[f"{name}:{label}"] = ~(before & ~flags)
                else:
                    white.append(flags)
            if not bb:
                white.append(pred.correct)
        found += checks.black_box_beats_white_box(clean.predictions.correct, white, black)
        return SummaryOutput(document=found, findings=found)
