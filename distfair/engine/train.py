"""Train and evaluate one (configuration, seed): plain PyTorch, DDP-aware, no Ray, no MLflow.

:func:`run_seed` is what every Ray Train worker runs for each of its seeds. Distribution is
passed in (rank, world size, device; the process group already initialised by the caller),
and everything a caller wants to record arrives through the ``on_epoch`` callback and the
returned :class:`SeedResult`. It is three steps: :func:`build_seed_training` (data, model,
attack, defense and its setup, optimiser, schedule, resume state), :func:`train_epochs` (each
:func:`train_epoch` followed by :func:`save_checkpoint`; :func:`restore_checkpoint` is its
inverse), then the validation pass and the final evaluation.

Determinism: ``seed`` seeds model initialisation (identical on every rank; DDP broadcasts rank
0's parameters anyway), the data order (``DistributedSampler(seed=...)`` + ``set_epoch``) and
the attacks' random starts (a generator per (seed, epoch, rank)), and, where the dataset block
says ``split_seed: per_seed``, the data split. The same seed gives the
same metrics on CPU, and a run resumed from its epoch checkpoint continues exactly as an
uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from distfair.registry import options as _options
from distfair.attacks import build_attack
from distfair.data import DataBundle, build_dataset
from distfair.defenses import Defense, DefenseContext, build_defense
from distfair.engine import accel
from distfair.engine.checkpoint import CHECKPOINT_NAME, restore_checkpoint, save_checkpoint  # noqa: F401 - re-exported
from distfair.engine.steps import Diverged, run_steps  # noqa: F401 - Diverged re-exported
from distfair.evaluation import confusion_counts, final_evaluation, validation_evaluation
from distfair.evaluation.summaries import SummaryDocuments
from distfair.models import build_model, load_checkpoint, unwrap_model
from distfair.results.names import CLEAN, PER_CLASS_ACC, TEST, VAL, MetricKey
from distfair.seeding import generator, seed_everything

EpochCallback = Callable[[int, dict, "Path | None"], None]


@dataclass
class SeedResult(SummaryDocuments):
    seed: int
    metrics: dict[str, float | None]
    confusion: dict[str, list[list[int]]]                 # "clean" and each eval attack name
    per_class_acc: dict[str, list[float | None]]
    history: list[dict[str, float]]
    class_names: list[str]
    final_model_path: str | None       # the last epoch checkpoint (model, optimiser, RNG, ...)
    param_fingerprints: list[str] = field(default_factory=list)   # one per DDP rank
    # evaluation summaries (distfair.evaluation.summaries): name -> {"artifact": file name,
    # "document": JSON} (subgroup reports, targeted success rates, self-checks, AUC_acc, ...)
    summaries: dict[str, dict] = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)               # the summaries' findings (self-checks)
    flags_path: str | None = None                                  # per-sample robust flags (.npz)
    evaluations: list[dict] = field(default_factory=list)          # eval.attacks: name, attack, target
    eval_errors: dict[str, str] = field(default_factory=dict)      # failed evaluation -> error (no metrics)
    tags: dict[str, str] = field(default_factory=dict)             # run tags (AutoAttack versions, errors)
    # evaluations whose predictor can abstain: name -> {"abstained": abstentions per true class
    # (not in ``confusion``), "per_class_rejection": rates}; empty for the default arg-max
    abstentions: dict[str, dict] = field(default_factory=dict)
    # the structured sources of the result record (distfair.results.record): the resolved configuration,
    # the test evaluations' and the validation pass's metric dicts, the timings of the final step
    config: dict = field(default_factory=dict)
    per_eval: dict[str, dict] = field(default_factory=dict)        # "clean" and each entry -> metrics
    val_per_eval: dict[str, dict] = field(default_factory=dict)    # "clean", the primary entry (and grid entries)
    # the summaries' metrics across evaluations per split ("test" logged bare, "val" as val_<m>)
    summary_metrics: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)        # train_time_s, val_time_s, eval_time_s

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def build_optimizer(params, train: dict) -> torch.optim.Optimizer:
    params = list(params)
    fast = accel.optimizer_kwargs(params, accel.option(train, "fused_optimizer"))   # {} by default
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=train["lr"], momentum=train["momentum"],
                               weight_decay=train["weight_decay"], nesterov=train["nesterov"], **fast)
    cls = torch.optim.Adam if train["optimizer"] == "adam" else torch.optim.AdamW
    return cls(params, lr=train["lr"], weight_decay=train["weight_decay"], **fast)


def build_scheduler(optimizer, train: dict):
    """Stepped once per epoch. ``none`` keeps the learning rate constant."""
    kind = train["schedule"]
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=train["step_size"], gamma=train["gamma"])
    if kind == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=train["milestones"], gamma=train["gamma"])
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train["epochs"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def metric_record(clean: dict, attacked: list[tuple[str, dict]]) -> dict[str, float | None]:
    """Flat metric names: ``clean_<m>``; the primary attack bare (``robust_acc`` is its ``acc``)
    and every attack as ``<name>/<m>``. ``per_class_acc`` lists go to artifacts instead.
    Subgroup keys nest the same way: ``clean_group_acc/gender/F``, ``pgd20/group_gap/gender``.
    The names: ``distfair.results.names.MetricKey``."""
    def keyed(evaluation: str | None, metrics: dict) -> dict:
        return {MetricKey.of(TEST, evaluation, k).mlflow_key(): v for k, v in metrics.items() if k != PER_CLASS_ACC}

    out = keyed(CLEAN, clean)
    for i, (name, metrics) in enumerate(attacked):
        if i == 0:
            out.update(keyed(None, metrics))
        out.update(keyed(name, metrics))
    return out


def validation_record(per_eval: dict[str, dict], primary: str | None) -> dict[str, float | None]:
    """The end-of-training validation pass as flat ``val_*`` metrics, named like the test
    metrics with a ``val_`` prefix: ``val_clean_<m>`` clean, ``val_<m>`` under the primary
    evaluation attack (``val_robust_acc``, ``val_worst_class_acc``, ``val_group_gap/<attr>``).
    These are what sweeps select on; the test metrics are only reported. The names:
    ``distfair.results.names.MetricKey`` (split ``val``)."""
    out = {MetricKey.of(VAL, CLEAN, k).mlflow_key(): v for k, v in per_eval[CLEAN].items() if k != PER_CLASS_ACC}
    if primary is not None:
        out.update({MetricKey.of(VAL, None, k).mlflow_key(): v for k, v in per_eval[primary].items()
                    if k != PER_CLASS_ACC})
    return out


def parameter_fingerprint(model: nn.Module) -> str:
    """SHA-256 of all parameters and buffers: equal on every DDP rank iff they are in sync."""
    h = hashlib.sha256()
    for name, tensor in sorted(unwrap_model(model).state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _gather_strings(value: str, world: int) -> list[str]:
    if world == 1:
        return [value]
    out: list = [None] * world
    dist.all_gather_object(out, value)
    return out


def _train_loader(data: DataBundle, batch_size: int, seed: int, rank: int, world: int, *,
                  device: torch.device | None = None, log: Callable[[str], None] | None = None):
    """The sampler and the loader of this rank's shard. With ``device`` (``train.data_on_device``)
    a tensor training set is held there (:class:`accel.DeviceLoader`: the same batches)."""
    sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    # Drop a ragged last batch (BatchNorm cannot train on a single sample) unless it is all there is.
    drop_last = len(sampler) > batch_size
    if device is not None:
        try:
            return sampler, accel.DeviceLoader(data.train, sampler=sampler, batch_size=batch_size,
                                               drop_last=drop_last, device=device)
        except ValueError as err:      # per-access transforms (CIFAR's augmentation) stay on the DataLoader
            (log or print)(f"train.data_on_device: {err}; training batches come from the DataLoader")
    return sampler, DataLoader(data.train, batch_size=batch_size, sampler=sampler, drop_last=drop_last)


def load_initial_weights(model: nn.Module, path: str | Path, *, model_name: str, num_classes: int) -> None:
    """Start from the model weights of an earlier run's checkpoint (the papers' fine-tuning
    protocol: adversarial training first, fairness fine-tuning after). The checkpoint must
    come from the same architecture with the same class count."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train.init_from: no checkpoint at {path}")
    try:
        state = load_checkpoint(path)
    except ValueError as err:           # a pickled payload or not a checkpoint: never unpickled
        raise ValueError(f"train.init_from: {err}") from None
    weights = state.get("model") if isinstance(state, dict) and "model" in state else state
    if not isinstance(weights, dict):
        raise ValueError(f"train.init_from: {path} holds no model state dict")
    found_name, found_k = state.get("model_name"), state.get("num_classes")
    if found_name is not None and found_name != model_name:
        raise ValueError(f"train.init_from: {path} is a {found_name!r} model, this run trains {model_name!r}")
    if found_k is not None and found_k != num_classes:
        raise ValueError(f"train.init_from: {path} has {found_k} classes, this run's data has {num_classes}")
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    reshaped = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or reshaped:
        raise ValueError(f"train.init_from: {path} does not match {model_name!r}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, different shapes {reshaped[:5]}")
    model.load_state_dict(weights)


@dataclass
class SeedTraining:
    """Everything one seed's training holds (what :func:`build_seed_training` builds)."""
    cfg: dict
    seed: int
    workdir: Path
    device: torch.device
    rank: int
    world: int
    data: DataBundle
    model: nn.Module                   # the plain model (checkpointed, evaluated)
    train_model: nn.Module             # the model the steps run through: DDP-wrapped when world > 1
    attack: object | None
    defense: Defense
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: DistributedSampler
    loader: DataLoader
    start_epoch: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def checkpoint_path(self) -> Path:
        return self.workdir / CHECKPOINT_NAME


def defense_context(data: DataBundle, seed: int, *, device: torch.device, rank: int, world: int,
                    references: dict[str, str] | None) -> DefenseContext:
    """The context :meth:`Defense.setup` receives; its generators are (seed, "defense", labels..., rank)."""
    def make_generator(*labels: object) -> torch.Generator:
        return generator(seed, "defense", *labels, rank, device=device)

    return DefenseContext(num_classes=data.num_classes, in_shape=tuple(data.in_shape), bounds=tuple(data.bounds),
                          class_names=tuple(data.class_names), device=device, make_generator=make_generator,
                          rank=rank, world=world, references=dict(references or {}))


def build_seed_training(cfg: dict, seed: int, *, workdir: Path, device: torch.device, rank: int, world: int,
                        log: Callable[[str], None], init_from: str | Path | None = None,
                        references: dict[str, str] | None = None) -> SeedTraining:
    """Build data, model, attack, defense (set up with its context), optimiser and schedule,
    then restore the epoch checkpoint if there is one (else apply ``init_from``), then wrap
    the model for DDP and build the training loader. The order of global RNG draws is part of
    the determinism contract: keep it."""
    train_cfg = cfg["train"]
    seed_everything(seed)
    # run_seed: `dataset.split_seed: per_seed` draws this seed's own split (spoken_words)
    data = build_dataset(cfg["dataset"]["name"], run_seed=seed, **_options(cfg["dataset"], "name"))
    model = build_model(cfg["model"]["name"], num_classes=data.num_classes, in_shape=data.in_shape,
                        **_options(cfg["model"], "name")).to(device)
    accel.prepare_model(model, train_cfg, log)         # train.channels_last (in place; no RNG draw)
    attack = None
    if cfg.get("attack"):
        attack = build_attack(cfg["attack"]["name"], bounds=data.bounds, **_options(cfg["attack"], "name"))
    defense = build_defense(cfg["defense"]["name"], attack=attack, num_classes=data.num_classes,
                            **_options(cfg["defense"], "name"))
    defense.setup(defense_context(data, seed, device=device, rank=rank, world=world, references=references))
    accel.autocast(accel.option(train_cfg, "precision"), device)    # train.precision: refused now, not at epoch 1
    optimizer = build_optimizer(model.parameters(), train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg)
    run = SeedTraining(cfg=cfg, seed=seed, workdir=workdir, device=device, rank=rank, world=world, data=data,
                       model=model, train_model=model, attack=attack, defense=defense, optimizer=optimizer,
                       scheduler=scheduler, sampler=None, loader=None)
    if run.checkpoint_path.exists():
        restore_checkpoint(run)
        log(f"seed {seed}: resumed after epoch {run.start_epoch}")
    elif init_from:
        load_initial_weights(model, init_from, model_name=cfg["model"]["name"], num_classes=data.num_classes)
        log(f"seed {seed}: initialised from {init_from}")
    if accel.option(train_cfg, "compile"):          # the steps only; checkpoints and evaluation use `model`
        run.train_model = accel.compiled(model)
    if world > 1:
        run.train_model = DistributedDataParallel(run.train_model,
                                                  device_ids=[device.index] if device.type == "cuda" else None)
    run.sampler, run.loader = _train_loader(data, train_cfg["batch_size"], seed, rank, world, log=log,
                                            device=device if accel.option(train_cfg, "data_on_device") else None)
    return run


def _to_device(batch, device: torch.device):
    if isinstance(batch, (list, tuple)):
        return type(batch)(t.to(device) if isinstance(t, torch.Tensor) else t for t in batch)
    return batch.to(device)


def train_epoch(run: SeedTraining, epoch: int) -> dict[str, float]:
    """One epoch: the defense's epoch start, its steps over its batches, the schedule step and
    the per-epoch validation. Returns the epoch's row (without ``epoch``)."""
    seed, device, rank, world, data, defense = run.seed, run.device, run.rank, run.world, run.data, run.defense
    eval_bs = run.cfg["train"]["eval_batch_size"]
    t0 = time.perf_counter()
    run.sampler.set_epoch(epoch)
    attack_gen = generator(seed, "train-attack", epoch, rank, device=device)
    prepared = defense.start_epoch(run.model, data.train, epoch=epoch, batch_size=eval_bs,
                                   generator=generator(seed, "epoch-start", epoch, rank, device=device))
    run.train_model.train()
    # the steps' numbers and the divergence check stay on the device until the epoch's end
    # (one all-reduce, one read: distfair.engine.steps); a NaN or infinite loss raises Diverged
    batches = (_to_device(batch, device) for batch in defense.batches(run.loader, epoch=epoch))
    means = run_steps(defense, run.train_model, batches, run.optimizer, epoch=epoch, device=device,
                      generator=attack_gen, world=world, precision=accel.option(run.cfg["train"], "precision"))
    lr = run.optimizer.param_groups[0]["lr"]
    with warnings.catch_warnings():
        if not means:       # no step this epoch (a data-free warm-up): the schedule steps all the same, as
            # the official FERD code's does; PyTorch's warning about the order is then expected
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        run.scheduler.step()
    row = {f"train_{k}": v for k, v in means.items()}
    row["lr"] = lr
    row.update({f"defense_{k}": float(v) for k, v in prepared.items()})
    predictor = defense.epoch_predictor(epoch)    # abstentions are in no cell: accuracies divide by len(val)
    val_clean = confusion_counts(run.model, data.val, data.num_classes, device=device, batch_size=eval_bs,
                                 rank=rank, world=world, predictor=predictor)
    row["val_clean_acc"] = float(val_clean.trace()) / float(len(data.val))
    if run.attack is not None:
        val_adv, val_soft = confusion_counts(run.model, data.val, data.num_classes, device=device,
                                             batch_size=eval_bs, attack=run.attack, soft=True,
                                             generator=generator(seed, "val-attack", epoch, rank, device=device),
                                             rank=rank, world=world, predictor=predictor)
        row["val_robust_acc"] = float(val_adv.trace()) / float(len(data.val))
        row.update(defense.validation_metrics(val_adv, val_soft))     # the defense's own (Sy-FAR's val_sym)
    row["epoch_time_s"] = time.perf_counter() - t0
    return row


def train_epochs(run: SeedTraining, *, on_epoch: EpochCallback | None, log: Callable[[str], None]) -> None:
    """The epochs from ``run.start_epoch`` on, each followed by its checkpoint and ``on_epoch``.
    An epoch whose loss became NaN or infinite raises :class:`Diverged` (``loss is nan at
    epoch e, batch b``, both 1-based) before its checkpoint and ``on_epoch``: the last
    checkpoint stays the previous epoch's."""
    epochs = run.cfg["train"]["epochs"]
    for epoch in range(run.start_epoch, epochs):
        row = train_epoch(run, epoch)
        run.history.append({"epoch": epoch, **row})
        saved = save_checkpoint(run, epoch)
        log(f"seed {run.seed}: epoch {epoch + 1}/{epochs} loss {row.get('train_loss', math.nan):.4f} "
            f"val acc {row['val_clean_acc']:.3f}"
            + (f" robust {row['val_robust_acc']:.3f}" if "val_robust_acc" in row else "")
            + f" ({row['epoch_time_s']:.1f}s)")
        if on_epoch is not None:
            on_epoch(epoch, run.history[-1], saved)


def run_seed(cfg: dict, seed: int, *, workdir: str | Path, device: torch.device | str = "cpu",
             rank: int = 0, world: int = 1, on_epoch: EpochCallback | None = None,
             log: Callable[[str], None] | None = None, init_from: str | Path | None = None,
             references: dict[str, str] | None = None) -> SeedResult | None:
    """Train ``cfg`` with ``seed``, checkpointing each epoch under ``workdir``; then evaluate
    on the test set clean and under each ``eval.attacks`` entry.

    If ``workdir/last.pt`` exists the run resumes from it; otherwise, with ``init_from`` (a
    checkpoint file), the model starts from those weights. ``references`` (name -> local
    file, resolved by the caller) reach the defense's setup as ``DefenseContext.references``.
    Returns the result on rank 0 and None on the other ranks. ``on_epoch(epoch, row,
    checkpoint_path)`` is called on every rank after each epoch (``checkpoint_path`` only on
    rank 0).
    """
    device = torch.device(device)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = log or (lambda msg: None)
    run = build_seed_training(cfg, seed, workdir=workdir, device=device, rank=rank, world=world, log=log,
                              init_from=init_from, references=references)
    train_epochs(run, on_epoch=on_epoch, log=log)
    model, data, history, eval_bs = run.model, run.data, run.history, cfg["train"]["eval_batch_size"]

    # ---- what the predict step needs (fitted on the training set), the validation pass that
    # selection uses, then the final evaluation on the test set
    t_finish = time.perf_counter()
    model.eval()
    finished = run.defense.finish_training(model, data.train, batch_size=eval_bs)
    finish_time = time.perf_counter() - t_finish
    t_val = time.perf_counter()
    predictor = run.defense.predictor()
    val_final = validation_evaluation(model, data, cfg["eval"], seed, device=device, batch_size=eval_bs,
                                      rank=rank, world=world, log=log, predictor=predictor)
    val_time = time.perf_counter() - t_val
    final = final_evaluation(model, data, cfg["eval"], seed, workdir=workdir, device=device, batch_size=eval_bs,
                             rank=rank, world=world, log=log, predictor=predictor)
    fingerprints = _gather_strings(parameter_fingerprint(model), world)
    if rank != 0:
        return None
    metrics = metric_record(final.per_eval["clean"], [(e["name"], final.per_eval[e["name"]])
                                                      for e in cfg["eval"]["attacks"]])
    metrics.update(final.metrics)
    metrics.update(validation_record(val_final.per_eval,
                                     cfg["eval"]["attacks"][0]["name"] if cfg["eval"]["attacks"] else None))
    metrics.update({f"val_{k}": v for k, v in val_final.metrics.items()})
    metrics.update({f"finish_{k}": float(v) for k, v in finished.items()})
    if finished:
        metrics["finish_time_s"] = finish_time
    metrics["val_time_s"] = val_time
    metrics["train_time_s"] = float(sum(h["epoch_time_s"] for h in history))
    metrics["eval_time_s"] = final.eval_time_s
    timings = {k: metrics[k] for k in ("train_time_s", "val_time_s", "eval_time_s")}
    return SeedResult(
        seed=seed, metrics=metrics, confusion=final.confusion, per_class_acc=final.per_class_acc,
        history=history, class_names=list(data.class_names), final_model_path=str(run.checkpoint_path),
        param_fingerprints=fingerprints, summaries=final.summaries, checks=final.checks, flags_path=final.flags_path,
        eval_errors=final.errors, tags=final.tags, abstentions=final.abstentions,
        evaluations=[{"name": e["name"], "attack": e["attack"], "target": e.get("target")}
                     for e in cfg["eval"]["attacks"]],
        config=cfg, per_eval=final.per_eval, val_per_eval=val_final.per_eval, timings=timings,
        summary_metrics={"test": final.metrics, "val": val_final.metrics})
