"""Per-step cost of every registered defense relative to PGD-AT, measured in one process.

Same model (the digits CNN at K classes), same data (a synthetic batch in [0, 1]), same
training attack (PGD-ℓ∞, 5 steps) for every defense. One *step* = ``defense.loss`` + backward
+ optimiser step. Defenses with a per-epoch pass (``start_epoch``, e.g. SpecNorm's robust
confusion matrix of the training set) have that pass timed separately and amortised over the
steps of one epoch of a ``--train-size`` training set. Sy-FAR is also measured at K = 100
and 1000 classes, and its symmetry term alone (soft confusion + Eq. 2, forward + backward).
Data-free defenses (FERD, DFRD: a ``teacher`` reference) get a digits-CNN teacher of the same
size and their own step (``train_step``: one generator step and one student step on a
synthetic batch of ``--batch`` samples, PGD-ℓ∞ 5 steps); FERD's per-epoch reweighting pass
(PGD-20 on the teacher) is amortised over ``--datafree-iterations`` steps (the paper's 400).

Measurements are interleaved (round robin over the cases, ``--reps`` rounds) so that drift of
the machine hits every case alike; the table shows medians, the interquartile range and the
ratio to PGD-AT at the same K. Timings are printed, never asserted. Uses a GPU when present.

    python scripts/bench_step_cost.py [--reps 15] [--batch 128] [--train-size 1024]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import TensorDataset

from distfair.attacks import build_attack
from distfair.defenses import DEFENSES, Defense, DefenseContext, build_defense
from distfair.metrics import soft_confusion_matrix, symmetry_loss
from distfair.models import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_datafree_case(defense_name: str, k: int, args, device, model, optimizer):
    """A data-free defense (a ``teacher`` reference): set up with a digits-CNN teacher saved as
    an epoch checkpoint; its step is ``train_step`` on one of its own synthetic batches."""
    teacher = build_model("digits_cnn", num_classes=k, in_shape=(1, 8, 8))
    path = Path(tempfile.mkdtemp()) / "teacher.pt"
    torch.save({"model": teacher.state_dict(), "model_name": "digits_cnn", "model_config": {"name": "digits_cnn"},
                "num_classes": k, "in_shape": (1, 8, 8)}, path)
    options = {"batch_size": args.batch, "iterations_per_epoch": args.datafree_iterations, "eps": 0.1,
               "alpha": 0.025, "steps": 5}
    defense = build_defense(defense_name, attack=None, num_classes=k, **options)
    seeds = {}

    def make_generator(*labels):
        return torch.Generator(device=device).manual_seed(seeds.setdefault(labels, len(seeds)))

    defense.setup(DefenseContext(num_classes=k, in_shape=(1, 8, 8), bounds=(0.0, 1.0), class_names=(),
                                 device=device, make_generator=make_generator, references={"teacher": str(path)}))
    batch = tuple(t.to(device) for t in next(iter(defense.batches(None, epoch=1))))
    attack_gen = torch.Generator(device=device).manual_seed(1)

    def step() -> None:
        model.train()
        defense.train_step(model, batch, optimizer, generator=attack_gen)

    if type(defense).start_epoch is Defense.start_epoch:
        return step, None, 1

    def epoch_pass() -> None:
        defense.start_epoch(model, None, epoch=1, batch_size=args.batch, generator=attack_gen)
    return step, epoch_pass, args.datafree_iterations


def make_case(defense_name: str, k: int, args, device) -> tuple[Callable[[], None], Callable[[], None] | None, int]:
    """(one training step, one per-epoch pass or None, steps per epoch) for a defense at K classes."""
    g = torch.Generator().manual_seed(0)
    model = build_model("digits_cnn", num_classes=k, in_shape=(1, 8, 8)).to(device)
    if "teacher" in DEFENSES[defense_name].reference_options:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        return make_datafree_case(defense_name, k, args, device, model, optimizer)
    attack = build_attack("pgd", bounds=(0.0, 1.0), eps=0.1, steps=5)
    defense = build_defense(defense_name, attack=attack if DEFENSES[defense_name].needs_attack else None,
                            num_classes=k)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(args.batch, 1, 8, 8, generator=g).to(device)
    y = torch.randint(0, k, (args.batch,), generator=g).to(device)
    attack_gen = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(1)

    def step() -> None:
        model.train()
        loss, _ = defense.loss(model, x, y, generator=attack_gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if type(defense).start_epoch is Defense.start_epoch:      # no per-epoch pass to amortise
        return step, None, 1
    train = TensorDataset(torch.rand(args.train_size, 1, 8, 8, generator=g),
                          torch.randint(0, k, (args.train_size,), generator=g))

    defense.setup(DefenseContext(num_classes=k, in_shape=(1, 8, 8), bounds=(0.0, 1.0), class_names=(),
                                 device=device, make_generator=lambda *labels: torch.Generator(device=device)))

    def epoch_pass() -> None:
        defense.start_epoch(model, train, epoch=0, batch_size=256, generator=attack_gen)
    return step, epoch_pass, max(1, args.train_size // args.batch)


def make_sym_only(k: int, args, device) -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(args.batch, k, generator=g).to(device).requires_grad_(True)
    y = torch.randint(0, k, (args.batch,), generator=g).to(device)

    def sym() -> None:
        loss = symmetry_loss(soft_confusion_matrix(logits.softmax(dim=1), y, k))
        (grad,) = torch.autograd.grad(loss, logits)
    return sym


def timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--train-size", type=int, default=1024)
    p.add_argument("--datafree-iterations", type=int, default=400,
                   help="steps per epoch over which FERD's reweighting pass is amortised (paper: 400)")
    p.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000], help="K values for Sy-FAR")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    if args.reps < 2:
        p.error("--reps must be >= 2 (the spread needs two measurements)")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    cases: dict[tuple[str, int], dict] = {}
    for name in DEFENSES:
        step, epoch_pass, steps_per_epoch = make_case(name, args.classes[0], args, device)
        cases[(name, args.classes[0])] = {"step": step, "epoch": epoch_pass, "per_epoch": steps_per_epoch}
    for k in args.classes[1:]:
        for name in ("pgd_at", "syfar"):
            step, _, _ = make_case(name, k, args, device)
            cases[(name, k)] = {"step": step, "epoch": None, "per_epoch": 1}
    for k in args.classes:
        cases[("syfar: symmetry term only", k)] = {"step": make_sym_only(k, args, device), "epoch": None, "per_epoch": 1}

    times: dict[tuple[str, int], list[float]] = {key: [] for key in cases}
    for rep in range(args.warmup + args.reps):
        for key, case in cases.items():
            t = timed(case["step"], device)
            if case["epoch"] is not None:
                t += timed(case["epoch"], device) / case["per_epoch"]
            if rep >= args.warmup:
                times[key].append(t)

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {args.threads} thread(s))"
    print(f"per-step cost relative to PGD-AT | {device_name} | torch {torch.__version__} | batch {args.batch}, "
          f"digits CNN, PGD-ℓ∞ 5 steps | {args.reps} interleaved repetitions after {args.warmup} warm-up")
    print(f"{'defense':<28} {'K':>5} {'median ms':>10} {'IQR ms':>15} {'x PGD-AT':>9}")
    for (name, k), values in times.items():
        q = statistics.quantiles(values, n=4)
        base = statistics.median(times[("pgd_at", k)])
        med = statistics.median(values)
        note = " (incl. per-epoch pass / epoch)" if cases[(name, k)]["epoch"] is not None else ""
        print(f"{name:<28} {k:>5} {1000 * med:>10.2f} {1000 * q[0]:>7.2f}-{1000 * q[2]:<7.2f} {med / base:>9.2f}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
