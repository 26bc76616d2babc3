"""The checkpoints a configuration reads before anything trains: ``train.init_from`` and the
defense's reference files (e.g. FERD's ``teacher``), each a file or an MLflow run id, resolved
to one local path per seed and checked (weights only, the dataset's classes and input shape)."""
from __future__ import annotations

from pathlib import Path

from distfair import tracking
from distfair.config.seeds import planned_seeds


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
    paths = _checkpoints_per_seed(source, planned_seeds(cfg), tracking_uri, Path(storage_path) / "init_from",
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
    seeds = planned_seeds(cfg)
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
