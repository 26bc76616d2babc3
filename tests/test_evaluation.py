"""Per-sample evaluation, targeted modes, subgroup reports and self-checks, against hand
values and against loops written out in the test."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from distfair.attacks import FGSM, PGD
from distfair.data import build_dataset
from distfair.evaluation import checks, metric_safe, predict_dataset, resolve_groupings, subgroup_report

CPU = torch.device("cpu")


def linear_problem(n=60, k=3, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(dim, k)
    with torch.no_grad():
        model.weight.copy_(torch.randn(k, dim, generator=g))
        model.bias.zero_()
    x = torch.rand(n, dim, generator=g)
    y = model(x).argmax(1).detach()          # clean accuracy 1 by construction
    y[:5] = (y[:5] + 1) % k                  # ... except five samples
    return model.eval(), TensorDataset(x, y)


def test_clean_predictions_are_the_argmax_in_dataset_order():
    model, data = linear_problem()
    out = predict_dataset(model, data, 3, device=CPU, batch_size=7)
    x, y = data.tensors
    assert torch.equal(out.labels, y)
    assert torch.equal(out.preds, model(x).argmax(1))
    assert out.correct.sum().item() == len(y) - 5
    assert torch.equal(out.counts(3).sum(1), torch.bincount(y, minlength=3))


def test_every_target_is_the_per_sample_and_over_targets_and_counts_successes():
    model, data = linear_problem()
    x, y = data.tensors
    attack = FGSM(eps=0.15)
    out = predict_dataset(model, data, 3, device=CPU, batch_size=8, attack=attack, target="every")
    robust = torch.ones_like(y, dtype=torch.bool)
    success = torch.zeros(3, 3, dtype=torch.long)
    for shift in (1, 2):
        t = (y + shift) % 3
        pred = model(attack(model, x, y, target=t)).argmax(1)
        robust &= pred == y
        for i, j in zip(y[pred == t].tolist(), t[pred == t].tolist()):
            success[i, j] += 1
    assert torch.equal(out.correct, robust)
    assert torch.equal(out.target_success, success)
    assert 0 < robust.sum() < len(y)            # the check is not vacuous
    assert out.target_success.diagonal().sum() == 0


def test_fixed_target_leaves_the_target_class_clean():
    model, data = linear_problem()
    x, y = data.tensors
    attack = FGSM(eps=0.3)
    out = predict_dataset(model, data, 3, device=CPU, batch_size=9, attack=attack, target=1)
    clean = model(x).argmax(1)
    own = y == 1
    assert torch.equal(out.preds[own], clean[own])
    expect = model(attack(model, x[~own], y[~own], target=torch.ones_like(y[~own]))).argmax(1)
    assert torch.equal(out.preds[~own], expect)


def _sharded_worker(rank, world, store_path, out_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        model, data = linear_problem(n=23)
        out = predict_dataset(model, data, 3, device=CPU, batch_size=4, attack=FGSM(eps=0.2), target="every",
                              rank=rank, world=world)
        if rank == 0:
            torch.save(dataclasses.asdict(out), out_path)
    finally:
        dist.destroy_process_group()


def test_sharded_over_two_ranks_equals_one_process(tmp_path):
    """Each rank evaluates its shard; the all-reduce merge equals a single-process run."""
    import torch.multiprocessing as mp

    mp.spawn(_sharded_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "out.pt")), nprocs=2)
    merged = torch.load(tmp_path / "out.pt")
    model, data = linear_problem(n=23)
    single = predict_dataset(model, data, 3, device=CPU, batch_size=4, attack=FGSM(eps=0.2), target="every")
    assert torch.equal(merged["labels"], single.labels) and torch.equal(merged["preds"], single.preds)
    assert torch.equal(merged["target_success"], single.target_success)


def test_bad_target_is_rejected():
    model, data = linear_problem()
    with pytest.raises(ValueError, match="target must be"):
        predict_dataset(model, data, 3, device=CPU, batch_size=8, attack=PGD(eps=0.1), target="random")


# ------------------------------------------------------------------------------- subgroups
COUNTS = np.array([[8, 2, 0, 0],    # class 0: 10 samples
                   [1, 9, 0, 0],    # class 1
                   [0, 4, 6, 0],    # class 2: 4 of 10 confused into group A
                   [0, 0, 2, 8]])   # class 3


def bundle(class_attributes=None, test_attributes=None, test_n=8):
    data = build_dataset("synthetic", num_samples=4 * 40, num_classes=4, dim=3, test_fraction=0.05)
    assert len(data.test) == test_n
    return dataclasses.replace(data, class_names=["a0", "a1", "b0", "b1"],
                               class_attributes=class_attributes or {}, test_attributes=test_attributes or {})


def test_class_level_subgroups_hand_values():
    data = bundle()
    [grouping] = resolve_groupings({"team": {"a0": "A", "a1": "A", 2: "B", "b1": "B"}}, data)
    assert grouping.kind == "class" and grouping.names == ["A", "B"]
    metrics, report = subgroup_report([grouping], COUNTS, None, data.class_names)
    # R = counts / 10. Group accs (class-balanced): A (0.8 + 0.9) / 2 = 0.85, B (0.6 + 0.8) / 2 = 0.7.
    assert metrics["group_acc/team/A"] == pytest.approx(0.85)
    assert metrics["group_acc/team/B"] == pytest.approx(0.7)
    assert metrics["group_gap/team"] == pytest.approx(0.15)
    # C_AB = (R02 + R03 + R12 + R13) / 4 = 0; C_BA = (R20 + R21 + R30 + R31) / 4 = 0.4 / 4 = 0.1
    assert metrics["max_group_asym/team"] == pytest.approx(0.1)
    attr = report["attributes"]["team"]
    assert attr["matrix"][1][0] == pytest.approx(0.1) and attr["matrix"][0][1] == pytest.approx(0.0)
    assert attr["classes"] == {"A": ["a0", "a1"], "B": ["b0", "b1"]}
    # Bipartition audit: net outflows r_i = 1 - colsum_i(R) = [0.1, -0.5, 0.2, 0.2]. Sorted
    # decreasing (b0, b1, a0, a1), prefix sums 0.2, 0.4, 0.5 over |A||B| = 3, 4, 3: the best is
    # A = {a0, b0, b1}, B = {a1}: C_AB = (R01 + R21 + R31) / 3 = 0.6 / 3, C_BA = (R10 + R12 + R13) / 3
    # = 0.1 / 3, difference 0.5 / 3; ahead of {b0, b1} vs {a0, a1} (0.4 / 4 = 0.1).
    assert metrics["max_bipartition_asym"] == pytest.approx(0.5 / 3)
    assert report["max_bipartition_asym"]["partition_names"] == [["a0", "b0", "b1"], ["a1"]]


def test_per_sample_subgroups_hand_values():
    data = bundle(test_attributes={"speaker": ["f", "m", "f", "m", "f", "m", "f", "m"]})
    [grouping] = resolve_groupings({"speaker": "metadata"}, data)
    assert grouping.kind == "sample"
    correct = np.array([1, 1, 0, 1, 1, 1, 0, 0], dtype=bool)   # f: 2/4, m: 3/4
    metrics, report = subgroup_report([grouping], COUNTS, correct, data.class_names)
    assert metrics["group_acc/speaker/f"] == pytest.approx(0.5)
    assert metrics["group_acc/speaker/m"] == pytest.approx(0.75)
    assert metrics["group_gap/speaker"] == pytest.approx(0.25)
    assert "max_group_asym/speaker" not in metrics          # no C-hat for sample partitions
    assert report["attributes"]["speaker"]["kind"] == "sample"


def test_class_metadata_wins_and_unknown_attribute_is_named():
    data = bundle(class_attributes={"gender": ["F", "M", "F", "M"]})
    [grouping] = resolve_groupings({"gender": "metadata"}, data)
    assert grouping.kind == "class" and grouping.labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match=r"eval.subgroups.age: the dataset has no attribute 'age'; it has: gender"):
        resolve_groupings({"age": "metadata"}, data)


@pytest.mark.parametrize("mapping, message", [
    ({"a0": "A", "a1": "A", "b0": "B"}, "classes without a group: b1"),
    ({"a0": "A", 0: "B", "a1": "A", "b0": "B", "b1": "B"}, "mapped twice"),
    ({"zz": "A"}, r"eval.subgroups.team.zz: not a class"),
    ({"a0": "A", "a1": "A", "b0": "A", "b1": "A"}, "at least 2 groups"),
    ({"a0": "x|y", "a1": "x_y", "b0": "B", "b1": "B"}, "collide"),
])
def test_class_map_errors(mapping, message):
    with pytest.raises(ValueError, match=message):
        resolve_groupings({"team": mapping}, bundle())


def test_metric_safe_names():
    assert metric_safe("non-binary / other") == "non-binary _ other"
    assert metric_safe("F") == "F" and metric_safe("") == "_"


# ---------------------------------------------------------------------------------- checks
def test_robust_above_clean():
    found = checks.robust_above_clean(0.8, {"pgd": 0.5, "broken": 0.81, "same": 0.8})
    assert [f["check"] for f in found] == ["robust_above_clean.broken"]


def test_zero_gradient_fraction():
    model, data = linear_problem()
    x, y = data.tensors
    assert checks.zero_gradient_fraction(model.train(), x, y) == 0.0
    assert model.training                      # mode restored
    dead = nn.Sequential(nn.Linear(5, 3), nn.ReLU())
    with torch.no_grad():
        dead[0].weight.zero_()
        dead[0].bias.fill_(-1.0)                # ReLU(-1) = 0 everywhere: no gradient reaches x
    assert checks.zero_gradient_fraction(dead, x, y) == 1.0
    assert all(p.grad is None for p in dead.parameters())
    assert checks.zero_gradients(0.0, 10) == [] and len(checks.zero_gradients(0.5, 10)) == 1


def test_black_box_beats_white_box_counts_exact_samples():
    t, f = True, False
    clean = torch.tensor([t, t, t, t, f])
    white = [torch.tensor([t, t, f, t, f]), torch.tensor([t, t, t, f, f])]
    black = {"square": torch.tensor([f, t, f, f, f])}   # broke 0 (white-robust), 2 and 3 (white broke them)
    [finding] = checks.black_box_beats_white_box(clean, white, black)
    assert finding["check"] == "black_box_beats_white_box.square" and "broke 1 sample" in finding["message"]
    assert checks.black_box_beats_white_box(clean, white, {"square": torch.tensor([t, t, f, f, f])}) == []


# ------------------------------------------------------- issue 9: targets, empty groups, DDP
def test_fixed_target_row_is_absent_from_the_per_class_statistics():
    """Issue 9 point 5: with ``target: 2`` the class-2 samples are not attacked; their (clean)
    row must not feed worst-class, gap, NSD, symmetry or target shares."""
    from distfair.evaluation import Grouping, Predictions, evaluation_metrics

    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    preds = torch.tensor([0, 0, 2, 2, 1, 1, 1, 2, 2, 0])   # class 2: clean, one sample wrong
    speaker = Grouping("speaker", "sample", np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1]), ["f", "m"])
    with pytest.warns(UserWarning) as caught:
        one = evaluation_metrics(Predictions(labels, preds), 3, [speaker], ["a", "b", "c"], target=2)
    messages = [str(w.message) for w in caught]
    assert any("classes [2] have no samples" in m for m in messages)          # the usual absent-class warning
    assert any("groups ['m']" in m for m in messages)                         # only class-2 samples: absent
    m = one.metrics
    # R over the attacked classes: class 0 [.5, 0, .5], class 1 [0, .75, .25]; class 2 left out.
    assert one.per_class_acc == [0.5, 0.75, None]
    assert m["worst_class_acc"] == 0.5 and m["acc_gap"] == pytest.approx(0.25)
    assert m["nsd"] == pytest.approx(0.125 / 0.625)                           # std(.5, .75) / mean
    assert m["max_asym_gap"] == 0.0 and m["sym_loss"] == 0.0                  # only the pair (0, 1): R01 = R10 = 0
    # target shares: all off-diagonal mass (.5 + .25) goes to column 2 -> T = (0, 0, 1)
    assert (m["tgt_max"], m["tgt_min"]) == (1.0, 0.0)
    assert m["tgt_std"] == pytest.approx(np.std([0.0, 0.0, 1.0]))
    assert m["acc"] == pytest.approx(0.6)                 # all samples (= the mean of the flags), 6 of 10
    assert m["target_success_rate"] == pytest.approx(3 / 8)
    assert one.counts.tolist() == [[2, 0, 2], [0, 3, 1], [0, 0, 0]]
    assert m["group_acc/speaker/f"] == pytest.approx(5 / 8) and m["group_acc/speaker/m"] is None
    assert m["group_gap/speaker"] is None


def test_class_group_without_samples_is_reported_absent_not_raised():
    """Issue 9 point 6: a group whose classes have no test sample used to raise
    ``ValueError: groups [1] have no class with samples`` after training."""
    counts = np.array([[8, 2, 0, 0, 0],
                       [1, 9, 0, 0, 0],
                       [0, 0, 0, 0, 0],      # group B = classes 2, 3: no samples
                       [0, 0, 0, 0, 0],
                       [0, 3, 0, 0, 7]])     # group C = class 4
    names = ["a0", "a1", "b0", "b1", "c0"]
    grouping = resolve_groupings({"team": {"a0": "A", "a1": "A", "b0": "B", "b1": "B", "c0": "C"}},
                                 dataclasses.replace(bundle(), num_classes=5, class_names=names))[0]
    with pytest.warns(UserWarning) as caught:
        metrics, report = subgroup_report([grouping], counts, None, names)
    assert any("groups ['B'] have no class with samples" in str(w.message) for w in caught)
    assert metrics["group_acc/team/B"] is None
    assert metrics["group_acc/team/A"] == pytest.approx(0.85)      # (.8 + .9) / 2
    assert metrics["group_acc/team/C"] == pytest.approx(0.7)
    assert metrics["group_gap/team"] == pytest.approx(0.15)
    # C_AC = (R04 + R14) / 2 = 0, C_CA = (R40 + R41) / 2 = .15
    assert metrics["max_group_asym/team"] == pytest.approx(0.15)
    attr = report["attributes"]["team"]
    assert attr["group_asym"] == pytest.approx({"A|C": 0.15})
    assert attr["matrix"][1] == [None, None, None] and attr["matrix"][0][1] is None
    # only one group with samples: nothing to compare, no metric (and no exception)
    with pytest.warns(UserWarning):
        only, _ = subgroup_report([grouping], np.pad(counts[:2, :2], ((0, 3), (0, 3))), None, names)
    assert only["group_gap/team"] is None and only["max_group_asym/team"] is None


class _Stamped(torch.utils.data.Dataset):
    """x = [index, ...] so an attack can tell the samples apart."""

    def __init__(self, n, dim=5, seed=0):
        model, data = linear_problem(n=max(n, 6), dim=dim, seed=seed)
        self.x, self.y = data.tensors[0][:n], data.tensors[1][:n]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class _FailsOnSample(FGSM):
    """FGSM that raises on one given input row: only the rank whose shard holds it fails."""

    def __init__(self, row):
        super().__init__(eps=0.1)
        self.row = row

    def _perturb(self, model, x, y, target, generator):
        if any(torch.equal(r, self.row) for r in x):
            raise RuntimeError("attack broke on this sample")
        return super()._perturb(model, x, y, target, generator)


def _few_samples_worker(rank, world, store_path, out_path):
    import datetime

    import torch.distributed as dist

    from distfair.attacks import Ensemble
    from distfair.evaluation import EvaluationError

    # a collective mismatch raises after 30 s instead of hanging (the test's own deadline is a backstop)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    try:
        model, _ = linear_problem()
        out = {}
        data = _Stamped(2)                                   # 3 ranks, 2 samples: rank 2's shard is empty
        out["stages"] = dataclasses.asdict(predict_dataset(
            model, data, 3, device=CPU, batch_size=4, attack=Ensemble(eps=0.2, members="fgsm,pgd"),
            rank=rank, world=world))
        data = _Stamped(5)
        try:                                                 # sample 1 lives on rank 1's shard only
            predict_dataset(model, data, 3, device=CPU, batch_size=4, attack=_FailsOnSample(data.x[1]),
                            rank=rank, world=world)
        except EvaluationError as err:
            out["error"] = str(err)
        torch.save(out, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def _spawn_with_deadline(fn, args, nprocs, seconds):
    """Spawn ``nprocs`` ranks; fail (and kill them) instead of hanging past ``seconds``."""
    import time

    import torch.multiprocessing as mp

    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + seconds
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"the {nprocs} ranks did not finish within {seconds}s: a collective mismatch hangs")


def test_ddp_evaluation_with_more_ranks_than_samples_and_a_failing_rank(tmp_path):
    """Issue 9 point 7: a rank with an empty shard made fewer all-reduces (no stage entries)
    than the others and hung the evaluation: 3 ranks, 2 samples, an ensemble with stages.
    And a rank whose attack raised left the others waiting in all_reduce: now every rank
    raises the same EvaluationError (which the final evaluation records on the run)."""
    from distfair.attacks import Ensemble

    _spawn_with_deadline(_few_samples_worker, (3, str(tmp_path / "store"), str(tmp_path / "out")),
                         nprocs=3, seconds=400)
    outs = [torch.load(tmp_path / f"out.{r}") for r in range(3)]
    merged, empty = outs[0]["stages"], outs[2]["stages"]       # the rank with no sample gets the same
    model, _ = linear_problem()
    single = predict_dataset(model, _Stamped(2), 3, device=CPU, batch_size=4,
                             attack=Ensemble(eps=0.2, members="fgsm,pgd"))
    assert list(merged["stages"]) == ["fgsm", "pgd"] == list(empty["stages"])
    assert torch.equal(merged["preds"], single.preds) and torch.equal(merged["labels"], single.labels)
    for label in ("fgsm", "pgd"):
        assert torch.equal(merged["stages"][label], single.stages[label])
    errors = [out["error"] for out in outs]
    assert errors[0] == errors[1] == errors[2] and "rank 1: RuntimeError: attack broke on this sample" in errors[0]
