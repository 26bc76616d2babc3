"""Test-only defenses: a data-free one that uses the whole :class:`Defense` lifecycle, and
one that diverges on cue (:class:`Diverging`).

Not a test module: import it from tests as ``from toy_defenses import ...``. Ray workers
import it through ``worker_process_setup_hook="toy_defenses.register"`` with this folder on
their ``PYTHONPATH`` (tests/test_defense_lifecycle.py).

:class:`DataFreeDistill` is a miniature of FERD's loop (a generator and a student trained in
alternation on synthetic batches, the training set never touched): per step,

1. generator step: z ~ N(0, I) (B, z_dim) from the defense's per-(epoch, rank) generator,
   x = G(z) mapped into the data's bounds; G maximises KL(teacher(x) ‖ student(x)) with its
   own Adam (lr ``generator_lr``, betas 0.5/0.999), gradients taken with
   ``torch.autograd.grad`` (the student's ``.grad`` untouched);
2. student step: x = G(z) again (detached), labels = argmax of the fixed teacher, CE with the
   engine's optimiser through the (possibly DDP-wrapped) model.

Extra state, all checkpointed: G, its Adam, a running count of the teacher's labels and the
number of steps done. The teacher comes from ``DefenseContext.references["teacher"]`` (a file
written by :func:`save_teacher`), is frozen and stays in eval mode.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distfair.defenses import DEFENSES, Defense, DefenseContext
from distfair.defenses.standard import Standard
from distfair.models import unwrap_model
from distfair.seeding import derive_seed

NAME = "toy_datafree"
DIVERGING = "toy_diverging"


def make_teacher(in_shape, num_classes: int, *, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), num_classes))


def save_teacher(path: str | Path, teacher: nn.Module, in_shape, num_classes: int) -> Path:
    torch.save({"in_shape": tuple(in_shape), "num_classes": num_classes, "model": teacher.state_dict()}, path)
    return Path(path)


def load_teacher(path: str | Path, device: torch.device) -> nn.Module:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    teacher = make_teacher(saved["in_shape"], saved["num_classes"])
    teacher.load_state_dict(saved["model"])
    return teacher.to(device).eval().requires_grad_(False)


class DataFreeDistill(Defense):
    name = NAME
    needs_attack = False

    def __init__(self, *, attack=None, num_classes: int, steps_per_epoch: int = 4, batch_size: int = 16,
                 z_dim: int = 8, generator_lr: float = 2e-3):
        super().__init__(attack=attack, num_classes=num_classes)
        self.steps_per_epoch, self.batch_size, self.z_dim = steps_per_epoch, batch_size, z_dim
        self.generator_lr = generator_lr

    def setup(self, ctx: DefenseContext) -> None:
        super().setup(ctx)
        if "teacher" not in ctx.references:
            raise ValueError(f"defense {self.name!r} needs a teacher: references['teacher'] is not set")
        self.teacher = load_teacher(ctx.references["teacher"], ctx.device)
        self.low, self.high = ctx.bounds
        self.net = nn.Sequential(nn.Linear(self.z_dim, 16), nn.Tanh(), nn.Linear(16, math.prod(ctx.in_shape)),
                                 nn.Unflatten(1, tuple(ctx.in_shape))).to(ctx.device)
        init = ctx.generator("init")             # explicit seed, not the global RNG
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=init, device=init.device).to(ctx.device))
        self.net_optimizer = torch.optim.Adam(self.net.parameters(), lr=self.generator_lr, betas=(0.5, 0.999))
        self.label_counts = torch.zeros(self.num_classes, dtype=torch.float64, device=ctx.device)
        self.steps_done = 0

    def start_epoch(self, model, train_set, **kwargs):
        return {"steps_done": float(self.steps_done)}

    def batches(self, loader, *, epoch):
        g = self.context.generator("batches", epoch)
        for _ in range(self.steps_per_epoch):
            yield (torch.randn(self.batch_size, self.z_dim, generator=g, device=g.device),)

    def images(self, z: torch.Tensor) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(self.net(z))

    def teacher_labels(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(x).argmax(dim=1)

    def loss(self, model, x, y, *, generator=None):
        """Student CE against the teacher's labels on ``x`` (``y`` is not used)."""
        ce = F.cross_entropy(model(x), self.teacher_labels(x))
        return ce, {"student_ce": ce.detach()}

    def train_step(self, model, batch, optimizer, *, generator=None):
        (z,) = batch
        # 1. generator: maximise the student's disagreement with the teacher
        x = self.images(z)
        with torch.no_grad():
            log_p_teacher = F.log_softmax(self.teacher(x), dim=1)
        disagreement = F.kl_div(F.log_softmax(unwrap_model(model)(x), dim=1), log_p_teacher,
                                reduction="batchmean", log_target=True)
        params = list(self.net.parameters())
        grads = torch.autograd.grad(-disagreement, params)
        for p, grad in zip(params, grads):
            p.grad = grad
        self.net_optimizer.step()
        self.net_optimizer.zero_grad(set_to_none=True)
        # 2. student: the engine's optimiser, through the (DDP) model
        with torch.no_grad():
            x = self.images(z)
        loss, parts = self.loss(model, x, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.label_counts += torch.bincount(self.teacher_labels(x), minlength=self.num_classes)
        self.steps_done += 1
        return {"loss": loss.detach(), "disagreement": disagreement.detach(), **parts}

    def state_dict(self):
        return {"generator": self.net.state_dict(), "optimizer": self.net_optimizer.state_dict(),
                "label_counts": self.label_counts.clone(), "steps_done": self.steps_done}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["generator"])
        self.net_optimizer.load_state_dict(state["optimizer"])
        self.label_counts = state["label_counts"].to(self.context.device)
        self.steps_done = state["steps_done"]


class NoSamples(torch.utils.data.Dataset):
    """A training set that may be sized (the sampler) but never read: swapped in for a
    data-free defense's training split, reading a sample fails the test."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        raise AssertionError("a data-free defense read the training set")


def untimed(history: list[dict]) -> list[dict]:
    """Per-epoch history rows without their wall-clock timings (which differ run to run)."""
    return [{k: v for k, v in row.items() if not k.endswith("time_s")} for row in history]


class Diverging(Standard):
    """Standard training whose loss turns NaN (or inf) at one (epoch, batch), both 1-based,
    for one seed only (``nan_seed``; −1: never): a deterministic divergence for the tests of
    ``distfair.engine.steps.Diverged`` and of how a diverged seed fails alone.

    A defense is not told its seed; it recognises it by the seed of its context's generator,
    which the engine derives as ``derive_seed(seed, "defense", *labels, rank)``
    (``distfair.engine.train.defense_context``). Epoch and batch are counted in Python (no
    tensor is read)."""

    name = DIVERGING

    def __init__(self, *, attack=None, num_classes: int, nan_seed: int = -1, nan_epoch: int = 1,
                 nan_batch: int = 1, kind: str = "nan"):
        super().__init__(attack=attack, num_classes=num_classes)
        if kind not in ("nan", "inf"):
            raise ValueError(f"kind must be 'nan' or 'inf', got {kind!r}")
        self.nan_seed, self.nan_epoch, self.nan_batch = nan_seed, nan_epoch, nan_batch
        self.factor = float(kind)
        self.armed, self.epoch, self.step = False, 0, 0

    def setup(self, ctx: DefenseContext) -> None:
        super().setup(ctx)
        own = ctx.generator("toy-diverging").initial_seed()
        self.armed = self.nan_seed >= 0 and own == derive_seed(self.nan_seed, "defense", "toy-diverging", ctx.rank)

    def batches(self, loader, *, epoch):
        self.epoch, self.step = epoch, 0
        return loader

    def loss(self, model, x, y, *, generator=None):
        loss, parts = super().loss(model, x, y, generator=generator)
        self.step += 1
        if self.armed and (self.epoch + 1, self.step) == (self.nan_epoch, self.nan_batch):
            loss = loss * self.factor
        return loss, parts


def register() -> None:
    """Add the toy defenses to the registry of this process (the Ray workers' setup hook)."""
    DEFENSES.setdefault(NAME, DataFreeDistill)
    DEFENSES.setdefault(DIVERGING, Diverging)
