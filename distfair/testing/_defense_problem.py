"""The contract problem of the defense checks (``distfair.testing.defenses``): a tiny (1, 6, 6)
three-class task, its training attack, models, batches, contexts, a teacher checkpoint for the
defenses that read one, and the defense built with its ``TEST_OPTIONS``."""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import nn

from distfair.attacks import PGD
from distfair.defenses import Defense, DefenseContext

K = 3
BATCH = 12
IN_SHAPE = (1, 6, 6)
#: the model name the contract teacher is registered under while :func:`contract_references` runs
TEACHER_MODEL = "contract_teacher"
#: the epoch the divergence check turns the loss NaN in (0-based: reported as "epoch 2")
EPOCH_UNDER_TEST = 1

References = Mapping[str, str]


class ContractTeacher(nn.Module):
    """A frozen teacher for (1, 6, 6) inputs with BatchNorm (so FERD's L_bn exists) and a
    ``feature_layer`` (FERD's information bottleneck)."""

    feature_layer = "features"

    def __init__(self, *, num_classes: int, in_shape: tuple):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_shape[0], 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4 * in_shape[1] * in_shape[2], num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@contextmanager
def contract_references(directory: str | Path) -> Iterator[dict[str, str]]:
    """The reference files of the contract problem, written into ``directory``: ``teacher``, an
    engine-format checkpoint of :class:`ContractTeacher` (BatchNorm statistics of 64 random
    inputs), whose model name is registered in ``distfair.models.MODELS`` while the context runs."""
    from distfair.models import MODELS

    had, previous = TEACHER_MODEL in MODELS, MODELS.get(TEACHER_MODEL) if TEACHER_MODEL in MODELS else None
    MODELS[TEACHER_MODEL] = ContractTeacher
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            teacher = ContractTeacher(num_classes=K, in_shape=IN_SHAPE)
            with torch.no_grad():
                teacher.train()(torch.rand(64, *IN_SHAPE))
        path = Path(directory) / "contract_teacher.pt"
        torch.save({"model": teacher.state_dict(), "model_name": TEACHER_MODEL,
                    "model_config": {"name": TEACHER_MODEL}, "num_classes": K, "in_shape": IN_SHAPE}, path)
        yield {"teacher": str(path)}
    finally:
        if had:
            MODELS[TEACHER_MODEL] = previous
        else:
            del MODELS[TEACHER_MODEL]


def make_attack() -> PGD:
    """The training attack of the contract problem: ℓ∞ PGD, ε 0.1, two steps."""
    return PGD(eps=0.1, steps=2, bounds=(0.0, 1.0))


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_cnn(k: int = K) -> nn.Module:
    """BatchNorm makes train/eval mode observable (and must be restored by the attack)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, k))


def tiny_linear(k: int = K) -> nn.Module:
    """No BatchNorm: outputs do not depend on the order of train/eval passes, so losses can
    be recomputed by hand and compared exactly."""
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, k))


def batch(k: int = K, labels=None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (B, 1, 6, 6) in [0, 1], y (B,)): a fixed batch of the contract problem."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(BATCH) % k if labels is None else torch.as_tensor(labels)
    x = torch.rand(len(y), *IN_SHAPE, generator=g)
    return x, y


def seeded_model() -> nn.Module:
    torch.manual_seed(0)
    return tiny_cnn().train()


def context(references: References | None = None, *, rank: int = 0, world: int = 1,
            per_rank: bool = False) -> DefenseContext:
    """The contract problem's context. ``per_rank``: generators seeded from (labels, rank) as
    the engine's are (else one fixed seed for every label)."""
    def make_generator(*labels):
        if per_rank:
            return torch.Generator().manual_seed(zlib.crc32(repr((labels, rank)).encode()))
        return gen()

    return DefenseContext(num_classes=K, in_shape=IN_SHAPE, bounds=(0.0, 1.0), class_names=("a", "b", "c"),
                          device=torch.device("cpu"), make_generator=make_generator, rank=rank, world=world,
                          references=dict(references or {}))


def references_for(cls: type[Defense], references: References | None) -> dict[str, str]:
    missing = [option for option in cls.reference_options if option not in (references or {})]
    if missing:
        raise ValueError(f"defense {cls.name!r} reads references {missing}: the contract checks have no file "
                         f"for them (distfair.testing.contract_references gives: {sorted(references or {})})")
    return {option: references[option] for option in cls.reference_options}


def build(cls: type[Defense], **options) -> Defense:
    """``cls`` with its ``TEST_OPTIONS`` (then ``options``), the contract attack if it needs one."""
    return cls(attack=make_attack() if cls.needs_attack else None, num_classes=K, **{**cls.TEST_OPTIONS, **options})


def make_defense(cls: type[Defense], references: References | None = None, **options) -> Defense:
    """The defense with its test options; one that reads references is set up with them, so
    its per-batch ``loss`` can run."""
    defense = build(cls, **options)
    if cls.reference_options:
        defense.setup(context(references_for(cls, references)))
    return defense


def own_defense(cls: type[Defense], references: References | None = None, rank: int = 0) -> Defense:
    """Set up as rank ``rank`` of two, generators seeded per (labels, rank) as the engine's."""
    defense = build(cls)
    defense.setup(context(references_for(cls, references), rank=rank, world=2, per_rank=True))
    return defense


def has_default_lifecycle(cls: type[Defense]) -> bool:
    """Its batches are the engine's loader and its step is loss -> backward -> step."""
    return cls.batches is Defense.batches and cls.train_step is Defense.train_step


class UnreadableLoader:
    """The engine's loader, which a data-free defense must never iterate."""

    def __iter__(self):
        raise AssertionError("the defense read the engine's loader (the training set)")

    def __len__(self):
        return 5


def tensors_equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(u, v) for u, v in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b) or bool(torch.isnan(a).all() and torch.isnan(b).all())
    return a == b
