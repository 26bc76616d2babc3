"""Data-free robustness distillation: what FERD (``ferd.py``) and its DFRD baseline (``dfrd.py``)
share. Paper 002 (FERD), §"Methodology" and §"Experimental Settings"; methods.md "FERD"; the
official code (github.com/mayaobuduyao/FERD: ``test.py``, ``IBD_module_cmi.py``,
``query_sample.py``, ``utils.py``, ``dataset.py``), read, not copied.

Over 400 lines because it is the one shared base of both data-free defenses (generator, teacher,
schedule, memory bank, state), kept in one place so that FERD and DFRD cannot drift apart.

Neither defense reads the training split: a label-conditioned generator G(z, y)
(``distfair.models.generator``) synthesises every sample, and a frozen robust teacher T
(``DefenseContext.references["teacher"]``, an engine epoch checkpoint) is distilled into the
engine's model, the student S. Two training loops (option ``loop``):

**official** (default): per epoch, the paper's two stages (FERD §"Methodology": a "generation
stage" and a "robust distillation" stage per iteration), as the official ``test.py`` runs them:

1. *generation stage* (:meth:`DataFreeDistillation.generation_stage`, in ``start_epoch``;
   official ``Train_Gen_Module.train``): the generator is re-initialised (``reset_model``),
   a fixed batch of learnable noise z (``batch_size`` × ``z_dim``) and its labels are drawn,
   and G and z are optimised together for ``gen_steps`` (official ``--N_G 200``) steps of
   the generator objective below (Adam, G at ``generator_lr`` 2e-3 and z at ``noise_lr``
   0.015, ``test.sh``; betas 0.5/0.999) on crop+flipped G(z, y); the batch with the lowest
   objective is appended to a memory bank that keeps every epoch's batch (``save_mem`` in
   ``utils.py``; ``bank_size`` can cap it).
2. *robust distillation stage* (:meth:`batches` + :meth:`train_step`; official
   ``train_model_ds_at``): ``student_steps`` (``--N_S 400``) student steps on batches of
   the bank (shuffled, cycled), crop+flipped (``RandomCrop(padding=4)`` +
   ``RandomHorizontalFlip``; ``augment``, images only), with the subclass's :meth:`loss`
   and the engine's optimiser; none in the first ``warmup`` epochs (``--warmup 20``: the
   official 1-based ``epoch > warmup``). The engine's schedule still steps every epoch, as
   the official ``scheduler_s.step()`` does during warm-up.

**alternating** (distfair's earlier loop, kept selectable): one conditional generator for the
whole run, and every step of :meth:`DataFreeDistillation.train_step`:

1. **generator step** (Eq. 8-9): x = G(z, y); G descends
   ``−λ_adv·L_adv + λ_bn·L_bn + λ_oh·L_oh (+ the subclass's terms, FERD's λ_uni·L_uni)``
   with its own Adam (lr ``generator_lr``, betas (0.5, 0.999): §"Implementation Details").
2. **student step**: x = G(z, y) again with the updated G (no gradient), then the subclass's
   :meth:`loss`, ``iterations_per_epoch`` (paper 400) times per epoch; no bank, no warm-up,
   no augmentation.

In both loops: sign convention: Eq. 8 says L_adv = KL(f^T(x) ‖ f^S(x)) "encourages divergence
between the student and teacher", so the generator *maximises* it while it minimises the other
terms. Eq. 9 only writes the weighted sum; in the adversarial DFKD generation it comes from
(DFAD, Fast, and the official FERD code's ``loss_adv = -dkl_loss(s, t)``) the KL enters the
generator's descended objective negated, as here. Logged values are the positive KLs.
Gradients reach G's parameters (and the official loop's noise) only (``torch.autograd.grad``):
the student's ``.grad`` and the teacher are untouched. The student runs in eval mode during
generation (as the official code's ``self.student.eval()``: its BatchNorm statistics are not
moved by synthetic search passes) and gets its mode back. The student's loss (FERD Eq. 11, DFRD
RSLAD) runs through the engine's (possibly DDP-wrapped) model and the engine's optimiser (the
student's SGD 0.1 / 0.9 / 5e-4 is the configuration's ``train`` block). Losses are watched for
NaN/inf on the device (``finite_parts``) and a non-finite one fails the seed at the epoch's end
with its epoch and batch; no step reads a value on the host (a generation stage reads its
numbers once, at its end).

Departures from the official code, on purpose: the generator is label-conditioned (the
official one is not; labels enter its loss through L_oh only); the losses are the paper's
(plain KL, methods.md lists the official code's degenerate student loss among its bugs); the
official ``generate_adv``/``pgd_attack`` leave the attacked network in train mode, ours restore
its mode.

The losses (all pure functions below; "batchmean": summed over classes per sample, averaged
over the batch; methods.md "Conventions"):

- L_adv = KL(T(x) ‖ S(x)) (Eq. 8), :func:`kl_to_teacher`.
- L_bn = Σ_l ‖μ_l(x) − μ_l‖₂ + ‖σ²_l(x) − σ²_l‖₂ (Eq. 8, DeepInversion's feature
  regulariser): over every BatchNorm layer l of the *teacher* (as DeepInversion, Fast and
  the official FERD code; Eq. 8's text also names the student, whose statistics are not
  those of the data), μ_l(x), σ²_l(x) the per-channel mean and biased variance of the layer's
  input over the batch and spatial dims, μ_l, σ²_l its running statistics;
  :class:`BatchNormStatistics`. A teacher without BatchNorm layers has no L_bn: a
  :class:`NoBatchNormWarning` is issued once at setup and the term is absent from the
  generator loss and the logged numbers (not a silent zero).
- L_oh = CE(T(x), y) (Eq. 8), mean over the batch, :func:`one_hot_loss`.
- RSLAD's loss (Zi et al., ICCV 2021, the loss of the DFRD baselines of FERD Table 1):
  5/6·KL(T(x) ‖ S(x_adv)) + 1/6·KL(T(x) ‖ S(x)), :func:`rslad_loss`. Direction: the
  teacher's clean prediction is the target distribution, Σ_k T_k log(T_k / S_k); methods.md
  writes it "KL(S(x_adv)‖T(x))" in PyTorch's ``kl_div(log S, T)`` argument order, which the
  RSLAD code uses (``kl_loss(log_softmax(adv_logits), softmax(teacher_logits))`` =
  T·(log T − log S)). Reduction: batchmean; RSLAD's code averages over B·K instead (its
  README multiplies by 10 on CIFAR-100 for that reason), so our values are K times its.

The teacher: loaded with ``model_from_checkpoint``, ``requires_grad_(False)``, eval mode
always. Its parameters and BatchNorm buffers never change; after every attack and every
information-bottleneck fit :func:`check_teacher_eval` raises if any of its modules is in
train mode. Attacks run on the plain (unwrapped) networks, through distfair's PGD-ℓ∞
(``distfair.attacks.PGD``), which records and restores every module's mode.

Randomness: ``batches`` draws from ``DefenseContext.generator("batches", epoch)``, a
generation stage from ``generator("generation", epoch)`` (per epoch and rank); a step's attack
starts come from the engine's per-(epoch, rank) step generator. Under DDP every rank yields as
many batches and trains its own generator and bank (per rank in the checkpoint). Everything
carried between epochs (generator, its Adam, the memory bank, the subclass's state, a step
counter) is in :meth:`state_dict`, so a resumed run equals an uninterrupted one.

Threat model of the synthetic adversarial examples: ℓ∞ ball of radius ``eps`` (input units)
around the synthetic sample, clamped to the data's bounds; ``steps`` steps of size ``alpha``
from a uniform random start (PGD, Madry et al.). These are the defense's own options: the
configured training attack, if any, is not used for training (``needs_attack = False``); the
engine still uses it for the per-epoch validation robust accuracy.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distfair.attacks import PGD
from distfair.defenses._base import Defense, DefenseContext, check_weight
from distfair.models import model_from_checkpoint, unwrap_model
from distfair.models.generator import Generator

#: the RSLAD weights of the adversarial and the clean KL (Zi et al., ICCV 2021)
RSLAD_ADV_WEIGHT, RSLAD_CLEAN_WEIGHT = 5 / 6, 1 / 6
#: generator Adam betas (FERD §"Implementation Details")
GENERATOR_BETAS = (0.5, 0.999)
#: the training loops: per-epoch generation + distillation stages (the official code's, default),
#: or one generator step and one student step per iteration (distfair's earlier loop)
LOOPS = ("official", "alternating")
#: std of the official code's re-initialisation of the generator's convolutions and linears
#: (``IBD_module_cmi.py`` ``reset_model``: N(0, 0.02), biases 0; BatchNorm weights N(1, 0.02))
RESET_STD = 0.02


class NoBatchNormWarning(UserWarning):
    """The teacher has no BatchNorm layer, so the generator loss has no L_bn term."""


# --------------------------------------------------------------------------------- teacher
def load_teacher(path: str, device: torch.device) -> nn.Module:
    """The frozen teacher of an engine epoch checkpoint (``last.pt``): eval mode, no gradients."""
    teacher = model_from_checkpoint(path, device)
    teacher.requires_grad_(False)
    return teacher.eval()


def check_teacher_eval(teacher: nn.Module, where: str) -> None:
    """Raise RuntimeError if any module of the teacher is in train mode (a forward in train mode
    would have moved its BatchNorm buffers: the teacher must stay in eval mode throughout)."""
    stray = [name or type(teacher).__name__ for name, m in teacher.named_modules() if m.training]
    if stray:
        teacher.eval()
        raise RuntimeError(f"the frozen teacher left eval mode {where} (modules {stray[:3]}); it must stay in "
                           "eval mode always (methods.md 'Conventions')")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; every submodule's previous mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model.eval()
    finally:
        for module, training in modes:
            module.training = training


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers (1-D, 2-D, 3-D) whose statistics L_bn matches (FERD Eq. 8)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ---------------------------------------------------------------------------------- losses
def kl_to_teacher(teacher_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(softmax(teacher_logits) ‖ softmax(logits)), summed over the K classes per sample and
    averaged over the batch ("batchmean"): FERD's L_adv (Eq. 8) and both terms of its student
    loss (Eq. 11), RSLAD's terms. Gradients flow to both arguments."""
    return F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(teacher_logits, dim=1),
                    reduction="batchmean", log_target=True)


def uniform_kl(logits: Tensor) -> Tensor:
    """KL(U ‖ softmax(logits)) with U uniform over the K classes (FERD Eq. 7), batchmean:
    mean over samples of Σ_k (1/K)·log((1/K) / q_k) = −log K − (1/K)·Σ_k log q_k."""
    log_uniform = torch.full_like(logits, -math.log(logits.shape[1]))
    return F.kl_div(F.log_softmax(logits, dim=1), log_uniform, reduction="batchmean", log_target=True)


def one_hot_loss(teacher_logits: Tensor, y: Tensor) -> Tensor:
    """L_oh = CE(T(x), y) (FERD Eq. 8): the teacher must predict the requested class; mean over the batch."""
    return F.cross_entropy(teacher_logits, y)


def rslad_loss(teacher_logits: Tensor, student_adv_logits: Tensor,
               student_clean_logits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """RSLAD: 5/6·KL(T(x) ‖ S(x_adv)) + 1/6·KL(T(x) ‖ S(x)), batchmean (module docstring); the
    teacher's logits are detached. Returns (loss, {"kl_adv", "kl_clean"} detached)."""
    target = teacher_logits.detach()
    kl_adv = kl_to_teacher(target, student_adv_logits)
    kl_clean = kl_to_teacher(target, student_clean_logits)
    loss = RSLAD_ADV_WEIGHT * kl_adv + RSLAD_CLEAN_WEIGHT * kl_clean
    return loss, {"kl_adv": kl_adv.detach(), "kl_clean": kl_clean.detach()}


def channel_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of x (B, C, ...) over the batch and every spatial
    dim (dim 1 is the channel), each (C,)."""
    if x.ndim < 2:
        raise ValueError(f"expected a (B, C, ...) tensor, got shape {tuple(x.shape)}")
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    return flat.mean(dim=1), flat.var(dim=1, unbiased=False)


def bn_matching_term(x: Tensor, running_mean: Tensor, running_var: Tensor) -> Tensor:
    """One BatchNorm layer's part of L_bn (Eq. 8): ‖μ(x) − μ‖₂ + ‖σ²(x) − σ²‖₂ with μ(x), σ²(x)
    from :func:`channel_statistics` of the layer's input."""
    mean, var = channel_statistics(x)
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)


class BatchNormStatistics:
    """L_bn through forward hooks on the teacher's BatchNorm layers (FERD Eq. 8).

    ``with BatchNormStatistics(teacher) as bn: teacher(x); loss = bn.loss()``: each BatchNorm
    layer's forward hook adds :func:`bn_matching_term` of its input against the layer's running
    statistics; the hooks are removed when the block ends. The teacher is in eval mode, so the
    running statistics are read, never updated.
    """

    def __init__(self, teacher: nn.Module):
        self.layers = batchnorm_layers(teacher)
        self.terms: list[Tensor] = []
        self._handles: list = []

    def _hook(self, module, inputs, output) -> None:
        self.terms.append(bn_matching_term(inputs[0], module.running_mean, module.running_var))

    def __enter__(self) -> "BatchNormStatistics":
        self.terms = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def loss(self) -> Tensor:
        if not self.terms:
            raise RuntimeError("no BatchNorm layer ran inside the block (no L_bn to report)")
        return torch.stack(self.terms).sum()


def generator_objective(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """The generator's loss to *descend* (FERD Eq. 9 with L_adv maximised, module docstring):
    Σ_name weights[name]·terms[name] with the sign of ``"adv"`` flipped. Terms absent from
    ``terms`` (no BatchNorm, an ablation) contribute nothing."""
    total = 0.0
    for name, value in terms.items():
        total = total + (-weights[name] if name == "adv" else weights[name]) * value
    return total


# ------------------------------------------------------------------------------ labels
def balanced_labels(n: int, num_classes: int, generator: torch.Generator | None) -> Tensor:
    """n labels in equal class proportions (each class ⌊n/K⌋ or ⌈n/K⌉ times; which classes get
    the remainder rotates at random), randomly ordered; on the generator's device."""
    device = generator.device if generator is not None else torch.device("cpu")
    offset = torch.randint(0, num_classes, (1,), generator=generator, device=device)
    labels = (torch.arange(n, device=device) + offset) % num_classes
    return labels[torch.randperm(n, generator=generator, device=device)]


def sample_labels(probabilities: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """n labels drawn i.i.d. from the class probabilities (K,) (FERD's reweighted sampling)."""
    return torch.multinomial(probabilities, n, replacement=True, generator=generator)


# ------------------------------------------------------------------------- the defense base
# ---------------------------------------------------------------- official loop's helpers
@torch.no_grad()
def reset_generator(net: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise the generator in place as the official code does at the start of every
    generation stage (``IBD_module_cmi.py`` ``reset_model``): the weights of every Conv,
    ConvTranspose and Linear layer N(0, 0.02) and their biases 0, every BatchNorm's weight
    N(1, 0.02) and bias 0 (running statistics untouched: the generator always runs in train
    mode). distfair's generator is label-conditioned (the official one is not): its label
    embedding is redrawn N(0, 1), PyTorch's default. Draws come from ``generator`` only."""
    def normal(tensor: Tensor, mean: float, std: float) -> None:
        draw = torch.randn(tensor.shape, generator=generator, device=generator.device, dtype=tensor.dtype)
        tensor.copy_((mean + std * draw).to(tensor.device))

    for module in net.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            normal(module.weight, 0.0, RESET_STD)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            normal(module.weight, 1.0, RESET_STD)
            module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            normal(module.weight, 0.0, 1.0)


def crop_flip(x: Tensor, padding: int, fill: float, generator: torch.Generator | None) -> Tensor:
    """Random crop after padding each side by ``padding`` pixels of value ``fill``, then a
    horizontal flip with probability 1/2, per sample, of images x (B, C, H, W): the official
    code's ``RandomCrop(padding=4)`` + ``RandomHorizontalFlip()`` (kornia, ``test.py`` and
    ``IBD_module_cmi.py``; kornia pads with 0, which is ``fill`` = the lower bound for data in
    [0, 1]). Differentiable in x (the generation stage back-propagates through it)."""
    if x.ndim != 4:
        raise ValueError(f"crop_flip expects images (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    device = generator.device if generator is not None else x.device
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator, device=device).to(x.device)
    flips = (torch.rand(b, generator=generator, device=device) < 0.5).to(x.device)
    if padding > 0:
        x_padded = F.pad(x, (padding,) * 4, value=fill)
        rows = (offsets[:, :1] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (offsets[:, 1:] + torch.arange(w, device=x.device))[:, None, None, :]
        x = x_padded[torch.arange(b, device=x.device)[:, None, None, None],
                     torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    return torch.where(flips[:, None, None, None], x.flip(-1), x)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class DataFreeDistillation(Defense):
    """Base of the data-free robustness distillation defenses (see the module docstring).

    Options common to FERD and DFRD (keyword-only, FERD §"Implementation Details" where the
    paper gives them):
        teacher: the teacher checkpoint as written in the configuration (a path or an MLflow
            run id); the resolved file arrives as ``DefenseContext.references["teacher"]``.
        iterations_per_epoch: generator + student steps per epoch (paper 400).
        batch_size: synthetic samples per step (paper 256 on CIFAR-10, 512 otherwise); >= 2.
        z_dim: generator noise dimension (the paper gives none; 100 as the official code).
        generator_width: the generator's channel width (Fast's ``ngf``, 64).
        generator_lr: the generator's Adam learning rate (paper 2e-3, betas 0.5/0.999).
        lambda_adv, lambda_bn, lambda_oh: weights of L_adv (maximised), L_bn, L_oh (Eq. 9:
            1, 5, 1).
        eps, alpha, steps: ℓ∞ budget, step size (input units) and number of steps of the PGD
            that makes the synthetic adversarial examples (8/255, 2/255, 10, RSLAD's CIFAR
            setting; the FERD paper gives none).
        loop: ``official`` (default) or ``alternating``, the training loop (module docstring).
        gen_steps: generator steps per generation stage (official ``--N_G 200``).
        student_steps: student steps per epoch of the distillation stage (``--N_S 400``).
        warmup: epochs (0-based: those with index < warmup) that only generate, the student
            untouched (official ``--warmup 20``: its 1-based ``epoch > warmup`` trains).
        noise_lr: Adam learning rate of the learnable noise of a generation stage (``--lr_z
            0.015`` in ``test.sh``; the generator's own is ``generator_lr``).
        augment: crop+flip in both stages (official: kornia RandomCrop(padding 4) and
            RandomHorizontalFlip); null: on for images (B, C, H, W), off for any other input
            (a waveform or a vector: no crop or flip makes sense); true on non-images is refused.
        crop_padding: the crop's padding in pixels (official 4, for 32×32 images).
        bank_size: the most samples the memory bank keeps, the oldest dropped first; null
            (default, the official code's ``save_mem``): every epoch's kept batch.
        ``iterations_per_epoch`` is the alternating loop's; the official loop's options are
        ignored by it.
    Subclasses implement :meth:`loss` (the student's loss on a synthetic batch) and may add
    generator terms (:meth:`generator_terms`), a label distribution (:meth:`draw_labels`) and
    state (:meth:`extra_state` / :meth:`load_extra_state`).
    """

    needs_attack: ClassVar[bool] = False
    reference_options: ClassVar[tuple[str, ...]] = ("teacher",)
    #: the generator's objective first: a diverging generator feeds the student NaN samples
    finite_parts: ClassVar[tuple[str, ...]] = ("generator_loss", "loss")

    def __init__(self, *, attack=None, num_classes: int, teacher: str | None = None,
                 iterations_per_epoch: int = 400, batch_size: int = 256, z_dim: int = 100,
                 generator_width: int = 64, generator_lr: float = 2e-3, lambda_adv: float = 1.0,
                 lambda_bn: float = 5.0, lambda_oh: float = 1.0, eps: float = 8 / 255, alpha: float = 2 / 255,
                 steps: int = 10, loop: str = "official", gen_steps: int = 200, student_steps: int = 400,
                 warmup: int = 20, noise_lr: float = 0.015, augment: bool | None = None, crop_padding: int = 4,
                 bank_size: int | None = None):
        super().__init__(attack=attack, num_classes=num_classes)
        if loop not in LOOPS:
            raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")
        self.loop = loop
        self.gen_steps = _check_int("gen_steps", gen_steps, 1)
        self.student_steps = _check_int("student_steps", student_steps, 1)
        self.warmup = _check_int("warmup", warmup, 0)
        self.noise_lr = _check_positive("noise_lr", noise_lr)
        if augment is not None and not isinstance(augment, bool):
            raise ValueError(f"augment must be true, false or null, got {augment!r}")
        self.augment = augment
        self.crop_padding = _check_int("crop_padding", crop_padding, 0)
        self.bank_size = None if bank_size is None else _check_int("bank_size", bank_size, 1)
        self.teacher_option = teacher
        self.iterations_per_epoch = _check_int("iterations_per_epoch", iterations_per_epoch, 1)
        self.batch_size = _check_int("batch_size", batch_size, 2)
        self.z_dim = _check_int("z_dim", z_dim, 1)
        self.generator_width = _check_int("generator_width", generator_width, 1)
        self.generator_lr = _check_positive("generator_lr", generator_lr)
        for name, value in (("lambda_adv", lambda_adv), ("lambda_bn", lambda_bn), ("lambda_oh", lambda_oh)):
            check_weight(name, value)
        self.weights = {"adv": float(lambda_adv), "bn": float(lambda_bn), "oh": float(lambda_oh)}
        self.eps, self.alpha = _check_positive("eps", eps), _check_positive("alpha", alpha)
        self.steps = _check_int("steps", steps, 1)
        self.teacher: nn.Module | None = None

    # ---------------------------------------------------------------------------- setup
    def setup(self, ctx: DefenseContext) -> None:
        """Load and freeze the teacher, check it has BatchNorm layers (else warn: no L_bn),
        build the generator (initialised from ``ctx.generator("init")``, not the global RNG)
        and its Adam, and the PGD of the synthetic adversarial examples."""
        super().setup(ctx)
        is_image = len(ctx.in_shape) == 3
        if self.augment and not is_image:
            raise ValueError(f"defense {self.name!r}: augment (crop+flip) needs images (C, H, W), the data's inputs "
                             f"are {tuple(ctx.in_shape)}: set `augment: false` or leave it null")
        self.augments = is_image if self.augment is None else self.augment
        if not ctx.references.get("teacher"):
            raise ValueError(f"defense {self.name!r} needs a teacher: set `defense.teacher` to a checkpoint (last.pt) "
                             "or an MLflow run id (DefenseContext.references['teacher'] is not set)")
        self.teacher = load_teacher(ctx.references["teacher"], ctx.device)
        self.has_batchnorm = bool(batchnorm_layers(self.teacher))
        if not self.has_batchnorm:
            warnings.warn(f"defense {self.name!r}: the teacher ({type(self.teacher).__name__}) has no BatchNorm layer, "
                          "so the generator loss has no L_bn term (FERD Eq. 8); it trains without it",
                          NoBatchNormWarning, stacklevel=2)
        self.pgd = PGD(eps=self.eps, alpha=self.alpha, steps=self.steps, bounds=ctx.bounds)
        init = ctx.generator("init")
        seed = int(torch.randint(0, 2**62, (1,), generator=init, device=init.device).item())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = Generator(num_classes=self.num_classes, in_shape=ctx.in_shape, bounds=ctx.bounds,
                                 z_dim=self.z_dim, width=self.generator_width)
        self.net.to(ctx.device).train()
        self.net_optimizer = torch.optim.Adam(self.net.parameters(), lr=self.generator_lr, betas=GENERATOR_BETAS)
        self.steps_done = 0
        self.fill = float(ctx.bounds[0])
        #: the official loop's memory bank: every generation stage's kept batch (x (N, ...), y (N,))
        self.bank_x: Tensor | None = None
        self.bank_y: Tensor | None = None
        #: the last generation stage's kept batch (x, y): FERD measures its reweighting on it
        self.kept: tuple[Tensor, Tensor] | None = None

    def _require_setup(self) -> nn.Module:
        if self.teacher is None:
            raise RuntimeError(f"defense {self.name!r}: call setup() first (it loads the teacher)")
        return self.teacher

    # ---------------------------------------------------------------------------- batches
    def draw_labels(self, n: int, generator: torch.Generator) -> Tensor:
        """The requested classes of a synthetic batch. Default: equal class proportions."""
        return balanced_labels(n, self.num_classes, generator)

    def batches(self, loader, *, epoch: int):
        """The epoch's batches, from the per-(epoch, rank) generator ``batches``; the engine's
        loader is never read (data-free). Alternating loop: ``iterations_per_epoch`` noise
        batches (z (B, z_dim), y (B,)). Official loop: none in a warm-up epoch (index <
        ``warmup``), else ``student_steps`` batches (x (B', ...), y (B',)) of the memory bank,
        crop+flipped when ``augments``: the bank in a random order, ``batch_size`` at a time
        (the last batch of an order may be shorter), a new order when it runs out (the
        official ``DataLoader(shuffle=True)`` cycled by ``DataIter``, ``test.py``)."""
        g = self.context.generator("batches", epoch)
        if self.loop == "alternating":
            for _ in range(self.iterations_per_epoch):
                z = torch.randn(self.batch_size, self.z_dim, generator=g, device=g.device)
                yield z, self.draw_labels(self.batch_size, g)
            return
        if epoch < self.warmup:
            return
        if self.bank_x is None:
            raise RuntimeError(f"defense {self.name!r}: the memory bank is empty at epoch {epoch}: "
                               "start_epoch runs the generation stage that fills it (loop: official)")
        n = self.bank_x.shape[0]
        order, position = torch.randperm(n, generator=g, device=g.device), 0
        for _ in range(self.student_steps):
            if position >= n:
                order, position = torch.randperm(n, generator=g, device=g.device), 0
            index = order[position:position + self.batch_size].to(self.bank_x.device)
            position += self.batch_size
            yield self.augmentation(self.bank_x[index], g), self.bank_y[index]

    def augmentation(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """:func:`crop_flip` (``crop_padding``) when ``augments``, else x unchanged."""
        return crop_flip(x, self.crop_padding, self.fill, generator) if self.augments else x

    # ---------------------------------------------------------- official loop: generation stage
    def start_epoch(self, model, train_set, *, epoch, batch_size, generator):
        """Official loop: the epoch's generation stage (:meth:`generation_stage`); alternating:
        nothing. The training set is never read."""
        if self.loop == "alternating":
            return {}
        return self.generation_stage(model, epoch)

    def generation_stage(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """One generation stage (FERD §"Methodology", the "generation stage" of each iteration;
        official ``IBD_module_cmi.py`` ``Train_Gen_Module.train``), randomness from
        ``context.generator("generation", epoch)``:

        1. the generator is re-initialised (:func:`reset_generator`), a batch of noise z
           (``batch_size``, ``z_dim``) ~ N(0, I) is drawn and made learnable, the labels y from
           :meth:`draw_labels` (FERD: the reweighted class probabilities); one fresh Adam over
           the generator (lr ``generator_lr``) and z (lr ``noise_lr``), betas (0.5, 0.999);
        2. ``gen_steps`` steps of :func:`generator_objective` of :meth:`generator_terms` at
           x = G(z, y), crop+flipped when ``augments`` (as the official code's generator loss
           sees them), the student (unwrapped) in eval mode; gradients reach G and z only;
        3. the batch G(z, y) (not augmented) with the lowest objective seen (the official
           ``best_mem``; a non-finite objective is never kept) is appended to the memory bank
           (``bank_size`` caps it, oldest first) and kept as ``self.kept`` for the subclass.

        Returns the numbers to log: ``generation_loss_first``, ``generation_loss_best``,
        ``generation_loss_last``, ``bank_samples`` and the last step's terms ``gen_*`` (and the
        subclass's numbers, FERD's ``ib_*``). One
        host read at the end; FloatingPointError if no step had a finite objective."""
        teacher = self._require_setup()
        device = self.context.device
        g = self.context.generator("generation", epoch)
        reset_generator(self.net, g)
        z = torch.randn(self.batch_size, self.z_dim, generator=g, device=g.device).to(device).requires_grad_()
        y = self.draw_labels(self.batch_size, g).to(device)
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam([{"params": params}, {"params": [z], "lr": self.noise_lr}],
                                     lr=self.generator_lr, betas=GENERATOR_BETAS)
        student = unwrap_model(model)
        best_loss = torch.tensor(math.inf, device=device)
        best_x = first = objective = None
        with eval_mode(student):
            for _ in range(self.gen_steps):
                x = self.net(z, y)
                terms, extra = self.generator_terms(self.augmentation(x, g), y, student, g)
                objective = generator_objective(terms, self.weights)
                grads = torch.autograd.grad(objective, [*params, z])
                for p, grad in zip([*params, z], grads):
                    p.grad = grad
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                value = objective.detach()
                first = value if first is None else first
                better = value < best_loss                      # NaN is never better
                best_loss = torch.where(better, value, best_loss)
                best_x = x.detach() if best_x is None else torch.where(better, x.detach(), best_x)
        check_teacher_eval(teacher, "during the generation stage")
        named = {**{f"gen_{k}": v for k, v in terms.items()}, **extra}
        host = torch.stack([first, best_loss, objective.detach(),
                            *(v.detach().float() for v in named.values())]).tolist()
        if not math.isfinite(host[1]):
            raise FloatingPointError(f"generator_loss is {host[2]} at every step of the generation stage of "
                                     f"epoch {epoch + 1}")
        self.kept = (best_x, y)
        self.bank_x = best_x if self.bank_x is None else torch.cat([self.bank_x, best_x])
        self.bank_y = y if self.bank_y is None else torch.cat([self.bank_y, y])
        if self.bank_size is not None:
            self.bank_x, self.bank_y = self.bank_x[-self.bank_size:], self.bank_y[-self.bank_size:]
        logs = {"generation_loss_first": host[0], "generation_loss_best": host[1], "generation_loss_last": host[2],
                "bank_samples": float(self.bank_x.shape[0])}
        logs.update(zip(named, host[3:]))
        return logs

    # ---------------------------------------------------------------------- generator step
    def generator_terms(self, x: Tensor, y: Tensor, student: nn.Module,
                        generator: torch.Generator | None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The generator's loss terms at x = G(z, y) (graph to G): ``adv`` L_adv (maximised),
        ``bn`` L_bn (teacher with BatchNorm only), ``oh`` L_oh (Eq. 8); and detached numbers to
        log. Subclasses add theirs (keys of ``self.weights``)."""
        teacher = self._require_setup()
        with BatchNormStatistics(teacher) as bn:
            teacher_logits = teacher(x)
        terms = {"adv": kl_to_teacher(teacher_logits, student(x))}
        if self.has_batchnorm:
            terms["bn"] = bn.loss()
        terms["oh"] = one_hot_loss(teacher_logits, y)
        return terms, {}

    def generator_step(self, model: nn.Module, z: Tensor, y: Tensor,
                       generator: torch.Generator | None) -> dict[str, Tensor]:
        """One Adam step of G on :func:`generator_objective` of :meth:`generator_terms`, the
        student (unwrapped) in eval mode. Returns the detached terms and the objective."""
        student = unwrap_model(model)
        with eval_mode(student):
            x = self.net(z, y)
            terms, logs = self.generator_terms(x, y, student, generator)
            objective = generator_objective(terms, self.weights)
        # no finiteness test here (a host read each step): ``generator_loss`` is in finite_parts
        params = [p for p in self.net.parameters() if p.requires_grad]
        grads = torch.autograd.grad(objective, params)
        for p, grad in zip(params, grads):
            p.grad = grad
        self.net_optimizer.step()
        self.net_optimizer.zero_grad(set_to_none=True)
        check_teacher_eval(self.teacher, "during the generator step")
        return {"generator_loss": objective.detach(), **{f"gen_{k}": v.detach() for k, v in terms.items()}, **logs}

    def synthesize(self, z: Tensor, y: Tensor) -> Tensor:
        """x = G(z, y) without gradient (G in train mode, as always)."""
        with torch.no_grad():
            return self.net(z, y)

    # ---------------------------------------------------------------------------- one step
    def train_step(self, model, batch, optimizer, *, generator=None):
        """Official loop: the student's :meth:`loss` on a bank batch (x, y) with the engine's
        optimiser (the robust distillation stage). Alternating: a generator step, then the
        student's :meth:`loss` on G(z, y)."""
        if self.loop == "official":
            x, y = batch
            loss, parts = self.loss(model, x, y, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.steps_done += 1
            return {"loss": loss.detach(), **parts}
        z, y = batch
        generated = self.generator_step(model, z, y, generator)
        try:
            x = self.synthesize(z, y)
            loss, parts = self.loss(model, x, y, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        except Exception as err:
            # the student's step may refuse the NaN samples of a generator that diverged in this
            # very step (an attack objective checks its inputs): name the cause. A host read of
            # the generator's loss on this error path only.
            objective = generated["generator_loss"]
            if torch.isfinite(objective):
                raise
            kind = "nan" if torch.isnan(objective) else ("inf" if objective > 0 else "-inf")
            raise FloatingPointError(f"generator_loss is {kind}") from err
        self.steps_done += 1
        return {"loss": loss.detach(), **parts, **generated}

    def teacher_logits(self, x: Tensor) -> Tensor:
        """T(x) without gradient (the teacher in eval mode, as always)."""
        with torch.no_grad():
            return self._require_setup()(x)

    def adversarial(self, network: nn.Module, x: Tensor, y: Tensor, objective,
                    generator: torch.Generator | None) -> Tensor:
        """The synthetic adversarial examples: distfair's PGD-ℓ∞ (``eps``, ``alpha``, ``steps``,
        uniform random start from ``generator``) ascending ``objective`` on the plain
        ``network`` (the teacher or the unwrapped student), which PGD puts in eval mode and
        restores; the teacher's eval mode is checked afterwards."""
        x_adv = self.pgd(network, x, y, generator=generator, objective=objective)
        check_teacher_eval(self._require_setup(), "after an attack")
        return x_adv

    # ---------------------------------------------------------------------------- state
    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def state_dict(self) -> dict[str, Any]:
        """The generator, its alternating-loop Adam, the step count, the memory bank (official
        loop; None before the first generation stage) and the subclass's :meth:`extra_state`.
        A generation stage's noise, labels, Adam and re-initialisation are drawn from that
        epoch's generator, so they need no state: a resumed epoch redraws them."""
        return {"generator": self.net.state_dict(), "generator_optimizer": self.net_optimizer.state_dict(),
                "steps_done": self.steps_done, "bank_x": self.bank_x, "bank_y": self.bank_y, **self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["generator"])
        self.net_optimizer.load_state_dict(state["generator_optimizer"])
        self.steps_done = int(state["steps_done"])
        device = self.require_context().device
        self.bank_x = None if state.get("bank_x") is None else state["bank_x"].to(device)
        self.bank_y = None if state.get("bank_y") is None else state["bank_y"].to(device)
        self.load_extra_state(state)
