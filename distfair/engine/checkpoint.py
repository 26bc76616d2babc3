"""The epoch checkpoint of one seed (methods.md "Conventions": resumable seeds): model, optimiser,
schedule, the global RNG as plain data (``torch.load(weights_only=True)`` reads it back), the
history and every rank's defense state, written atomically by rank 0. ``restore_checkpoint``
puts a run back where it was, so the next epoch continues exactly as it would have."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from distfair.defenses import Defense
from distfair.models import load_checkpoint
from distfair.seeding import rng_state, set_rng_state

if TYPE_CHECKING:
    from distfair.engine.train import SeedTraining

#: the file name of a seed's epoch checkpoint in its working directory
CHECKPOINT_NAME = "last.pt"


def _on_cpu(value):
    """``value`` with every tensor moved to the CPU (defense state gathered across ranks)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


def _defense_states(defense: Defense, world: int) -> list[dict]:
    """Every rank's ``defense.state_dict()`` in rank order (a collective: all ranks call it)."""
    own = _on_cpu(defense.state_dict())
    if world == 1:
        return [own]
    out: list = [None] * world
    dist.all_gather_object(out, own)
    return out


def _plain_rng_state() -> dict:
    """:func:`rng_state` as plain data that ``torch.load(weights_only=True)`` reads back:
    NumPy's key array becomes a tensor (a pickled ndarray would need NumPy's globals)."""
    state = rng_state()
    name, keys, pos, has_gauss, cached = state["numpy"]
    state["numpy"] = (str(name), torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))
    return state


def _set_plain_rng_state(state: dict) -> None:
    """Inverse of :func:`_plain_rng_state`. RNG states are CPU byte tensors whatever device
    the checkpoint was mapped to."""
    import numpy as np

    state = _on_cpu(state)
    name, keys, pos, has_gauss, cached = state["numpy"]
    set_rng_state({**state, "numpy": (name, np.asarray(keys.numpy(), dtype=np.uint32), pos, has_gauss, cached)})


def save_checkpoint(run: SeedTraining, epoch: int) -> Path | None:
    """The epoch checkpoint: model, optimiser, schedule, global RNG, history and every rank's
    defense state. Called on every rank (the defense states are gathered); rank 0 writes it,
    atomically, and gets its path; the other ranks get None."""
    defense_states = _defense_states(run.defense, run.world)
    if run.rank != 0:
        return None
    state = {"seed": run.seed, "epoch": epoch, "model": run.model.state_dict(),
             "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
             "rng": _plain_rng_state(),
             "history": run.history, "model_name": run.cfg["model"]["name"], "model_config": dict(run.cfg["model"]),
             "num_classes": run.data.num_classes,
             "in_shape": tuple(run.data.in_shape), "defense": defense_states}
    tmp = run.workdir / (CHECKPOINT_NAME + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, run.checkpoint_path)       # atomic: a crash never leaves a half-written checkpoint
    return run.checkpoint_path


def restore_checkpoint(run: SeedTraining) -> None:
    """Load the epoch checkpoint into ``run`` (after the defense's setup, before any epoch):
    the next epoch continues exactly as it would have without the interruption."""
    path = run.checkpoint_path
    state = load_checkpoint(path, map_location=run.device)     # weights_only: a pickled payload is refused
    if state.get("seed") != run.seed:
        raise RuntimeError(f"checkpoint {path} belongs to seed {state.get('seed')}, not {run.seed}")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    defense_states = state.get("defense") or []        # absent in checkpoints older than the key
    if len(defense_states) == run.world:
        run.defense.load_state_dict(defense_states[run.rank])
    elif any(defense_states):
        raise RuntimeError(f"checkpoint {path} holds the defense state of {len(defense_states)} rank(s), "
                           f"this run has {run.world}: resume with the same number of workers")
    _set_plain_rng_state(state["rng"])
    run.start_epoch, run.history = state["epoch"] + 1, state["history"]
