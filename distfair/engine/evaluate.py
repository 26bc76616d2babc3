"""Evaluation: confusion matrices clean and under attack, sharded over DDP ranks.

Each rank evaluates the samples ``rank, rank + world, ...`` (no padding, so no sample counts
twice) and the K×K count matrices are summed with all-reduce. Batches stream: memory does
not grow with the size of the evaluation set.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from distfair.attacks import Attack
from distfair.metrics import confusion_matrix


def shard(dataset: Dataset, rank: int, world: int) -> Dataset:
    return dataset if world == 1 else Subset(dataset, list(range(rank, len(dataset), world)))


@torch.no_grad()
def _predict(model, x):
    return model(x).argmax(dim=1)


def confusion_counts(model: torch.nn.Module, dataset: Dataset, num_classes: int, *, device: torch.device,
                     batch_size: int, attack: Attack | None = None, generator: torch.Generator | None = None,
                     rank: int = 0, world: int = 1) -> torch.Tensor:
    """K×K counts (rows true, columns predicted) over ``dataset``, summed over all ranks.

    The model is put in eval mode for the forward passes and its previous mode restored.
    """
    was_training = model.training
    model.eval()
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    try:
        for x, y in DataLoader(shard(dataset, rank, world), batch_size=batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            if attack is not None:
                x = attack(model, x, y, generator=generator)
            counts += confusion_matrix(y, _predict(model, x), num_classes)
    finally:
        model.train(was_training)
    if world > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return counts.cpu()
