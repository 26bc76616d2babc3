"""Memory of the final evaluation against the test-set size: batches stream, so the extra
memory the evaluation needs should not grow with N beyond a few integers per sample.

Each size runs in its own process: the synthetic data are built first (they live in memory
and do grow with N), then the process's peak resident set is reset (Linux
``/proc/self/clear_refs``) and the resident set read, then ``final_evaluation`` runs (clean,
PGD-10, FGSM every target, subgroups) and the peak is read again.
Prints the evaluation's extra peak memory per size, and per test sample.

    python scripts/bench_eval_memory.py --sizes 5000 50000 200000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(n_test: int, batch_size: int) -> dict:
    import torch

    from distfair.data import build_dataset
    from distfair.evaluation import final_evaluation
    from distfair.models import build_model

    torch.set_num_threads(1)
    data = build_dataset("synthetic", num_samples=2 * n_test, num_classes=4, dim=64, test_fraction=0.5,
                         val_fraction=0.1)
    model = build_model("mlp", num_classes=4, in_shape=data.in_shape, hidden=64).eval()
    eval_cfg = {"attacks": [{"name": "pgd", "attack": "pgd", "eps": 0.1, "steps": 10},
                            {"name": "every", "attack": "fgsm", "eps": 0.1, "target": "every"}],
                "subgroups": {"half": {0: "a", 1: "a", 2: "b", 3: "b"}}}
    # a first small evaluation loads every code path (lazy imports, allocator pools)
    warm = build_dataset("synthetic", num_samples=400, num_classes=4, dim=64, test_fraction=0.5, val_fraction=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        final_evaluation(model, warm, eval_cfg, 0, workdir=tmp, device=torch.device("cpu"), batch_size=batch_size)
        with open("/proc/self/clear_refs", "w") as f:     # reset the peak (VmHWM) to the current RSS
            f.write("5")
        before = _status_kb("VmRSS")
        t0 = time.perf_counter()
        final_evaluation(model, data, eval_cfg, 0, workdir=tmp, device=torch.device("cpu"), batch_size=batch_size)
        seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return {"n_test": len(data.test), "extra_peak_mb": (peak - before) / 1024,
            "rss_before_mb": before / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000, 200000],
                        help="test-set sizes (default: 5000 50000 200000)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)     # internal: measure one size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batch_size)))
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--batch-size", str(args.batch_size)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"N={rows[-1]['n_test']:>7}: evaluation extra peak {rows[-1]['extra_peak_mb']:7.1f} MB "
              f"(resident before {rows[-1]['rss_before_mb']:.0f} MB, {rows[-1]['seconds']:.1f} s)", flush=True)
    sample_bytes = 64 * 4          # one test input: 64 float32 features
    print("evaluation extra peak per test sample: "
          + ", ".join(f"N={r['n_test']}: {r['extra_peak_mb'] * 2**20 / r['n_test']:.0f} B" for r in rows)
          + f" (one input is {sample_bytes} B; the evaluation keeps a few int64 per sample and evaluation,"
          " never the inputs or logits)")

if __name__ == "__main__":
    main()
