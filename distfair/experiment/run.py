"""``distfair run``: one configuration over several seeds, recorded as an MLflow parent run
with one child run per seed. The layer between the command line and Ray/MLflow, reused by
the sweep.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from distfair import tracking
from distfair.config import flatten
from distfair.metrics import INTERVAL_NOTE, aggregate_seed_metrics
from distfair.results.record import CONFIGURATION_RECORD_NAME, configuration_record, evaluation_label


@dataclass
class RunReport:
    experiment: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    seeds: list[int]
    metrics: dict[str, dict]          # name -> summarize() over the finished seeds
    errors: dict[int, str]
    record: dict | None = None        # the configuration's result record (configuration_result.json)

    def to_json(self) -> dict:
        keep = ("mean", "std", "min", "max", "values")
        return {"experiment": self.experiment, "parent_run_id": self.parent_run_id, "seeds": self.seeds,
                "metrics": {k: {s: v[s] for s in keep} for k, v in self.metrics.items()}}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after its open MLflow runs were marked KILLED.

    A Ray worker that was just starting a seed can still reopen its run between that marking
    and Ray's shutdown; the caller calls ``close_again()`` once Ray has shut down (no worker
    left to write) so every run ends closed."""

    def __init__(self, tracking_uri: str, run_ids: list[str]):
        super().__init__()
        self.tracking_uri, self.run_ids = tracking_uri, run_ids

    def close_again(self) -> None:
        tracking.mark_runs(self.tracking_uri, self.run_ids, "KILLED")


def config_hash(cfg: dict) -> str:
    """Stable hash of the resolved configuration (seeds and search space excluded)."""
    body = {k: v for k, v in cfg.items() if k not in ("seeds", "space", "description")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_description(cfg: dict) -> str:
    """The parent run's MLflow description: the file's ``description`` and what its dataset
    requires every result to say (``distfair.data.DATASET_NOTICES``: spoken_words' voices are
    synthetic, not people)."""
    from distfair.data import DATASET_NOTICES

    parts = [str(cfg.get("description") or "").strip(), DATASET_NOTICES.get(cfg["dataset"]["name"], "")]
    return "\n\n".join(p for p in parts if p)


# ------------------------------------------------------------ what every run records about itself
#: packages whose versions every configuration and seed run records (tags ``distfair.version.<name>``)
VERSIONED_PACKAGES = ("torch", "torchvision", "torchaudio", "ray", "mlflow", "optuna")
#: the configuration run's tags that its seed runs carry too, so the UI filters seeds by configuration
SEED_IDENTITY_TAGS = ("distfair.config_hash", "distfair.config_file", "distfair.configuration", "distfair.defense",
                      "distfair.dataset", "distfair.sweep_run", "distfair.trial_id", "distfair.trial_params")
#: name of the resolved configuration artifact on configuration and seed runs
CONFIG_ARTIFACT = "config.yaml"


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(root: Path, *args: str) -> str | None:
    """``git -C root args`` stdout, or None when git is missing, fails or hangs."""
    try:
        # --no-optional-locks: reading the state never writes the checkout's index
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(package_dir: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout distfair runs from, or (None, None) when it is not
    one (an installed wheel, no git). Only a checkout whose top level holds this very package
    counts: a virtual environment inside some other repository is not distfair's commit.
    ``dirty``: tracked files differ from the commit (untracked files such as ``mlflow.db`` do
    not count)."""
    root = Path(package_dir or Path(__file__).resolve().parent).parent
    top = _git(root, "rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != root.resolve():
        return None, None
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    if not commit:
        return None, None
    return commit, None if status is None else bool(status)


@functools.lru_cache(maxsize=1)
def environment_tags() -> dict[str, str]:
    """The MLflow tags that say what produced a run: ``distfair.version``, ``distfair.python``,
    ``distfair.version.<package>`` for :data:`VERSIONED_PACKAGES`, and from a git checkout
    ``distfair.git_commit``, ``distfair.git_dirty`` and MLflow's own ``mlflow.source.git.commit``
    (shown in the run's overview). Versions of the driver's environment (the process that
    creates the runs); read from package metadata, never from environment variables."""
    from distfair import __version__

    tags = {"distfair.version": __version__, "distfair.python": platform.python_version()}
    tags.update({f"distfair.version.{name}": _package_version(name) for name in VERSIONED_PACKAGES})
    commit, dirty = git_state()
    if commit:
        tags.update({"distfair.git_commit": commit, "mlflow.source.git.commit": commit})
        if dirty is not None:
            tags["distfair.git_dirty"] = str(dirty).lower()
    return tags


def _plain(value):
    """YAML-safe copy: tuples as lists, anything unknown as its text."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def resolved_config_yaml(cfg: dict) -> str:
    """The fully resolved configuration (defaults filled in, overrides applied) as YAML that
    ``distfair run`` reads back."""
    import yaml

    return yaml.safe_dump(_plain(cfg), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------- the configuration run's own summary
#: the configuration run's headline metrics, in this order (those its seeds have): accuracy
#: clean and under the primary attack, the worst class (Sy-FAR §2 / Table 1: worst-class
#: accuracy, the best-worst gap ``acc_gap``, the normalised std ``nsd`` of the class accuracies
#: and the largest pairwise confusion asymmetry ``max_asym_gap``), and an abstaining predictor's
#: rejection rate
MAIN_METRICS = ("clean_acc", "robust_acc", "clean_worst_class_acc", "worst_class_acc", "acc_gap", "nsd",
                "max_asym_gap", "rejection_rate")
#: then, when the evaluation has them, its primary per-attribute and speech (paper 003 §3)
#: fairness summaries: the subgroup gap per attribute, AUC_acc and the defense parity
MAIN_FAMILIES = ("group_gap/", "auc_acc", "defense_parity/")
#: at most this many metrics in the figure and the description's table
MAX_MAIN_METRICS = 12
SUMMARY_HEADING = "### Seed summary (distfair)"


def main_metrics(names: Sequence[str]) -> list[str]:
    """The metrics of :data:`MAIN_METRICS` then :data:`MAIN_FAMILIES` among ``names``, at most
    :data:`MAX_MAIN_METRICS`: what the seed-stability figure and the description show."""
    have = set(names)
    out = [m for m in MAIN_METRICS if m in have]
    for family in MAIN_FAMILIES:
        out += sorted(n for n in have if n == family or (family.endswith("/") and n.startswith(family)))
    return out[:MAX_MAIN_METRICS]


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _cell(text: str, limit: int = 300) -> str:
    """One line of Markdown table or list text: no pipes or line breaks, at most ``limit`` chars."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def summary_markdown(summary: Mapping[str, dict], metrics: Sequence[str], *, seeds: Sequence[int],
                     planned: Sequence[int], errors: Mapping[int, str], figure: str | None,
                     primary: str | None = None, notice: str | None = None) -> str:
    """The Markdown section that opens the configuration run's description (what the MLflow
    UI shows before its "Show more"): the heading, the dataset's ``notice`` (what every result
    on it must say), then straight away the main ``metrics`` as mean ± sample std, n seeds and
    the 95% interval (``distfair.metrics.summarize``: Student t, clipped to the metric's
    range), the primary evaluation attack's rows named with it (``robust_acc (pgd20)``,
    ``distfair.results.record.evaluation_label``); below the table how many seeds finished, the
    failed seeds with why, and where the figure is. Its last line is always the same (the
    end of the section when it is replaced)."""
    lines = [SUMMARY_HEADING, ""]
    if notice:
        lines += [f"*{_cell(notice, 600)}*", ""]
    if metrics:
        lines += ["| metric | mean ± std | n | 95% CI |", "|---|---|---|---|"]
        for name in metrics:
            s = summary[name]
            spread = "" if s.get("std") is None else f" ± {_number(s['std'])}"
            interval = "n/a" if s.get("ci95_low") is None else f"[{_number(s['ci95_low'])}, {_number(s['ci95_high'])}]"
            label = evaluation_label(name, summary, primary)
            lines.append(f"| {_cell(label)} | {_number(s.get('mean'))}{spread} | {s.get('n', 0)} | {interval} |")
        lines.append("")
    lines += [f"{len(seeds)} of {len(planned)} seeds finished ({', '.join(map(str, seeds)) or 'none'}). "
              f"Mean ± sample std (ddof = 1) over the seeds; {INTERVAL_NOTE}.", ""]
    if errors:
        lines.append(f"Failed seeds ({len(errors)}, metric `n_failed`; the statistics are over the finished seeds "
                     "only):")
        lines += [f"- seed {seed}: {_cell(why)}" for seed, why in sorted(errors.items())]
        lines.append("")
    if figure:
        lines.append(f"Figure: `{figure}` (Artifacts): every seed, the mean ± std and the 95% interval per metric.")
    lines.append("Every metric's statistics: `<metric>_mean`, `_std`, `_min`, `_max`, `_ci95_low`, `_ci95_high` "
                 "and `seed_summary.json`.")
    return "\n".join(lines)


def run_configuration_with_tracking(cfg: dict, *, config_path: str, experiment: str, tracking_uri: str,
                                    storage_path: str | Path, log: Callable[[str], None],
                                    extra_tags: dict[str, str] | None = None, lookup: dict[str, str] | None = None,
                                    parent_run_name: str | None = None, ray_run_name: str | None = None,
                                    init_paths: dict[int, str] | None = None,
                                    references: dict[int, dict[str, str]] | None = None,
                                    resume_parent: str | None = None) -> RunReport:
    """Create (or, with ``lookup`` tags, find; with ``resume_parent``, reopen that
    configuration run: ``distfair run --resume``) the MLflow records, train every seed that has
    no FINISHED run yet on the connected Ray cluster, and aggregate.

    ``init_paths`` / ``references``: ``train.init_from`` and the defense's reference files
    resolved per seed (``resolve_init_from``, ``resolve_references``); resolved here if None.
    Ray must already be initialised (see ``distfair.distributed.ray_session``). Whatever
    happens, the parent and every child end in a terminal state: FINISHED, or FAILED for a
    seed that produced no result (and then the parent too), or KILLED on Ctrl-C. A seed run
    left unfinished by an earlier, interrupted attempt is retired and redone.
    """
    from distfair.data import DATASET_NOTICES
    from distfair.distributed import run_configuration

    seeds = list(cfg["seeds"])
    if init_paths is None:
        init_paths = resolve_init_from(cfg, tracking_uri, storage_path)
    if references is None:
        references = resolve_references(cfg, tracking_uri, storage_path)
    tracking.set_outage_log(log)        # "tracking server ... unreachable / back" in the progress output
    experiment_id = tracking.prepare_experiment(tracking_uri, experiment)
    digest = config_hash(cfg)
    flat = flatten(cfg)
    flat["seeds"] = seeds
    run_name = parent_run_name or f"{Path(config_path).stem}-{digest[:8]}"
    if lookup is None and resume_parent is None:   # not a sweep trial nor a resumed attempt: a repeat gets "#2"
        run_name = tracking.next_run_name(tracking_uri, experiment_id, run_name, digest)
    parent_tags = {"distfair.config_file": str(config_path), "distfair.config_hash": digest,
                   "distfair.defense": cfg["defense"]["name"], "distfair.dataset": cfg["dataset"]["name"],
                   **environment_tags(), **(extra_tags or {})}
    if resume_parent is not None:       # its FINISHED seed runs are kept below, the others redone
        parent, run_name = resume_parent, tracking.reopen_run(tracking_uri, resume_parent)
    else:
        parent = tracking.start_parent_run(
            tracking_uri, experiment_id, flat, run_name=run_name, description=run_description(cfg),
            tags=parent_tags, lookup=lookup, files={CONFIG_ARTIFACT: resolved_config_yaml({**cfg, "seeds": seeds})})
    existing = tracking.seed_run_states(tracking_uri, experiment_id, parent)
    todo = [s for s in seeds if existing.get(s, (None, None))[1] != "FINISHED"]
    for seed in todo:
        if seed in existing:
            tracking.retire_run(tracking_uri, existing[seed][0])
    children = open_seed_runs(tracking_uri, experiment_id, parent, cfg, todo,
                              configuration_tags={**parent_tags, **(lookup or {})})
    log(f"MLflow: experiment {experiment!r}, parent run {parent} ({tracking_uri})"
        + (f"; seeds {sorted(set(seeds) - set(todo))} already finished" if len(todo) < len(seeds) else ""))
    outcome_errors: dict[int, str] = {}
    if todo:
        cfg = {**cfg, "seeds": todo}        # the one seed list the runner trains
        try:
            outcome = run_configuration(cfg, child_run_ids=children, init_paths=init_paths, references=references,
                                        seed_logger=tracking.seed_logger_factory(tracking_uri, storage_path),
                                        run_name=ray_run_name or _ray_run_name(parent, children),
                                        storage_path=storage_path, log=log)
        except KeyboardInterrupt:
            opened = [*children.values(), parent]
            tracking.mark_runs(tracking_uri, opened, "KILLED")
            raise Interrupted(tracking_uri, opened) from None
        except Exception:
            tracking.mark_runs(tracking_uri, [*children.values(), parent], "FAILED")
            raise
        outcome_errors = outcome.errors
    per_seed = tracking.finished_seed_metrics(tracking_uri, experiment_id, parent)
    per_seed = {s: m for s, m in per_seed.items() if s in seeds}
    errors = {s: outcome_errors.get(s, "no finished MLflow run") for s in seeds if s not in per_seed}
    tracking.mark_runs(tracking_uri, [children[s] for s in errors if s in children], "FAILED")
    summary = aggregate_seed_metrics([per_seed[s] for s in sorted(per_seed)])
    record = configuration_result(tracking_uri, experiment_id, parent, cfg={**cfg, "seeds": seeds},
                                  seeds=sorted(per_seed), errors=errors)
    shown = main_metrics(list(summary))
    seed_values = {m: {s: per_seed[s][m] for s in sorted(per_seed) if m in per_seed[s]} for m in shown}
    drawn = any(seed_values.values())
    attacks = cfg["eval"]["attacks"]
    tracking.log_parent_summary(
        tracking_uri, parent, summary, n_seeds=len(per_seed), status="FAILED" if errors else "FINISHED",
        configuration_record=record, seed_values=seed_values, failures=errors,
        figure_title=f"{run_name}: every seed, mean ± std, 95% CI",
        description=summary_markdown(summary, shown, seeds=sorted(per_seed), planned=seeds, errors=errors,
                                     figure=tracking.SEED_STABILITY_FIGURE if drawn else None,
                                     primary=attacks[0]["name"] if attacks else None,
                                     notice=DATASET_NOTICES.get(cfg["dataset"]["name"])))
    return RunReport(experiment=experiment, experiment_id=experiment_id, parent_run_id=parent,
                     tracking_uri=tracking_uri, seeds=sorted(per_seed), metrics=summary, errors=errors,
                     record=record)


def open_seed_runs(tracking_uri: str, experiment_id: str, parent_run_id: str, cfg: dict, seeds: Sequence[int], *,
                   configuration_tags: Mapping[str, str]) -> dict[int, str]:
    """``{seed: run id}`` of the seed runs under a configuration run, found or created. A new
    one carries the configuration's identity (its :data:`SEED_IDENTITY_TAGS` among
    ``configuration_tags``, and every resolved config value as a param, so the UI filters and
    compares seeds by configuration or by a sweep's searched values), :func:`environment_tags`,
    and a ``config.yaml`` that reruns exactly this seed."""
    tags = {**{k: v for k, v in configuration_tags.items() if k in SEED_IDENTITY_TAGS}, **environment_tags()}
    params = {k: v for k, v in flatten(cfg).items() if k != "seeds"}
    return {s: tracking.get_or_create_seed_run(
        tracking_uri, experiment_id, parent_run_id, s, tags=tags, params=params,
        files={CONFIG_ARTIFACT: resolved_config_yaml({**cfg, "seeds": [s]})}) for s in seeds}


def configuration_result(tracking_uri: str, experiment_id: str, parent_run_id: str, *, cfg: dict,
                         seeds: list[int], errors: dict[int, str]) -> dict:
    """The configuration's result record, from the ``result.json`` of its finished seed runs
    (the same runs the parent's statistics come from). A finished seed run without a record
    (recorded before records existed) is listed under ``errors``."""
    records = tracking.finished_seed_records(tracking_uri, experiment_id, parent_run_id)
    errors = dict(errors)
    errors.update({s: "finished MLflow run has no result.json" for s in seeds if s not in records})
    return configuration_record(cfg, [records[s] for s in seeds if s in records], errors=errors)


def _checkpoints_per_seed(source: str, seeds: list[int], tracking_uri: str, dest: Path, key: str) -> dict[int, str]:
    """A checkpoint file (the same for every seed) or an MLflow run id (a seed run: its
    checkpoint for every seed; a configuration run: each seed its own seed's), downloaded
    under ``dest``. Raises ValueError naming ``key``."""
    if Path(source).expanduser().is_file():
        path = str(Path(source).expanduser().resolve())
        return {s: path for s in seeds}
    paths = tracking.seed_checkpoints(tracking_uri, source, list(seeds), dest, key=key)
    return {s: str(p) for s, p in paths.items()}


def resolve_init_from(cfg: dict, tracking_uri: str, storage_path: str | Path) -> dict[int, str]:
    """``train.init_from`` as one local checkpoint path per seed ({} when unset). A file is
    used as it is; an MLflow run id is downloaded under ``storage_path/init_from`` (shared
    storage on a cluster, so every worker can read it). Raises ValueError."""
    from distfair.models import load_checkpoint

    source = cfg["train"].get("init_from")
    if not source:
        return {}
    paths = _checkpoints_per_seed(source, cfg["seeds"], tracking_uri, Path(storage_path) / "init_from",
                                  "train.init_from")
    for path in sorted(set(paths.values())):
        try:                 # read once here (weights_only): a pickled payload is refused before anything starts
            load_checkpoint(path)
        except ValueError as err:
            raise ValueError(f"train.init_from: {err}") from None
    return paths


def resolve_references(cfg: dict, tracking_uri: str, storage_path: str | Path) -> dict[int, dict[str, str]]:
    """The files the defense reads (``Defense.reference_options``, e.g. FERD's ``teacher``),
    per seed: ``{seed: {option: local checkpoint}}`` ({} when the defense reads none). Each is a
    checkpoint file, an MLflow seed run id (one checkpoint for every seed) or an MLflow
    configuration run id (each seed reads the same seed's run), downloaded under
    ``storage_path/<option>``. The checkpoint must hold a model for this dataset (its number
    of classes and input shape); anything missing or mismatched raises ValueError naming
    ``defense.<option>``, before anything is trained."""
    from distfair.config import dataset_spec
    from distfair.defenses import DEFENSES
    from distfair.models import MODELS, checkpoint_model_spec, load_checkpoint

    name = cfg["defense"]["name"]
    options = DEFENSES[name].reference_options
    if not options:
        return {}
    seeds = list(cfg["seeds"])
    num_classes, in_shape = dataset_spec(cfg)
    out: dict[int, dict[str, str]] = {s: {} for s in seeds}
    for option in options:
        key = f"defense.{option}"
        source = cfg["defense"].get(option)
        if not source:
            raise ValueError(f"{key}: defense {name!r} needs its {option}: a checkpoint file (last.pt), an MLflow "
                             "seed run id, or an MLflow configuration run id (each seed then reads the same seed)")
        paths = _checkpoints_per_seed(str(source), seeds, tracking_uri, Path(storage_path) / option, key)
        for path in sorted(set(paths.values())):
            try:
                state = load_checkpoint(path)          # weights_only: a pickled payload is refused, never run
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None
            try:
                spec = checkpoint_model_spec(state)
            except Exception as err:
                raise ValueError(f"{key}: {path} is not a distfair checkpoint: {err}") from err
            if spec["name"] not in MODELS:
                raise ValueError(f"{key}: {path} holds a {spec['name']!r} model, which this distfair does not know")
            if spec["num_classes"] != num_classes or tuple(spec["in_shape"]) != tuple(in_shape):
                raise ValueError(f"{key}: {path} holds a model for {spec['num_classes']} classes and inputs "
                                 f"{tuple(spec['in_shape'])}, but dataset {cfg['dataset']['name']!r} has "
                                 f"{num_classes} classes and inputs {tuple(in_shape)}")
        for seed, path in paths.items():
            out[seed][option] = path
    return out


def _ray_run_name(parent: str, children: dict[int, str]) -> str:
    """Deterministic for one attempt (never a timestamp), new when interrupted seeds are redone
    in new child runs, so Ray Train never resumes a redone seed from an old checkpoint."""
    attempt = hashlib.sha256(",".join(sorted(children.values())).encode()).hexdigest()[:8]
    return f"distfair-{parent[:12]}-{attempt}"


def default_storage_path() -> str:
    return str(Path(os.getcwd(), "distfair_runs").resolve())


#: bytes the storage probe writes (and syncs): a full file system refuses them
STORAGE_PROBE_BYTES = 64 * 1024


def storage_problem(storage_path: str | Path) -> str | None:
    """Why the run's storage cannot be written (None when it can), found by a real write:
    the folder is created, a probe file of :data:`STORAGE_PROBE_BYTES` written, synced and
    removed. Permission bits alone say nothing for root, and only a write finds a full or
    read-only file system. A remote URI (``s3://``) is left to Ray's own file system layer.
    The probe leaves no trace: folders it had to create are removed again (a command refused
    later, e.g. for its ``init_from``, must leave the working directory as it found it)."""
    storage = str(storage_path)
    if "://" in storage and not storage.startswith("file://"):
        return None
    base = Path(storage[len("file://"):] if storage.startswith("file://") else storage).expanduser().absolute()
    created = [p for p in (base, *base.parents) if not p.exists()]      # deepest first
    probe = base / f".distfair-write-probe-{os.getpid()}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(os.urandom(STORAGE_PROBE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        return f"storage path {base}: cannot write there ({err.strerror or err})"
    finally:
        for path in (probe, *created):
            try:
                path.unlink() if path == probe else path.rmdir()
            except OSError:
                pass
    return None


# ------------------------------------------------------------------------ distfair run --resume
@dataclass
class EarlierAttempt:
    """The newest configuration run of a configuration (``tracking.latest_configuration_run``)
    and which of its seeds already have a FINISHED seed run."""
    run_id: str
    run_name: str
    status: str
    seeds: list[int]
    finished: list[int]

    @property
    def complete(self) -> bool:
        return self.status == "FINISHED" and set(self.seeds) <= set(self.finished)


def find_earlier_attempt(cfg: dict, *, config_path: str, experiment: str, tracking_uri: str,
                         configuration: str | None = None) -> EarlierAttempt | None:
    """What ``distfair run --resume`` continues: the newest attempt of this configuration
    (same :func:`config_hash`, so a different ``--set`` is another configuration; same config
    file stem; same ``configurations:`` entry) in ``experiment``, or None when there is none.
    Reads only: never creates the store or the experiment. Raises LookupError when the
    experiment or the store does not exist, ValueError when the attempt ran other seeds
    (its statistics would mix two seed lists)."""
    experiment_id = tracking.find_experiment(tracking_uri, experiment)
    found = tracking.latest_configuration_run(tracking_uri, experiment_id, config_hash=config_hash(cfg),
                                              config_stem=Path(config_path).stem, configuration=configuration)
    if found is None:
        return None
    seeds = list(cfg["seeds"])
    if found["seeds"] is not None and sorted(found["seeds"]) != sorted(seeds):
        earlier = ",".join(map(str, found["seeds"]))
        raise ValueError(f"the newest attempt (run {found['run_id']}) ran seeds {earlier}, not "
                         f"{','.join(map(str, seeds))}: resume it with --seeds {earlier}, or start a new "
                         "attempt without --resume")
    finished = sorted(s for s, (_, status) in
                      tracking.seed_run_states(tracking_uri, experiment_id, found["run_id"]).items()
                      if status == "FINISHED")
    return EarlierAttempt(run_id=found["run_id"], run_name=found["run_name"], status=found["status"],
                          seeds=found["seeds"] if found["seeds"] is not None else seeds, finished=finished)


def finished_configuration_report(cfg: dict, *, experiment: str, tracking_uri: str, parent_run_id: str) -> RunReport:
    """The report of a configuration run that already FINISHED every seed, read back from
    MLflow (nothing trained, nothing written): the same statistics its summary logged."""
    experiment_id = tracking.find_experiment(tracking_uri, experiment)
    per_seed = {s: m for s, m in tracking.finished_seed_metrics(tracking_uri, experiment_id, parent_run_id).items()
                if s in cfg["seeds"]}
    return RunReport(experiment=experiment, experiment_id=experiment_id, parent_run_id=parent_run_id,
                     tracking_uri=tracking_uri, seeds=sorted(per_seed),
                     metrics=aggregate_seed_metrics([per_seed[s] for s in sorted(per_seed)]), errors={},
                     record=tracking.run_json_artifact(tracking_uri, parent_run_id, CONFIGURATION_RECORD_NAME))
