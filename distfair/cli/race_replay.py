"""``distfair race-replay``: read a finished fixed-N sweep's per-seed results from MLflow, replay
racing on them (``distfair.experiment.race_replay``) for several alpha and min_seeds, print the
table; map its exceptions to exit codes."""
from __future__ import annotations

import argparse
import json

from distfair.cli.output import EXIT_OK, _human_output, _json_safe, fail, stdout_to_stderr
from distfair.experiment.errors import Refused

RACE_REPLAY_EPILOG = """\
examples:
  distfair race-replay --sweep 3f2a... --tracking-uri sqlite:///mlflow.db
  distfair race-replay --sweep 3f2a... --alpha 0.01,0.05,0.1 --min-seeds 3,5 --orders 1000 --json | jq '.rows[]'

the racing rule (distfair.experiment.racing): every configuration gets --min-seeds seeds, then
--wave more per wave up to --max-seeds. After each wave a configuration stops when a one-sided
paired test (seed i against seed i) against the current best gives p < alpha and its objective
on those seeds is worse; the best never stops. Several objectives: a configuration off the Pareto
front of the objectives stops when another is at least as good on every target and significantly
better on one (a std target is never tested, only compared).

each order is a random permutation of the recorded seeds, the same for every configuration.
columns: P(same) how often racing chose the sweep's own choice over all N seeds; P(noise) how
often it chose that one or a configuration not significantly worse than it over all N seeds
(one-sided, the same test at --noise-alpha, default each row's alpha); regret: the objective of
the fixed-N choice minus that of racing's, both over all N seeds (positive = worse; mean and
95th percentile); seed runs: what racing trained, as a share of N x configurations.

small n: an exact one-sided Wilcoxon test over n seeds cannot give p below 1/2^n, so at alpha
0.05 nothing stops before 5 seeds (4 at 0.1); rows where min_seeds is below that say so.

exit codes: 0 replayed, 2 not a sweep run, fewer than two finished configurations, unequal seed
sets across configurations, or bad arguments.
"""


def _list_of(kind: type, what: str):
    def parse(text: str):
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return list(dict.fromkeys(values))
    return parse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "race-replay", help="replay racing over seeds on a finished fixed-N sweep: same choice, regret, seeds saved",
        description="Would racing seeds have chosen the same configuration as a finished sweep that ran every "
                    "configuration on all its seeds, and for how many seed runs? Reads the sweep's per-seed "
                    "validation objective from MLflow, reruns the racing decisions offline over many random seed "
                    "orders for every combination of --alpha and --min-seeds, and prints one row each. Reads "
                    "MLflow only: no Ray, no training, nothing logged.",
        epilog=RACE_REPLAY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", metavar="SWEEP_RUN_ID", required=True,
                   help="the MLflow sweep run of a finished distfair sweep (printed as 'sweep run <id>')")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--orders", type=int, default=1000, metavar="N",
                   help="random seed orders replayed per row (default 1000)")
    p.add_argument("--alpha", type=_list_of(float, "numbers in (0, 1)"), default=[0.01, 0.05, 0.1], metavar="A,...",
                   help="levels of the one-sided test (default 0.01,0.05,0.1)")
    p.add_argument("--min-seeds", type=_list_of(int, "integers >= 2"), default=[3, 5], metavar="K,...",
                   help="seeds every configuration gets before the first test (default 3,5)")
    p.add_argument("--max-seeds", type=int, metavar="N",
                   help="the most seeds a survivor gets (default: all the sweep recorded)")
    p.add_argument("--wave", type=int, default=1, metavar="N", help="seeds added to each survivor per wave (default 1)")
    p.add_argument("--test", choices=("wilcoxon", "ttest"), default="wilcoxon",
                   help="wilcoxon (scipy.stats.wilcoxon, default) or ttest (scipy.stats.ttest_rel), one-sided")
    p.add_argument("--noise-alpha", type=float, metavar="A",
                   help="level of 'not significantly worse than the fixed-N choice' (default: each row's alpha)")
    p.add_argument("--rng-seed", type=int, default=0, metavar="N",
                   help="seed of the random orders (default 0); the same seed gives the same table")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object on stdout; human-readable output goes to stderr")
    p.set_defaults(handler=cmd_race_replay)
    return p


def cmd_race_replay(args: argparse.Namespace) -> int:
    from distfair import tracking
    from distfair.experiment.race_replay import format_table, recorded_sweep, replay_grid

    if args.orders < 1:
        return fail(Refused(f"--orders must be >= 1, got {args.orders}"))
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    with stdout_to_stderr(args.json) as out:
        human, log = _human_output(args.json)
        try:
            sweep = recorded_sweep(uri, args.sweep)
        except Refused as err:
            return fail(err)
        names = sweep.per_seed
        log(f"sweep run {args.sweep} (experiment {sweep.experiment!r}): {len(names)} configuration(s) x "
            f"{len(sweep.seeds)} seed(s), objective " + ", ".join(f"{t.name} ({t.mode})" for t in sweep.targets))
        for line in sweep.skipped:
            log(f"left out: {line}")
        try:
            rows = replay_grid(names, sweep.targets, alphas=args.alpha, min_seeds=args.min_seeds,
                               max_seeds=args.max_seeds, test=args.test, wave=args.wave, orders=args.orders,
                               rng_seed=args.rng_seed, noise_alpha=args.noise_alpha,
                               progress=lambda r: log(f"replayed alpha {r.spec.alpha:g}, min_seeds "
                                                      f"{r.spec.min_seeds}: P(same) {r.p_same:.3f}, seed runs "
                                                      f"{100 * r.seed_fraction:.1f}%"))
        except ValueError as err:
            return fail(Refused(str(err)))
        first = rows[0]
        print(f"\nracing replayed over {args.orders} seed order(s) (rng seed {args.rng_seed}); fixed-N choice over "
              f"all {first.n_seeds} seeds: {first.fixed_choice}\n", file=human)
        print(format_table(rows), file=human)
        notes = list(dict.fromkeys(w for r in rows for w in r.warnings))
        for note in notes:
            print(f"NOTE: {note}", file=human)
        print("\nwithin the fixed-N choice's noise (" + (f"alpha {args.noise_alpha:g}" if args.noise_alpha else
              "at each row's alpha") + "): " + "; ".join(f"alpha {r.spec.alpha:g}: {', '.join(r.within_noise)}"
                                                         for r in rows if r.spec.min_seeds == first.spec.min_seeds),
              file=human, flush=True)
        if args.json:
            out.write(json.dumps(_json_safe({
                "sweep_run_id": args.sweep, "experiment": sweep.experiment, "seeds": sweep.seeds,
                "objective": [t.__dict__ for t in sweep.targets], "configurations": sweep.run_ids,
                "skipped": sweep.skipped, "fixed_choice": first.fixed_choice, "orders": args.orders,
                "rng_seed": args.rng_seed, "rows": [r.to_json() for r in rows]})) + "\n")
    return EXIT_OK

