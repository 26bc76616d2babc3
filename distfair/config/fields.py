"""The fixed parts of the configuration format (described in :mod:`distfair.config`): the
top-level blocks, the ``train`` and ``scaling`` fields with their types, defaults and checks,
the ``eval`` keys and the default evaluation attack, and what a configuration name may be."""
from __future__ import annotations

import re
from typing import Any, Callable

TOP_LEVEL = ("description", "defense", "dataset", "model", "attack", "train", "eval", "scaling",
             "seeds", "space", "configurations")
#: what a configuration name may contain (it becomes part of MLflow run names and tags)
CONFIGURATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# field: (type, default, check or None). A check returns an error text or None.
_positive = lambda v: None if v > 0 else f"must be > 0, got {v}"           # noqa: E731
_non_negative = lambda v: None if v >= 0 else f"must be >= 0, got {v}"     # noqa: E731
_at_least_one = lambda v: None if v >= 1 else f"must be >= 1, got {v}"     # noqa: E731


def _one_of(*choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def _resource_map(v) -> str | None:
    ok = all(isinstance(k, str) and isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0
             and x != float("inf") for k, x in v.items())
    return None if ok else f"must map resource names to finite non-negative numbers, got {v!r}"


TRAIN_FIELDS: dict[str, tuple[Any, Any, Callable | None]] = {
    "epochs": (int, 10, _at_least_one),
    "batch_size": (int, 64, _at_least_one),
    "eval_batch_size": (int, 256, _at_least_one),
    "optimizer": (str, "sgd", _one_of("sgd", "adam", "adamw")),
    "lr": (float, 0.05, _positive),
    "momentum": (float, 0.9, lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v}"),
    "weight_decay": (float, 5e-4, _non_negative),
    "nesterov": (bool, False, None),
    "schedule": (str, "none", _one_of("none", "step", "multistep", "cosine")),
    "step_size": (int, 7, _at_least_one),
    "gamma": (float, 0.1, _positive),
    "milestones": (list, [], lambda v: None if all(isinstance(m, int) and m >= 1 for m in v)
                   else f"must be a list of positive integers, got {v!r}"),
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
    "num_workers": (int, 1, _at_least_one),
    "use_gpu": (bool, False, None),
    "resources_per_worker": (dict, {"CPU": 1.0}, _resource_map),
    # alternative to resources_per_worker: one seed run's total, split evenly over its workers
    # (e.g. {CPU: 2, GPU: 0.25} with one worker packs four seed runs on one GPU)
    "resources_per_seed": (dict, None, _resource_map),
    "placement_strategy": (str, "PACK", _one_of("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")),
    "max_concurrent_seeds": (int, None, _at_least_one),
    "max_failures": (int, 0, _non_negative),
}

EVAL_FIELDS = ("attacks", "subgroups", "summaries")
DEFAULT_EVAL_ATTACK = {"name": "pgd20", "attack": "pgd", "steps": 20}
