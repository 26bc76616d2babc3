"""Each subgroup's training-set size |X_train,s| (speech paper 003 §5.2.2), recorded with the run.

§5.2.2 asks whether a group's representation in the training data goes with its false
rejections: "we investigate if having a higher subgroup representation in the training set
results in higher AUC_FPR. Here we seek to measure the correlation between the size of subgroup
training data |X_train,s| where s is the subgroup." The correlation itself is computed across
runs by ``distfair analyze`` (``distfair.report.representation``); this module counts, for the
groups the test evaluation reports (``eval.subgroups`` resolved on the test set, so the same
kept groups, the same exclusions and the same intersections), how many **training** samples
fall in each group. The count is over ``DataBundle.train`` as built (the validation samples
carved from the training data are not in it).

- A class -> group map, or a metadata attribute with one value per class: a training sample
  belongs to its class's group (the training set's classes from :func:`dataset_labels`).
- A per-sample metadata attribute (or an intersection of several): its value(s) for each
  training sample come from ``DataBundle.train_attributes`` (class-level components through
  the sample's class), joined as the test groups are (``female|us``).

A group with no training sample counts 0. A training sample whose value is a group the test
set left out (``exclude``, ``min_group_size``) or does not have is in no reported group. An
attribute whose training values are not available (no ``train_attributes`` for it, or
training classes not exposed) is skipped with the reason; nothing raises after training.

Pure numpy: no MLflow, no Ray.
"""
from __future__ import annotations

import numpy as np

from distfair.data import DataBundle
from distfair.evaluation.subgroups import INTERSECT_SEPARATOR, Grouping, dataset_labels


def _training_values(grouping: Grouping, data: DataBundle, labels: np.ndarray | None) -> list[str] | str:
    """The group name of every training sample under a per-sample metadata ``grouping``, or
    the reason there are none."""
    columns = []
    for name in grouping.components:
        if name in data.class_attributes:
            if labels is None:
                return f"{name!r} is class-level and the training set does not expose its classes"
            values = [str(v) for v in data.class_attributes[name]]
            columns.append([values[c] for c in labels])
        elif name in data.train_attributes:
            values = [str(v) for v in data.train_attributes[name]]
            if len(values) != len(data.train):
                return f"the dataset gives {len(values)} training values of {name!r} for {len(data.train)} samples"
            columns.append(values)
        else:
            return f"the dataset has no training-set values of {name!r} (DataBundle.train_attributes)"
    return [INTERSECT_SEPARATOR.join(combo) for combo in zip(*columns)]


def training_group_sizes(groupings: list[Grouping], data: DataBundle) -> tuple[dict[str, dict[str, int]],
                                                                               dict[str, str]]:
    """(attribute -> {kept group -> training samples in it}, attribute -> why it was skipped)
    for the test ``groupings`` (module docstring)."""
    labels = dataset_labels(data.train)
    sizes: dict[str, dict[str, int]] = {}
    skipped: dict[str, str] = {}
    for grouping in groupings:
        if grouping.kind == "class":
            if labels is None:
                skipped[grouping.attribute] = "the training set does not expose its classes"
                continue
            index = np.asarray(grouping.labels)[labels]
        else:
            values = _training_values(grouping, data, labels)
            if isinstance(values, str):
                skipped[grouping.attribute] = values
                continue
            position = {name: i for i, name in enumerate(grouping.names)}
            index = np.array([position.get(v, -1) for v in values], dtype=int)
        counts = np.bincount(index[index >= 0], minlength=len(grouping.names))
        sizes[grouping.attribute] = {name: int(counts[i]) for i, name in enumerate(grouping.names)}
    return sizes, skipped
