"""The evaluation-summary contract (``distfair/evaluation/summaries/_base.py``) as checks any
summary class can be run through: the repository's registered summaries
(``tests/test_summary_contract.py``) and a third party's alike.

Each check is ``check(cls, tmp_dir)``: ``cls`` a ``Summary`` subclass, run with its
``TEST_OPTIONS`` on a toy grid (:func:`make_context`): one small model and dataset evaluated
clean, under an FGSM budget grid (``fgsm_small``, ``fgsm_large``), toward a fixed target
(``to_a``) and toward every target (``every``), with a class-level and a per-sample attribute,
with the default predictor and with one that abstains. ``tmp_dir`` is where figures may be
drawn. A check raises ``AssertionError`` naming what broke; :data:`CHECKS` lists them all and
:func:`check_summary` runs every one. The toy grid's fixed-target entry leaves its class's row
out, which the metrics announce with a ``UserWarning`` ("... have no ..."), as designed.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from distfair.data import DataBundle
from distfair.evaluation import ABSTAIN, Predictor, build_eval_attack, entry_result, predict_dataset, resolve_groupings
from distfair.evaluation.summaries import Summary, SummaryContext, SummaryOutput

CPU = torch.device("cpu")
K = 3
#: the ``eval.attacks`` entries of the toy grid (``TEST_OPTIONS`` may name them)
ENTRIES = [{"name": "fgsm_small", "attack": "fgsm", "eps": 0.05},
           {"name": "fgsm_large", "attack": "fgsm", "eps": 0.3},
           {"name": "to_a", "attack": "fgsm", "eps": 0.2, "target": "a"},
           {"name": "every", "attack": "fgsm", "eps": 0.2, "target": "every"}]


class AbstainAboveHalf(Predictor):
    """Rejects by thresholding its score (the rejection summaries sweep the threshold)."""
    can_abstain = True
    reject_rule = "below"
    threshold = 0.5

    def __call__(self, model, x):
        logits = model(x)
        pred = logits.argmax(dim=1)
        score = logits.softmax(1).amax(1)
        return torch.where(score < self.threshold, torch.full_like(pred, ABSTAIN), pred), score


def problem() -> tuple[nn.Module, DataBundle]:
    """A three-class model on 30 samples of 4 features (mostly separable, some errors), with
    per-sample attributes ``voice`` and ``speaker`` (three speakers per voice)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 4, generator=g)
    y = torch.arange(30) % K
    x[torch.arange(30), y] += 0.4                       # mostly separable, some errors
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, K))
    torch.manual_seed(0)
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(8, 4) * 3)
        model[0].bias.zero_()
        model[2].weight.copy_(torch.eye(K, 8))
        model[2].bias.zero_()
    data = TensorDataset(x.clamp(0, 1), y)
    voice = ["v1" if i % 4 < 2 else "v2" for i in range(30)]
    speaker = [f"{v}-s{i % 3}" for i, v in enumerate(voice)]     # three speakers per voice
    bundle = DataBundle(train=data, val=data, test=data, num_classes=K, in_shape=(4,), bounds=(0.0, 1.0),
                        class_names=["a", "b", "c"], test_attributes={"voice": voice, "speaker": speaker},
                        val_attributes={"voice": voice, "speaker": speaker},
                        train_attributes={"voice": voice, "speaker": speaker})
    return model.eval(), bundle


def make_context(split: str = "test", *, abstain: bool = False, drop: str | None = None,
                 options: dict | None = None) -> SummaryContext:
    """The toy grid's evaluations on ``split`` (the model and data on the test split only);
    ``drop``: leave that evaluation out (it failed); ``abstain``: classify through
    :class:`AbstainAboveHalf`."""
    model, data = problem()
    predictor = AbstainAboveHalf() if abstain else None
    entries = {"clean": entry_result("clean", predict_dataset(model, data.test, K, device=CPU, batch_size=7,
                                                              predictor=predictor), K, None)}
    for i, spec in enumerate(ENTRIES):
        attack, target = build_eval_attack(spec, data)
        pred = predict_dataset(model, data.test, K, device=CPU, batch_size=7, attack=attack, target=target,
                               generator=torch.Generator().manual_seed(i), predictor=predictor)
        entries[spec["name"]] = entry_result(spec["name"], pred, K, target, spec=spec, attack=attack)
    entries.pop(drop, None)
    groupings = resolve_groupings({"half": {"a": "x", "b": "x", "c": "y"}, "voice": "metadata"}, data)
    with_model = split == "test"
    return SummaryContext(split=split, entries=entries, groupings=groupings, class_names=list(data.class_names),
                          num_classes=K, options=dict(options or {}), model=model if with_model else None,
                          data=data if with_model else None, device=CPU if with_model else None, batch_size=7,
                          attributes=dict(data.test_attributes))


def options_of(cls: type[Summary]) -> dict:
    return copy.deepcopy(cls.TEST_OPTIONS)


def _keys_follow_families(cls: type[Summary], metrics: dict) -> None:
    for key in metrics:
        family, *fields = key.split("/")
        assert family in cls.families, f"{cls.name}: metric {key!r}: family {family!r} not declared in families"
        assert len(fields) == len(cls.families[family]), f"{cls.name}: {key!r} does not nest what its family declares"
        assert all(fields), f"{cls.name}: {key!r} has an empty field"


def _values_are_numbers_or_none(metrics: dict) -> None:
    for key, value in metrics.items():
        assert value is None or (isinstance(value, float) and math.isfinite(value)), f"{key}: {value!r}"


# ------------------------------------------------------------------------------- the checks
def check_declarations(cls: type[Summary], tmp_dir: str | Path | None = None) -> None:
    """Its splits, model use and families are well formed; it runs with its ``TEST_OPTIONS``
    (a summary that needs options declares some)."""
    assert isinstance(cls.name, str) and cls.name
    assert set(cls.splits) <= {"val", "test"} and cls.splits, f"{cls.name}: splits {cls.splits}"
    assert not (cls.needs_model and "val" in cls.splits), f"{cls.name}: the model is only given on the test split"
    for family, fields in cls.families.items():
        assert family and "/" not in family and isinstance(fields, tuple), f"{cls.name}: family {family!r}"
    assert not cls.check_options({}, ENTRIES) or cls.TEST_OPTIONS, f"{cls.name} needs options: declare TEST_OPTIONS"


def check_unknown_option_is_named(cls: type[Summary], tmp_dir: str | Path | None = None) -> None:
    """``check_options`` names an unknown option and accepts ``TEST_OPTIONS``."""
    problems = cls.check_options({**options_of(cls), "no_such_option": 1}, ENTRIES)
    assert [key for key, _ in problems] == ["no_such_option"], problems
    assert cls.check_options(options_of(cls), ENTRIES) == []


def check_output_is_json_able_keyed_by_declared_families_and_finite_or_none(
        cls: type[Summary], tmp_dir: str | Path | None = None) -> None:
    for abstain in (False, True):
        for split in cls.splits:
            out = cls().summarize(make_context(split, abstain=abstain, options=options_of(cls)))
            assert isinstance(out, SummaryOutput)
            ctx_entries = set(make_context(split).entries)
            assert set(out.entry_metrics) <= ctx_entries
            for metrics in [out.metrics, *out.entry_metrics.values()]:
                _keys_follow_families(cls, metrics)
                _values_are_numbers_or_none(metrics)
            json.dumps(out.document, allow_nan=False)
            json.dumps(out.findings, allow_nan=False)
            for finding in out.findings:
                assert set(finding) == {"check", "message"} and finding["message"]
            if cls.artifact is None:
                assert out.document is None, f"{cls.name}: a document without an artifact"


def check_inputs_model_and_its_mode_are_untouched(cls: type[Summary], tmp_dir: str | Path | None = None) -> None:
    ctx = make_context(options=options_of(cls))
    before = copy.deepcopy([(n, dataclasses.asdict(e.predictions), e.counts.clone(), dict(e.metrics),
                             None if e.included is None else e.included.copy()) for n, e in ctx.entries.items()])
    params = [p.detach().clone() for p in ctx.model.parameters()]
    ctx.model.train()
    cls().summarize(ctx)
    assert ctx.model.training, f"{cls.name}: the model's mode was not restored"
    assert all(torch.equal(a, b) for a, b in zip(params, ctx.model.parameters()))
    assert all(p.grad is None for p in ctx.model.parameters())
    after = [(n, dataclasses.asdict(e.predictions), e.counts, e.metrics, e.included) for n, e in ctx.entries.items()]
    for (n, pred, counts, metrics, included), (_, pred2, counts2, metrics2, included2) in zip(before, after):
        assert all(torch.equal(v, pred2[k]) if isinstance(v, torch.Tensor) else v == pred2[k]
                   for k, v in pred.items() if not isinstance(v, dict)), n
        assert torch.equal(counts, counts2) and metrics == metrics2, n
        assert (included is None and included2 is None) or np.array_equal(included, included2)


def check_deterministic(cls: type[Summary], tmp_dir: str | Path | None = None) -> None:
    a = cls().summarize(make_context(options=options_of(cls)))
    b = cls().summarize(make_context(options=options_of(cls)))
    assert json.dumps(dataclasses.asdict(a), sort_keys=True) == json.dumps(dataclasses.asdict(b), sort_keys=True)


def check_figures_come_from_the_json_document_alone(cls: type[Summary], tmp_dir: str | Path) -> None:
    tmp_dir = Path(tmp_dir)
    out = cls().summarize(make_context(options=options_of(cls)))
    document = json.loads(json.dumps(out.document))           # what the artifact holds
    paths = cls().figures(document, ["a", "b", "c"], f"{cls.name} test", tmp_dir)
    for path in paths:
        assert Path(path).parent == tmp_dir and Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len({Path(p).name for p in paths}) == len(paths)
    assert cls().figures(None, ["a", "b", "c"], "none", tmp_dir / "none") == []


def check_a_failed_evaluation_is_absent_not_fatal_or_the_summary_says_why(
        cls: type[Summary], tmp_dir: str | Path | None = None) -> None:
    """With the clean pass or one grid entry missing (it failed), a summary either reports on
    what is there or raises an error whose message names what is missing."""
    for missing in ("clean", "fgsm_large"):
        ctx = make_context(drop=missing, options=options_of(cls))
        try:
            out = cls().summarize(ctx)
        except ValueError as err:
            assert missing in str(err), f"{cls.name}: {err}"
            continue
        assert missing not in out.entry_metrics


def check_view_reads_the_document(cls: type[Summary], tmp_dir: str | Path | None = None) -> None:
    """What a result exposes as ``result.<name>`` is read from the JSON document (or None)."""
    out = cls().summarize(make_context(options=options_of(cls)))
    json.dumps(cls.view(json.loads(json.dumps(out.document))), allow_nan=False)
    cls.view(None)


#: name -> check; each is ``check(cls, tmp_dir)``
CHECKS: dict[str, Callable[..., None]] = {
    check.__name__.removeprefix("check_"): check for check in (
        check_declarations, check_unknown_option_is_named,
        check_output_is_json_able_keyed_by_declared_families_and_finite_or_none,
        check_inputs_model_and_its_mode_are_untouched, check_deterministic,
        check_figures_come_from_the_json_document_alone,
        check_a_failed_evaluation_is_absent_not_fatal_or_the_summary_says_why, check_view_reads_the_document)
}


def check_summary(cls: type[Summary], tmp_dir: str | Path) -> None:
    """Every contract check on ``cls`` (:data:`CHECKS`)."""
    for check in CHECKS.values():
        check(cls, tmp_dir)
