"""Stability across seeds of PGD-AT, FAAL, SpecNorm and Sy-FAR (Sy-FAR §6.5, App. C).

Protocol (Sy-FAR §5, FAAL): one PGD-AT pretraining per seed, then each method fine-tunes the
model of the same seed (``train.init_from`` = the pretraining's configuration run). Every run
goes to MLflow (experiment ``--experiment``): the pretraining and one configuration run per
method, each with one seed run per seed, labelled by a ``distfair.configuration`` tag
(``pretrained pgd_at``, ``pgd_at``, ``faal``, ...).

The table is ``distfair report`` over exactly these configuration runs (``--runs``), against
the PGD-AT fine-tuning (``--baseline pgd_at``), on robust accuracy, worst-class robust
accuracy and the class accuracy gap of the test split under the primary evaluation attack:
mean ± sample std (n) across seeds, Welch / paired t / Wilcoxon with Holm's correction, seeds
needed. It is written to ``--output-dir`` (report.html, report.md, tables.csv, tables.json)
and logged as a report run of the experiment.

    python scripts/stability_comparison.py tune_spaces/stability_digits.yaml [--seeds 5]
"""
from __future__ import annotations

import argparse
import copy
import sys

from distfair import cli, tracking
from distfair.config import read_document, validate
from distfair.distributed import ray_session
from distfair.experiment.run import default_storage_path, run_configuration_with_tracking

#: method -> defense block for fine-tuning (hyperparameters from each paper's protocol, scaled
#: to digits; lambda weights of Sy-FAR as in its reference code, FAAL's r = 0.5)
METHODS = {
    "pgd_at": {"name": "pgd_at"},
    "faal": {"name": "faal", "r": 0.5},
    "specnorm": {"name": "specnorm"},
    "syfar": {"name": "syfar", "lambda_clean": 0.1, "lambda_adv": 1.0, "lambda_sym": 1.0},
}
#: the report's metrics (each under the primary evaluation attack, on the test split)
METRICS = ("robust_acc", "worst_class_acc", "acc_gap")
PRETRAINED = "pretrained pgd_at"


def report_args(run_ids: list[str], *, evaluation: str, uri: str, output_dir: str) -> list[str]:
    """``distfair report`` arguments for the comparison's table."""
    return ["report", "--runs", *run_ids, "--baseline", "pgd_at", "--metrics", ",".join(METRICS),
            "--evaluations", evaluation, "--tracking-uri", uri, "--output-dir", output_dir]


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
    p.add_argument("--output-dir", default="stability_report", help="where the report goes")
    args = p.parse_args()
    if "pgd_at" not in args.methods:
        p.error("--methods must include pgd_at (the report's baseline)")
    raw = read_document(args.config)
    if args.seeds:
        raw["seeds"] = args.seeds
    cfg = validate(raw, args.config)
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    storage = default_storage_path()
    log = lambda msg: print(f"[stability] {msg}", flush=True)  # noqa: E731
    run_ids, failed = [], []
    with ray_session(args.address):
        pre = run_configuration_with_tracking(cfg, config_path=args.config, experiment=args.experiment,
                                              tracking_uri=uri, storage_path=storage, log=log,
                                              parent_run_name=PRETRAINED,
                                              extra_tags={"distfair.stability": "pretrain",
                                                          "distfair.configuration": PRETRAINED})
        if pre.errors:
            print(f"pretraining failed for seeds {sorted(pre.errors)}", file=sys.stderr)
            return 1
        run_ids.append(pre.parent_run_id)
        for method in args.methods:
            ft = copy.deepcopy(raw)
            ft["defense"] = METHODS[method]
            ft["train"].update(epochs=args.finetune_epochs, lr=args.finetune_lr, schedule="none",
                               init_from=pre.parent_run_id)
            report = run_configuration_with_tracking(
                validate(ft, f"{args.config} (fine-tune {method})"), config_path=args.config,
                experiment=args.experiment, tracking_uri=uri, storage_path=storage, log=log,
                parent_run_name=f"finetune {method}",
                extra_tags={"distfair.stability": method, "distfair.configuration": method})
            run_ids.append(report.parent_run_id)
            if report.errors:
                failed.append(f"{method} (seeds {sorted(report.errors)})")
    print(f"\nStability across {len(pre.seeds)} seeds; digits, PGD-20 at ε = {raw['attack']['eps']}; fine-tuning "
          f"{args.finetune_epochs} epochs at lr {args.finetune_lr}:", flush=True)
    command = report_args(run_ids, evaluation=cfg["eval"]["attacks"][0]["name"], uri=uri, output_dir=args.output_dir)
    print("distfair " + " ".join(command), flush=True)
    code = cli.main(command)
    if failed:
        # the report shows what finished; a failed seed leaves a hole the table must not hide
        print(f"fine-tuning failed: {', '.join(failed)}; the table lacks those seeds", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
