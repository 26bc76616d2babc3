"""Stability across seeds of PGD-AT, FAAL, SpecNorm and Sy-FAR (Sy-FAR §6.5, App. C).

Protocol (Sy-FAR §5, FAAL): one PGD-AT pretraining per seed, then each method fine-tunes the
model of the same seed (``train.init_from`` = the pretraining's configuration run). Every run
goes to MLflow (experiment ``--experiment``): the pretraining and one configuration run per
method, each with one seed run per seed. The table compares mean and std across seeds of
robust accuracy, worst-class robust accuracy and the class accuracy gap, read from each
configuration's result record (``configuration_result.json``, ``distfair.record``): the test
split under the primary evaluation attack.

    python scripts/stability_comparison.py tune_spaces/stability_digits.yaml [--seeds 5]
"""
from __future__ import annotations

import argparse
import copy
import sys

from distfair import tracking
from distfair.config import read_document, validate
from distfair.distributed import ray_session
from distfair.record import find_entry
from distfair.run import default_storage_path, run_configuration_with_tracking

#: method -> defense block for fine-tuning (hyperparameters from each paper's protocol, scaled
#: to digits; lambda weights of Sy-FAR as in its reference code, FAAL's r = 0.5)
METHODS = {
    "pgd_at": {"name": "pgd_at"},
    "faal": {"name": "faal", "r": 0.5},
    "specnorm": {"name": "specnorm"},
    "syfar": {"name": "syfar", "lambda_clean": 0.1, "lambda_adv": 1.0, "lambda_sym": 1.0},
}
#: column -> the metric of the primary evaluation attack on the test split
COLUMNS = {"robust_acc": "acc", "worst_class_acc": "worst_class_acc", "acc_gap": "acc_gap"}


def table_cells(record: dict) -> dict[str, dict]:
    """Column -> the configuration record's entry (mean, std, ... across seeds)."""
    primary = record["config"]["eval"]["attacks"][0]["name"]
    return {column: find_entry(record, split="test", evaluation=primary, metric=metric)
            for column, metric in COLUMNS.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the file's)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--finetune-lr", type=float, default=0.005)
    p.add_argument("--experiment", default="stability_digits")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--address", default=None)
    args = p.parse_args()
    raw = read_document(args.config)
    if args.seeds:
        raw["seeds"] = args.seeds
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    storage = default_storage_path()
    log = lambda msg: print(f"[stability] {msg}", flush=True)  # noqa: E731
    rows = {}
    with ray_session(args.address):
        pre = run_configuration_with_tracking(validate(raw, args.config), config_path=args.config,
                                              experiment=args.experiment, tracking_uri=uri, storage_path=storage,
                                              log=log, parent_run_name="pretrain pgd_at",
                                              extra_tags={"distfair.stability": "pretrain"})
        if pre.errors:
            print(f"pretraining failed for seeds {sorted(pre.errors)}", file=sys.stderr)
            return 1
        rows["(pretrained) pgd_at"] = table_cells(pre.record)
        for method in args.methods:
            ft = copy.deepcopy(raw)
            ft["defense"] = METHODS[method]
            ft["train"].update(epochs=args.finetune_epochs, lr=args.finetune_lr, schedule="none",
                               init_from=pre.parent_run_id)
            report = run_configuration_with_tracking(
                validate(ft, f"{args.config} (fine-tune {method})"), config_path=args.config,
                experiment=args.experiment, tracking_uri=uri, storage_path=storage, log=log,
                parent_run_name=f"finetune {method}", extra_tags={"distfair.stability": method})
            rows[method] = table_cells(report.record)
    n = len(pre.seeds)
    print(f"\nStability across {n} seeds (mean ± std, sample std); digits, PGD-20 at ε = "
          f"{raw['attack']['eps']}; fine-tuning {args.finetune_epochs} epochs at lr {args.finetune_lr}")
    print(f"{'method':<22}" + "".join(f"{c:>24}" for c in COLUMNS))
    for method, metrics in rows.items():
        cells = "".join(f"{metrics[c]['mean']:>15.4f} ± {metrics[c]['std']:<6.4f}" for c in COLUMNS)
        print(f"{method:<22}{cells}")
    print(f"\nMLflow: experiment {args.experiment!r}; {tracking.ui_command(uri)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
