"""The fixed parts of the configuration format (described in :mod:`distfair.config`): the
top-level blocks, the ``train`` and ``scaling`` fields with their types, defaults and checks,
the ``eval`` keys and the default evaluation attack, and what a configuration name may be."""
from __future__ import annotations

import re
from typing import Any, Callable

from distfair.config.limits import shown

TOP_LEVEL = ("description", "defense", "dataset", "model", "attack", "train", "eval", "scaling",
             "seeds", "space", "configurations")
#: what a configuration name may contain (it becomes part of MLflow run names and tags)
CONFIGURATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# field: (type, default, check or None). A check returns an error text or None.
_positive = lambda v: None if v > 0 else f"must be > 0, got {v}"           # noqa: E731
_non_negative = lambda v: None if v >= 0 else f"must be >= 0, got {v}"     # noqa: E731

#: upper bounds on sizes (issue 28 §7): far beyond any study, small enough that a typo of a few
#: digits is refused at once instead of running for ever or allocating terabytes on a worker
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 20           # 1,048,576 samples in one batch
MAX_WORKERS = 4096                 # Ray Train workers of one seed run
MAX_FAILURES = 1000                # retries of one seed run
MAX_CONCURRENT_SEEDS = 1_000_000   # as many as ``seeds: <count>`` may run


def _between(low: int, high: int):
    return lambda v: (None if low <= v <= high else f"must be >= {low}, got {v}" if v < low
                      else f"must be <= {high}, got {v}")


def _one_of(*choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {shown(v)}"


def _resource_map(v) -> str | None:
    ok = all(isinstance(k, str) and isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0
             and x != float("inf") for k, x in v.items())
    return None if ok else f"must map resource names to finite non-negative numbers, got {shown(v)}"


TRAIN_FIELDS: dict[str, tuple[Any, Any, Callable | None]] = {
    "epochs": (int, 10, _between(1, MAX_EPOCHS)),
    "batch_size": (int, 64, _between(1, MAX_BATCH_SIZE)),
    "eval_batch_size": (int, 256, _between(1, MAX_BATCH_SIZE)),
    "optimizer": (str, "sgd", _one_of("sgd", "adam", "adamw")),
    "lr": (float, 0.05, _positive),
    "momentum": (float, 0.9, lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v}"),
    "weight_decay": (float, 5e-4, _non_negative),
    "nesterov": (bool, False, None),
    "schedule": (str, "none", _one_of("none", "step", "multistep", "cosine")),
    "step_size": (int, 7, _between(1, MAX_EPOCHS)),
    "gamma": (float, 0.1, _positive),
    "milestones": (list, [], lambda v: None if all(isinstance(m, int) and 1 <= m <= MAX_EPOCHS for m in v)
                   else f"must be a list of positive integers <= {MAX_EPOCHS}, got {shown(v)}"),
    # start from an earlier run's final weights: a checkpoint file, an MLflow seed run id, or an
    # MLflow configuration run id (then each seed starts from that configuration's same seed)
    "init_from": (str, None, lambda v: None if v.strip() else "must be a path or an MLflow run id"),
    # the fast training path (distfair/engine/accel.py); every default keeps the plain fp32 path
    "precision": (str, "fp32", _one_of("fp32", "bf16")),   # autocast over the training step only
    "channels_last": (bool, False, None),                  # NHWC weights for 2-D convolutional models
    "compile": (bool, False, None),                        # train through torch.compile(model)
    "fused_optimizer": (bool, False, None),                # fused (else foreach) optimiser kernels
    "data_on_device": (bool, False, None),                 # a tensor training set held on the device
}

SCALING_FIELDS: dict[str, tuple[Any, Any, Callable | None]] = {
    "num_workers": (int, 1, _between(1, MAX_WORKERS)),
    "use_gpu": (bool, False, None),
    "resources_per_worker": (dict, {"CPU": 1.0}, _resource_map),
    # alternative to resources_per_worker: one seed run's total, split evenly over its workers
    # (e.g. {CPU: 2, GPU: 0.25} with one worker packs four seed runs on one GPU)
    "resources_per_seed": (dict, None, _resource_map),
    "placement_strategy": (str, "PACK", _one_of("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")),
    "max_concurrent_seeds": (int, None, _between(1, MAX_CONCURRENT_SEEDS)),
    "max_failures": (int, 0, _between(0, MAX_FAILURES)),
}

EVAL_FIELDS = ("attacks", "subgroups", "summaries")
DEFAULT_EVAL_ATTACK = {"name": "pgd20", "attack": "pgd", "steps": 20}
