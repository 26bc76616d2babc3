"""Short checks of the data-free defenses' official loop on digits (CPU, no Ray): not results.

    python scripts/ferd_loop_check.py ib-cost            # ms per generator step: no FAEs, ib_fit channel, official
    python scripts/ferd_loop_check.py check [--gen-steps 25] [--student-steps 50] [--warmup 2] [--epochs 12]

``ib-cost`` times FERD's generation stage (``start_epoch``, official loop, no reweighting) with a
digits_cnn width-32 teacher (untrained: the cost does not depend on its weights), a width-16
student and batches of 64, on one thread. ``check`` trains a PGD-AT teacher
(``tune_spaces/digits_teacher.yaml``, seed 0), then FERD and DFRD students with the digits
configurations switched to ``loop: official`` (and FERD's ``utae_network: student``, the
default) at the budget given, and prints clean, PGD-20 and worst-class PGD-20 test accuracy.
Work files go to ``--workdir`` (default a fresh temporary folder).
"""
from __future__ import annotations

import argparse
import tempfile
import time
import zlib
from pathlib import Path

import torch

from distfair.config import load_config, validate
from distfair.defenses import DefenseContext
from distfair.defenses.ferd import FERD
from distfair.engine import run_seed
from distfair.engine.train import CHECKPOINT_NAME
from distfair.models import build_model

ROOT = Path(__file__).resolve().parent.parent
DIGITS = (1, 8, 8)


def ib_cost(workdir: Path) -> None:
    torch.set_num_threads(1)
    teacher = build_model("digits_cnn", num_classes=10, in_shape=DIGITS, width=32)
    path = workdir / "teacher.pt"
    torch.save({"model": teacher.state_dict(), "model_name": "digits_cnn",
                "model_config": {"name": "digits_cnn", "width": 32}, "num_classes": 10, "in_shape": DIGITS}, path)
    ctx = DefenseContext(num_classes=10, in_shape=DIGITS, bounds=(0.0, 1.0), class_names=tuple(map(str, range(10))),
                         device=torch.device("cpu"), rank=0, references={"teacher": str(path)},
                         make_generator=lambda *labels: torch.Generator().manual_seed(zlib.crc32(repr(labels).encode())))
    student = build_model("digits_cnn", num_classes=10, in_shape=DIGITS, width=16)
    steps = 20
    for label, options in [("no FAEs", {"faes": False}), ("ib_fit channel (5 steps)", {}),
                           ("ib_fit official (50 steps)", {"ib_fit": "official"})]:
        defense = FERD(num_classes=10, batch_size=64, gen_steps=steps, crop_padding=1, reweighting=False, **options)
        defense.setup(ctx)
        defense.start_epoch(student, None, epoch=0, batch_size=64, generator=None)          # warm-up
        start = time.perf_counter()
        for epoch in range(1, 4):
            defense.start_epoch(student, None, epoch=epoch, batch_size=64, generator=None)
        print(f"{label}: {(time.perf_counter() - start) / (3 * steps) * 1000:.1f} ms per generator step")


def check(workdir: Path, args) -> None:
    torch.set_num_threads(2)
    cfg = load_config(ROOT / "tune_spaces" / "digits_teacher.yaml")
    cfg["seeds"] = [0]
    result = run_seed(cfg, 0, workdir=workdir / "teacher")
    print("teacher", {k: round(v, 3) for k, v in result.metrics.items() if k in ("clean_acc", "robust_acc")})
    teacher = str(workdir / "teacher" / CHECKPOINT_NAME)
    for name in ("ferd", "dfrd"):
        cfg = load_config(ROOT / "tune_spaces" / f"digits_{name}.yaml", ["defense.teacher=x"])
        cfg["defense"].update(teacher=teacher, loop="official", gen_steps=args.gen_steps,
                              student_steps=args.student_steps, warmup=args.warmup, crop_padding=1)
        if name == "ferd":
            cfg["defense"]["utae_network"] = "student"
        cfg["train"]["epochs"] = args.epochs
        cfg["eval"]["attacks"] = [a for a in cfg["eval"]["attacks"] if a["name"] == "pgd20"]
        cfg["seeds"] = [0]
        start = time.perf_counter()
        result = run_seed(validate(cfg, f"{name}.yaml"), 0, workdir=workdir / name, references={"teacher": teacher})
        shown = {k: round(v, 3) for k, v in result.metrics.items()
                 if k in ("clean_acc", "robust_acc", "pgd20/worst_class_acc")}
        print(name, f"{time.perf_counter() - start:.0f} s", shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["ib-cost", "check"])
    parser.add_argument("--gen-steps", type=int, default=25)
    parser.add_argument("--student-steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ferd_loop_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    ib_cost(workdir) if args.what == "ib-cost" else check(workdir, args)


if __name__ == "__main__":
    main()
