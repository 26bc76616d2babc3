"""The shared adaptor between our ``Attack`` contract and ART (adversarial-robustness-toolbox).

ART's attacks work on float32 numpy arrays through a ``PyTorchClassifier``. ``run_art`` builds
one around the model and runs an ART attack so that it keeps our contract:

* the model is hidden from ART inside a parameter-free wrapper, so ART's ``.to(device)``,
  ``.train()`` and ``.zero_grad()`` never reach it; the wrapper moves ART's float32 input to
  x's dtype and device (float64 models work) and returns float32 logits to ART;
* parameter gradients are isolated: ART's ``loss_gradient`` calls ``backward``, so during
  the call every parameter has ``requires_grad=False`` and ``.grad=None``; afterwards both
  are restored exactly (the very same ``.grad`` tensor, or None);
* randomness comes from the call's torch ``generator``: one seed is drawn from it and seeds
  numpy's and Python's global RNGs (ART draws from both) and a forked torch RNG (dropout in
  a randomised model); all three global states are restored afterwards, so the same seed
  gives the same output and the caller's global RNG streams are left untouched;
* the result goes back to x's dtype and device and is re-projected onto the ε-ball around x
  (float32 rounding can leave it by an ulp), then clamped to ``bounds``;
* small CPU batches run single-threaded for the duration of the call (``_isolated``);
* progress bars are off (the attacks are built with ``verbose=False`` by their callers);
  numpy's divide/invalid warnings inside ART are silenced (ART's ℓ2 Square divides by zero
  on some candidates; the NaN candidates are rejected by its search) and a non-finite
  output coordinate is replaced by x's.

ART is imported lazily: ``import distfair.attacks`` does not pay for it.
"""
import contextlib
import logging
import random
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from distfair.attacks._base import _check_int

NORMS = ("linf", "l2")
ART_NORMS = {"linf": np.inf, "l2": 2}


class EOT(nn.Module):
    """Expectation over Transformation: logits averaged over ``eot_iter`` forward passes.

    Paper: Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security",
    ICML 2018, §4.4 (EOT); used by AutoAttack's "rand" version (Croce & Hein, ICML 2020, §4).
    Averaging the logits (rather than the per-pass loss gradients) keeps every ART loss and
    success check on one deterministic-looking classifier; the gradient of the averaged
    logits is the average of the per-pass logit gradients.
    """

    def __init__(self, model: nn.Module, eot_iter: int):
        super().__init__()
        self.model = model
        self.eot_iter = _check_int("eot_iter", eot_iter, minimum=1)

    def forward(self, x: Tensor) -> Tensor:
        total = self.model(x)
        for _ in range(self.eot_iter - 1):
            total = total + self.model(x)
        return total / self.eot_iter


def declares_randomized(model: nn.Module) -> bool:
    """Whether the model declares itself randomised: a truthy ``randomized`` attribute on it
    or on the module a DDP/DataParallel wrapper holds. No forward pass: the answer is the
    same on every batch, rank and device (bitwise comparisons of two passes are not:
    nondeterministic GPU kernels make a deterministic model's passes differ)."""
    flag = getattr(model, "randomized", None)
    if flag is None:
        flag = getattr(getattr(model, "module", None), "randomized", None)
    return bool(flag)


def is_randomized(model: nn.Module, x: Tensor) -> bool:
    """Whether the model's eval-mode output is random (needs AutoAttack's "rand" version).

    An explicit ``model.randomized`` attribute decides when present; otherwise two eval-mode
    forward passes on the same batch are compared. The model's modes and the global torch
    RNG state are restored afterwards. Only for choices that may differ between batches
    without harm (Square's query cache); AutoAttack's version uses ``declares_randomized``.
    """
    flag = getattr(model, "randomized", None)
    if flag is not None:
        return bool(flag)
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(x)):
            return not torch.equal(model(x), model(x))
    finally:
        for module, training in modes:
            module.training = training


class _Adapted(nn.Module):
    """What ART sees: float32 in ART's layout -> the model in x's layout -> float32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device,
                 to_x: Callable[[Tensor], Tensor]):
        super().__init__()
        self.__dict__["inner"] = model  # not a registered submodule: out of ART's reach
        self.dtype, self.device, self.to_x = dtype, device, to_x
        #: None, or a callable (ART input, float32 logits) told of every forward pass; an
        #: attack sets it for the duration of the calls it wants to watch
        self.observer: Callable[[Tensor, Tensor], None] | None = None

    def forward(self, z: Tensor) -> Tensor:
        logits = self.inner(self.to_x(z.to(device=self.device, dtype=self.dtype)))
        logits = logits.to(device=z.device, dtype=torch.float32)
        if self.observer is not None:
            self.observer(z.detach(), logits.detach())
        return logits


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str, bounds: tuple[float, float]) -> Tensor:
    """Onto the ``norm`` ball of radius eps around x, then onto ``bounds``."""
    if norm == "linf":
        x_adv = torch.maximum(torch.minimum(x_adv, x + eps), x - eps)
    else:
        delta = x_adv - x
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
        x_adv = x + delta * (eps / norms).clamp(max=1.0)
    return x_adv.clamp(*bounds)


def run_art(model: nn.Module, x: Tensor, labels: Tensor, make_attack: Callable, *,
            generator: torch.Generator | None, eps: float, norm: str, bounds: tuple[float, float],
            layout: tuple[tuple[int, ...], Callable, Callable] | None = None, cache_queries: bool = False) -> Tensor:
    """Run one ART evasion attack on (x, labels) under the isolation described in the module.

    Args:
        model: returns logits (B, K) for x-shaped input; already in the mode to attack in.
        x: clean inputs (B, ...), any floating dtype and device.
        labels: (B,) class indices given to ART's ``generate`` (true labels, or the targets
            of a targeted attack).
        make_attack: ``classifier -> art EvasionAttack`` (eps, verbose=False etc. set there).
        generator: the call's torch generator (None: torch's global RNG) for the seed.
        eps, norm, bounds: the threat model, for the final re-projection.
        layout: optional ``(art_shape, to_art, to_x)`` when ART needs another layout (Square
            needs (C, H, W) images): ``to_art`` maps x to ART's array, ``to_x`` maps back.
        cache_queries: reuse the logits of rows ``predict`` saw in its last 3 calls (only
            for deterministic models; see ``_classifier_class``).

    Returns: the adversarial examples, x's shape, dtype and device, within the ε-ball and bounds.
    """
    art_shape, to_art, to_x = layout or (tuple(x.shape[1:]), (lambda t: t), (lambda t: t))
    seed = _draw_seed(generator)
    device_ctx = torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()
    with device_ctx, _isolated(model, seed, x):
        with torch.no_grad():
            logits = model(x)
        if logits.ndim != 2:
            raise ValueError(f"model must return logits of shape (B, K), got {tuple(logits.shape)}")
        classifier = _classifier_class()(
            model=_Adapted(model, x.dtype, x.device, to_x), loss=nn.CrossEntropyLoss(),
            input_shape=tuple(art_shape), nb_classes=logits.shape[1], clip_values=bounds, preprocessing=None,
            device_type="gpu" if x.device.type == "cuda" else "cpu")
        classifier.query_cache = {} if cache_queries else None
        attack = make_attack(classifier)
        x_np = to_art(x.detach()).to(device="cpu", dtype=torch.float32).numpy()
        with np.errstate(divide="ignore", invalid="ignore"):  # ART's ℓ2 Square: NaN candidates, rejected
            out = attack.generate(x_np, y=labels.detach().cpu().numpy().astype(np.int64))
    x_adv = to_x(torch.from_numpy(np.asarray(out))).to(device=x.device, dtype=x.dtype)
    x_adv = torch.where(torch.isfinite(x_adv), x_adv, x)  # never hand a NaN on
    return project(x_adv, x, eps, norm, bounds)


_CLASSIFIER = None
# ART logs its data path and every estimator it builds ("Inferred 0 hidden layers ...") at
# INFO level, which Ray workers print: keep its warnings, drop the chatter.
logging.getLogger("art").setLevel(logging.WARNING)


def _classifier_class():
    """ART's ``PyTorchClassifier`` with a lean ``predict`` (built on first use: ART loads lazily).

    ART's own ``predict`` builds a ``DataLoader`` per call, which dominates Square's thousands
    of queries on small models; without preprocessing or defences (``run_art`` sets none) a
    plain no-grad forward in ``batch_size`` chunks gives the same array. With
    ``query_cache`` set to a dict (deterministic models only) input rows already evaluated
    (kept for the last 3 calls) are not evaluated again: ART's Square re-queries the current points every
    iteration, so this cuts its forward passes about threefold; the search is the same up to
    float32 round-off (a re-evaluated logit can differ in the last bit between batches).
    """
    global _CLASSIFIER
    if _CLASSIFIER is None:
        from art.estimators.classification.pytorch import PyTorchClassifier

        class LeanPyTorchClassifier(PyTorchClassifier):
            #: None, or a dict (bytes of an input row -> its logits) kept to the last 3 calls' rows
            query_cache: dict | None = None
            _recent: list = []

            def predict(self, x: np.ndarray, batch_size: int = 128, training_mode: bool = False,
                        **kwargs) -> np.ndarray:
                if self._model.training != training_mode:
                    self._model.train(mode=training_mode)
                x = np.ascontiguousarray(x)
                cache = self.query_cache
                if cache is None or len(x) == 0:
                    return self._forward(x, batch_size)
                keys = [row.tobytes() for row in x]
                rows = [cache.get(key) for key in keys]
                missing = [i for i, row in enumerate(rows) if row is None]
                if missing:
                    for i, row in zip(missing, self._forward(x[missing], batch_size)):
                        rows[i] = cache[keys[i]] = row
                self._recent = [keys] + self._recent[:2]
                if len(cache) > 4 * sum(map(len, self._recent)) + 256:  # forget older rows
                    self.query_cache = {key: cache[key] for ks in self._recent for key in ks}
                return np.stack(rows)

            def _forward(self, x: np.ndarray, batch_size: int) -> np.ndarray:
                inputs = torch.from_numpy(x).to(self._device)
                with torch.no_grad():
                    outputs = [self._model(chunk)[-1] for chunk in inputs.split(max(1, batch_size))]
                if not outputs:
                    return np.zeros((0, self.nb_classes), dtype=np.float32)
                return torch.cat(outputs).cpu().numpy().astype(np.float32)

        _CLASSIFIER = LeanPyTorchClassifier
    return _CLASSIFIER


def _draw_seed(generator: torch.Generator | None) -> int:
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device).item())


def _cuda_devices(x: Tensor) -> list:
    return [x.device] if x.device.type == "cuda" else []


@contextlib.contextmanager
def _isolated(model: nn.Module, seed: int, x: Tensor):
    """Parameter grads frozen and restored; numpy/Python/torch RNGs seeded and restored."""
    params = [(p, p.grad, p.requires_grad) for p in model.parameters()]
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        for p, _, _ in params:
            p.grad = None
            p.requires_grad_(False)
        np.random.seed(seed)
        random.seed(seed)
        with torch.random.fork_rng(devices=_cuda_devices(x)):
            torch.random.default_generator.manual_seed(seed)
            if x.device.type == "cuda":
                torch.cuda.manual_seed(seed)  # the current device, which run_art sets to x's
            yield
    finally:
        for p, grad, requires_grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad
        np.random.set_state(np_state)
        random.setstate(py_state)
