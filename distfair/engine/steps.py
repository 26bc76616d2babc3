"""The training steps of one epoch, with no host synchronisation inside the loop.

Every step's logged numbers stay on the device: :class:`StepTotals` adds them to a float64
vector there and watches the defense's :attr:`~distfair.defenses.Defense.finite_parts`
(``loss``; data-free distillation also ``generator_loss``) for the first non-finite value,
also there. Nothing is read back until the epoch's steps are over: then one all-reduce (MIN,
under DDP, so every rank learns the earliest bad batch of any rank and all raise together,
none left waiting in a collective) and one device-to-host copy. A ``float(loss)`` or a Python
``if`` on a tensor per step would instead stall the CPU until the GPU has caught up, every step.

A non-finite value does not stop the epoch early (that would need the per-step read this
module exists to avoid): the remaining steps run on a model that is already lost, and the
epoch ends in :class:`Diverged` before its validation, schedule step or checkpoint, so
nothing trained after the divergence is kept.
"""
from __future__ import annotations

import contextlib
import re

from typing import Iterable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist

from distfair.engine import accel

#: the "no non-finite value yet" code (any real code is far smaller)
_NEVER = 2 ** 62
#: what a code's low two bits say about the value
_KINDS = ("nan", "inf", "-inf")


class Diverged(FloatingPointError):
    """A training quantity (the loss) became NaN or infinite.

    ``str(err)`` is ``"<quantity> is <nan|inf|-inf> at epoch <e>, batch <b>"``, e.g. ``loss is
    nan at epoch 2, batch 7``; epoch and batch are **1-based** (the ``epoch k/n`` progress lines
    count epochs from 1, batches count the same way within their epoch). A defense that must
    branch on the host anyway and raises ``FloatingPointError`` itself (FAAL's exact solver) is
    reported as ``"<its message> at epoch <e>, batch <b>"``. Under DDP every rank raises it at
    the same point with the same message (the earliest bad batch of any rank)."""

    def __init__(self, message: str, *, epoch: int | None = None, batch: int | None = None,
                 quantity: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.epoch, self.batch, self.quantity, self.kind = epoch, batch, quantity, kind


def divergence_message(quantity: str, kind: str, epoch: int, batch: int) -> str:
    """The one wording of a divergence (``epoch`` and ``batch`` 1-based)."""
    return f"{quantity} is {kind} at epoch {epoch}, batch {batch}"


class StepTotals:
    """The sums of every step's logged numbers and the first non-finite watched value, on
    ``device``; :meth:`finish` reads them once.

    The first non-finite value is one int64 code ``((batch · W) + i) · 4 + kind`` (``i`` the
    quantity's position in ``watched``, ``W`` their number, ``kind`` 0 nan, 1 +inf, 2 −inf),
    folded in with ``torch.minimum`` each step: the smallest code is the earliest batch, then
    the first quantity in ``watched`` order (the root cause when one feeds the next, e.g. the
    generator's loss before the student's), and the minimum across ranks is the same rule."""

    def __init__(self, device: torch.device, watched: Sequence[str] = ("loss",)):
        self.device, self.watched = torch.device(device), tuple(watched)
        self.keys: list[str] = []
        self.total = torch.zeros(0, dtype=torch.float64, device=self.device)
        self.first = torch.full((), _NEVER, dtype=torch.int64, device=self.device)
        self.batches = 0
        self._layouts: dict[tuple[str, ...], tuple[torch.Tensor | None, torch.Tensor | None]] = {}

    def _layout(self, keys: tuple[str, ...]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(where each key's value goes in ``total``, None when in order; each key's position in
        ``watched``, −1 if not watched, None when none is), made once per key layout: a tensor
        built from host data each step would be a host-to-device copy each step."""
        if keys not in self._layouts:
            index = [self.keys.index(k) for k in keys]
            in_order = index == list(range(len(self.keys)))
            pos = [self.watched.index(k) if k in self.watched else -1 for k in keys]
            self._layouts[keys] = (None if in_order else self._ints(index),
                                   self._ints(pos) if any(p >= 0 for p in pos) else None)
        return self._layouts[keys]

    def _ints(self, values: list[int]) -> torch.Tensor:
        """``values`` as an int64 tensor on the device, written by fill kernels: ``torch.tensor
        (values, device=cuda)`` would copy from pageable host memory, which synchronises."""
        out = torch.empty(len(values), dtype=torch.int64, device=self.device)
        for i, v in enumerate(values):
            out[i] = v
        return out

    def add(self, parts: Mapping[str, object]) -> None:
        """Fold in one step's numbers without a host read. They should be 0-d tensors on the
        device (a plain number costs a host-to-device copy)."""
        batch = self.batches
        self.batches += 1
        if not parts:
            return
        keys = tuple(parts)
        if any(k not in self.keys for k in keys):
            self.keys += [k for k in keys if k not in self.keys]
            self.total = torch.cat([self.total, self.total.new_zeros(len(self.keys) - self.total.numel())])
            self._layouts.clear()
        index, position = self._layout(keys)
        values = torch.stack([torch.as_tensor(v, device=self.device).detach().reshape(()).to(torch.float64)
                              for v in parts.values()])
        self.total = self.total + values if index is None else self.total.index_add(0, index, values)
        if position is None:
            return
        kind = torch.where(torch.isnan(values), 0, torch.where(values > 0, 1, 2))
        codes = (batch * len(self.watched) + position) * 4 + kind
        bad = ~torch.isfinite(values) & (position >= 0)
        self.first = torch.minimum(self.first, torch.where(bad, codes, _NEVER).min())

    def finish(self, *, epoch: int, world: int = 1) -> dict[str, float]:
        """The epoch's mean of every logged number (sum over the steps / the number of steps,
        a number absent from some steps counting 0 there), after one all-reduce of the
        divergence code under DDP and one read; raises :class:`Diverged` (every rank alike)
        if a watched value was non-finite. ``epoch`` is 0-based (the engine's), the message 1-based."""
        first = self.first.clone()
        if world > 1:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        host = torch.cat([self.total, first.to(torch.float64).reshape(1)]).tolist()  # the one read
        code = int(host[-1])
        if code < _NEVER:
            raise self._diverged(code, epoch)
        n = max(self.batches, 1)
        return {k: v / n for k, v in zip(self.keys, host[:-1])}

    def diverged(self, epoch: int) -> Diverged | None:
        """This rank's divergence so far, if any (a host read: only for the error path)."""
        code = int(self.first)
        return self._diverged(code, epoch) if code < _NEVER else None

    def _diverged(self, code: int, epoch: int) -> Diverged:
        kind = _KINDS[code % 4]
        batch, position = divmod(code // 4, len(self.watched))
        quantity = self.watched[position]
        return Diverged(divergence_message(quantity, kind, epoch + 1, batch + 1), epoch=epoch + 1,
                        batch=batch + 1, quantity=quantity, kind=kind)


@contextlib.contextmanager
def steps_guard(totals: StepTotals, epoch: int) -> Iterator[None]:
    """Around an epoch's step loop (0-based ``epoch``): a ``FloatingPointError`` a step raises
    itself becomes :class:`Diverged` at that batch; any error raised after a watched value
    was already non-finite (a solver fed NaN) is reported as that earlier divergence, chained."""
    try:
        yield
    except Diverged:
        raise
    except FloatingPointError as err:
        earlier = totals.diverged(epoch)
        if earlier is not None:
            raise earlier from err
        batch = totals.batches + 1           # the step that raised was not added
        said = re.fullmatch(r"(\w+) is (nan|inf|-inf)", str(err))
        raise Diverged(f"{err} at epoch {epoch + 1}, batch {batch}", epoch=epoch + 1, batch=batch,
                       quantity=said and said[1], kind=said and said[2]) from err
    except Exception as err:
        earlier = totals.diverged(epoch)     # a host read, on the error path only
        if earlier is not None:
            raise earlier from err
        raise


def run_steps(defense, model: torch.nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, *,
              epoch: int, device: torch.device, generator: torch.Generator | None = None,
              world: int = 1, precision: str = "fp32") -> dict[str, float]:
    """``defense.train_step`` over ``batches``: the engine's epoch (0-based ``epoch``). Each
    step runs under ``precision``'s autocast (``train.precision``; the attack inside the step
    too, the epoch's evaluation outside it stays fp32, ``distfair.engine.accel.autocast``).
    Returns the epoch's mean of every number the steps returned, read once after the last
    step; raises :class:`Diverged` as :meth:`StepTotals.finish` and :func:`steps_guard` say."""
    step_precision = accel.autocast(precision, device)      # refuses a bad value or a card without bf16
    totals = StepTotals(device, defense.finite_parts)
    with steps_guard(totals, epoch):
        for batch in batches:
            with step_precision:
                numbers = defense.train_step(model, batch, optimizer, generator=generator)
            totals.add(numbers)
    return totals.finish(epoch=epoch, world=world)
