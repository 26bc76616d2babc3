"""FERD: Fairness-Enhanced data-free Robustness Distillation (Li, Lu, Zheng, Liang, Chen, Zhou &
Pang, 2025; paper 002, §"Methodology"; methods.md "FERD").

Over 400 lines because the method is one training step (generator, sample re-weighting, distillation
terms) whose parts are each cited to the paper and read in order; the shared machinery is already in
``_datafree.py``.

A data-free defense (shared machinery, conventions and the two training loops in
``_datafree.py``): a label-conditioned generator and the student are trained against a frozen
robust teacher T, without ever reading the training split, by default in the official code's
per-epoch loop (``loop: official``: a generation stage of ``gen_steps`` generator steps on a
re-initialised generator and learnable noise, the lowest-loss batch kept in a memory bank, then
``student_steps`` student steps on crop+flipped bank batches after ``warmup`` epochs; FERD
§"Methodology" "generation stage" / "robust distillation"; official ``test.py`` and
``IBD_module_cmi.py``), or ``loop: alternating``. The official code read is
github.com/mayaobuduyao/FERD at commit c975d9e (its files are cited by name below; nothing is
copied). On top of the DFRD baseline (``dfrd.py``) FERD adds:

1. **Robustness-guided class reweighting** (§"Class-Aware Sample Reweighting", Eq. 1-2). Which
   samples are measured: official loop, the batch each generation stage keeps, after the stage,
   for the next epoch's labels (the official ``Train_Gen_Module.train`` measures after each
   stage too, on the stage's last, augmented batch); alternating loop, at the start of every
   epoch after the first, ``reweight_samples`` fresh samples in equal class proportions. They
   are attacked with PGD-``reweight_steps`` (CE of the requested class y_i, ``eps``/``alpha``;
   the official ``pgd_attack``, PGD-20 at 8/255, 2/255, ``query_sample.py``) against the
   *teacher*; m_i = f^T(x_i^adv)_{y_i} − max_{j≠y_i} f^T(x_i^adv)_j (Eq. 1,
   :func:`distfair.attacks.cw_margin`) on the teacher's softmax *probabilities*
   (``reweight_margin: probability``, default) or on its logits (``logit``, the official
   code's), D_c = mean of −m_i over the samples of class c (Eq. 2) and the class probabilities
   p from :func:`reweighted_probabilities` (``reweight``): ``softmax`` p = softmax(D) (the
   paper's rule, default, methods.md); ``official_rescale`` the official code's rule (``test.py``,
   after each generation stage), D min-max rescaled into [0.05, 0.2] and normalised to sum 1;
   ``none`` D is measured and logged, p stays uniform. The official code at c975d9e applies
   its rescale to these logit margins (an older commit applied it to the teacher's per-class
   CE on clean synthetic samples, a block now commented out in ``IBD_module_cmi.py``); the
   official rule is therefore ``reweight: official_rescale`` with ``reweight_margin: logit``.
   Why probabilities by default: Eq. 1 does not say, but the paper writes f^T for the teacher's
   output *distribution* in every other equation (KL(f^T(x), ·) in Eq. 7, 8, 10, 11), and calls m_i
   "the gap between the model's confidence in the correct category and the strongest
   confusable category". The choice matters only under the softmax rule, whose output depends
   exponentially on D's scale: probability margins keep D in [−1, 1], so no class is sampled
   more than e² ≈ 7.4 times as often as another (the official [0.05, 0.2] allows 4); logit
   margins of a confident teacher span several units (measured on digits with a PGD-trained
   digits_cnn teacher: D from −3.2 to 7.4), and softmax(D) then put up to 95 % of an epoch's
   labels on one class (that run's student ended at chance; with probability margins the
   same run's class probabilities stayed within [0.03, 0.14]). Under the min-max rescale the
   scale is irrelevant. A class with no sample keeps its previous probability (the others
   share the rest; the official code gives it D = 0 instead). Epoch 0 samples uniformly, as
   the official code's first epoch. Labels are then drawn i.i.d. from p. Under DDP the
   per-class sums are all-reduced, so every rank samples with the same p.
2. **Fairness-aware examples (FAEs)** (§"Non-Robust Feature Suppression", Eq. 4-7): an
   information bottleneck at the teacher's ``ib_layer`` finds the non-robust channels (Eq. 6),
   and the generator minimises L_uni = KL(U ‖ f_{l+}(Z_nr)) (Eq. 7), the teacher's prediction
   from the non-robust features Z_nr = mask·f_l(x), weighted by ``lambda_uni`` (official
   ``loss_uni = KT_loss_student(t_logit_non_r, uniform)``, ``IBD_module_cmi.py``). The
   generator's loss is Eq. 9: −λ_adv·L_adv + λ_bn·L_bn + λ_oh·L_oh + λ_uni·L_uni (L_adv
   maximised, ``_datafree.py``). Two fits (``ib_fit``):
   ``channel`` (default, :class:`InformationBottleneck`): one learnable noise scale σ =
   softplus(λ) per channel (Eq. 4-6 index λ by channel), kept across iterations and epochs
   with its Adam state (warm-started), fitted ``ib_steps`` (5) times per generator step, at the
   teacher's ``feature_layer`` (the last convolutional stage; digits_cnn: after its ReLU and
   max-pool) unless ``ib_layer`` says otherwise. ``official``
   (:class:`SampleInformationBottleneck`, ``models/IFP.py`` ``find_features``, Kim et al.,
   NeurIPS 2021): a fresh λ per (sample, channel) at every generator step, ``ib_steps`` (50)
   Adam steps, noise per (sample, channel), the KL halved and averaged over per-sample spatial
   variances, at the output of the teacher's last BatchNorm, before its ReLU (the official
   ``pop=3``, ``models/wideresnet_ifd.py``). Both use β ``ib_beta`` 0.3 and lr ``ib_lr`` 0.1,
   the official code's (the paper gives neither). Cost: the official fit runs the teacher
   ``ib_steps`` times per generator step (distfair hooks the layer, so each fit step is a full
   teacher forward, its trunk without a graph; the official code propagates from the layer
   only), ten times the channel fit's 5 (measured on digits: docs/methods/data-free-distillation.md).
   What Eq. 5-6 select in practice (a property of the method, not of this code): Eq. 5's
   regulariser is minimised at σ_c² = v_c and its CE term only pushes σ down (always, when
   f_{l+} is affine in Z, as after digits_cnn's ``features``: E[CE] is then convex in the
   noise), so a fitted σ_c² stays near or below v_c ≤ max_c v_c and Eq. 6 marks (nearly) every
   channel non-robust. Measured with the PGD-trained digits_cnn teacher on real test digits:
   99-100 % of the channels, also with the official code's procedure, and also at the last
   convolution's or its BatchNorm's output instead of the trunk's. Then Z_nr = Z and
   L_uni = KL(U ‖ T(x)) opposes L_oh: the minimiser of λ_oh·CE(T(x), y) + λ_uni·KL(U ‖ T(x))
   is T(x)_y = (λ_oh + λ_uni/K)/(λ_oh + λ_uni), 0.25 at the paper's 1 and 5 and K = 10 (the
   digits run above: L_oh 1.41 = −log 0.244), so the generator makes samples on which the
   teacher is unsure and the student distils near-uniform targets. Eq. 6's λ_k² is the noise
   variance softplus(λ_k)² (Eq. 5 uses the same symbol for it; Kim et al.'s and the official
   FERD code compare softplus(λ)² with the largest variance), as here.
3. **Uniform-target adversarial examples (UTAEs)** (§"Label-Space Attack Diversification",
   Eq. 10): x_U = PGD from the FAE x_F on KL(T(x_F) ‖ N(x_U)) − γ·KL(U ‖ N(x_U))
   (:class:`distfair.attacks.UniformTargetKL`), ℓ∞ radius ``eps``, ``steps`` steps of ``alpha``,
   N the network ``utae_network`` names: ``student`` (default) or ``teacher``. Why the
   student: the official code attacks the student (``test.py`` ``train_model_ds_at`` calls
   ``query_sample.py`` ``generate_adv(student_model, ...)``), as RSLAD does, and Eq. 11 distils
   at f^S(x_U), the student's own adversarial examples; a robust teacher barely moves within ε,
   so examples made against it are nearly clean for the student. Eq. 10 writes f^T; that
   reading stays selectable (``utae_network: teacher``). The official release has the γ term
   commented out (its ``generate_adv`` ascends the KL only); here it is in (methods.md).
4. **Student loss** (Eq. 11): λ1·KL(T(x_F) ‖ S(x_F)) + λ2·KL(T(x_F) ‖ S(x_U)), batchmean, the
   teacher's prediction the target distribution, λ1 = 5/6, λ2 = 1/6 (Implementation Details).
   The official ``train_model_ds_at`` weights its clean and adversarial terms 5/6 and 1/6 too,
   but with its ``losses.py`` ``dkl_loss`` (a decoupled KL with a class-prior weighting) in
   place of the KL; methods.md lists its bugs (PGD arguments in the wrong order, the teacher
   left in train mode after PGD, the degenerate student loss, the UTAE term commented out):
   none of them is reproduced here.

What the UTAE term does, measured on digits (not a claim of the paper that holds everywhere):
against a standard-trained digits_cnn teacher on synthetic samples, γ = 0.5 spreads the
teacher's predicted classes on the UTAEs over more classes than γ = 0 (entropy of their
histogram about 1.3 -> 1.8-1.95 at ε = 0.2, three seeds; tests/test_ferd.py); on real digits
test images, and against a PGD-trained teacher, it mostly did not (entropy equal or 0.05-0.2
lower at ε 0.1-0.3): pushing T(x_U) towards uniform can also send the arg-max to one
"default" class.

Ablations (Table 3), each removing its part for real: ``reweighting: false`` no Eq. 1-2 pass,
labels in equal class proportions as DFRD, no ``class_prob_*`` logged; ``faes: false`` no
information bottleneck and no L_uni (``gen_uni``/``ib_*`` not logged); ``utaes: false`` the
γ term is dropped (x_U is plain KL-PGD against the network ``utae_network`` names, the
paper's γ = 0, "the same as the standard PGD method"; ``utae_uniform_kl`` not logged).

Options (keyword-only; the common ones are documented in ``DataFreeDistillation``):
    lambda_uni: weight of L_uni (Eq. 9: 5). lambda_bn default 5, lambda_adv 1, lambda_oh 1.
    gamma: γ of Eq. 10 (>= 0, default 0.5).
    lambda1, lambda2: weights of the student's clean and UTAE KL (Eq. 11: 5/6 and 1/6);
        lambda2 null means 1 − lambda1.
    reweight: "softmax" (default), "official_rescale" or "none"; reweight_margin:
        "probability" (default) or "logit", what the margin m_i of Eq. 1 is computed on (see
        1. above); reweight_steps: the PGD steps of the reweighting attack (paper PGD-20);
        reweight_samples: synthetic samples per reweighting pass (null: ``batch_size``; take
        >= K so that every class is measured).
    utae_network: "student" (default, the official code's and Eq. 11's f^S(x_U)) or "teacher"
        (Eq. 10's f^T as written): which network the UTAE PGD ascends (3. above).
    ib_fit: "channel" (default) or "official", the information bottleneck's fit (2. above).
    ib_layer: dotted module name of the teacher's layer l (null: the teacher's
        ``feature_layer`` for ``channel``, its last BatchNorm for ``official``); ib_beta: β of
        Eq. 5 (0.3); ib_lr (0.1), ib_steps: Adam learning rate and steps per fit (null: 5 for
        ``channel``, 50 for ``official``). The paper gives no β, learning rate or steps: β 0.3,
        lr 0.1 and 50 steps are the official code's (``models/IFP.py``).
    loop, gen_steps, student_steps, warmup, noise_lr, augment, crop_padding, bank_size: the
        training loop (``DataFreeDistillation``); ``reweight_samples`` is the alternating
        loop's (the official loop measures the kept batch).
    reweighting, faes, utaes: the ablation switches above (default true).
Shapes: synthetic batches (B, *in_shape) in the data's bounds, labels (B,).
Logged per step: ``loss``, ``kl_benign``, ``kl_adv``, ``utae_uniform_kl`` (alternating also
``generator_loss``, ``gen_adv``, ``gen_bn``, ``gen_oh``, ``gen_uni``, ``ib_loss``,
``ib_nonrobust_fraction``); per epoch: ``class_prob_max``, ``class_prob_min``,
``vulnerability_max``, ``vulnerability_min`` (official loop also ``generation_loss_first``,
``generation_loss_best``, ``generation_loss_last``, ``bank_samples`` and the last generator
step's ``gen_*``, ``ib_loss`` and ``ib_nonrobust_fraction``).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distfair.attacks import PGD, UniformTargetKL, cw_margin
from distfair.defenses._base import check_weight
from distfair.models import unwrap_model
from distfair.defenses._datafree import (DataFreeDistillation, _check_int, _check_positive, balanced_labels,
                                         channel_statistics, check_teacher_eval, kl_to_teacher, sample_labels,
                                         uniform_kl)

REWEIGHT_RULES = ("softmax", "official_rescale", "none")
#: what the adversarial margin of Eq. 1 is computed on: the teacher's probabilities or logits
REWEIGHT_MARGINS = ("probability", "logit")
#: the network Eq. 10's PGD ascends: the student (default, the official code's and Eq. 11's
#: f^S(x_U)) or the teacher (Eq. 10's f^T as written)
UTAE_NETWORKS = ("student", "teacher")
#: the information bottleneck's fit: one warm-started λ per channel (Eq. 4-6's indexing, default)
#: or the official code's fresh λ per (sample, channel) (models/IFP.py)
IB_FITS = ("channel", "official")
#: Adam steps per fit when ``ib_steps`` is null: 5 per generator step (ours), 50 (official IFD_iter)
IB_STEPS = {"channel": 5, "official": 50}
#: the official code's range of the rescaled class weights
OFFICIAL_RANGE = (0.05, 0.2)
#: floor of a channel variance in Eq. 5 (a dead channel would make log(σ²/v) infinite)
VARIANCE_FLOOR = 1e-8


# ----------------------------------------------------------------------- reweighting (Eq. 1-2)
def class_vulnerability(margins: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(Σ_{i: y_i=c} −m_i, N_c) per class c, each (K,) float: Eq. 2's numerator and count, kept
    apart so that ranks can add theirs before dividing."""
    sums = torch.zeros(num_classes, dtype=margins.dtype, device=margins.device).index_add_(0, labels, -margins)
    counts = torch.bincount(labels, minlength=num_classes).to(margins.dtype)
    return sums, counts


def reweighted_probabilities(vulnerability: Tensor, present: Tensor, previous: Tensor, rule: str) -> Tensor:
    """New class sampling probabilities from D_c (Eq. 2) of the ``present`` classes (bool (K,)).

    ``softmax``: softmax of D over the present classes (FERD Eq. 2 and the sentence after it);
    ``official_rescale``: w_c = 0.05 + 0.15·(D_c − min D)/(max D − min D + 1e-8), normalised (the
    official code's rule); ``none``: ``previous``. Absent classes keep their ``previous``
    probability; the present ones share the remaining mass in those proportions.
    """
    if rule not in REWEIGHT_RULES:
        raise ValueError(f"reweight must be one of {', '.join(REWEIGHT_RULES)}, got {rule!r}")
    if rule == "none" or not present.any():
        return previous.clone()
    d = vulnerability[present]
    if rule == "softmax":
        shares = torch.softmax(d, dim=0)
    else:
        low, high = OFFICIAL_RANGE
        w = low + (high - low) * (d - d.min()) / (d.max() - d.min() + 1e-8)
        shares = w / w.sum()
    out = previous.clone()
    out[present] = shares * previous[present].sum()
    return out


# ---------------------------------------------------------------- information bottleneck (Eq. 4-7)
def ib_objective(logits: Tensor, y: Tensor, noise_scale: Tensor, variances: Tensor, beta: float) -> Tensor:
    """FERD Eq. 5: CE(f_{l+}(Z_I), y) + β·Σ_c (v_c/σ_c² + log(σ_c²/v_c) − 1), σ = softplus(λ) the
    injected noise scale per channel, v the clean features' per-channel variances (floored at
    1e-8); CE averaged over the batch. (The official code halves the sum and averages it.)"""
    v = variances.clamp_min(VARIANCE_FLOOR)
    s2 = noise_scale.square()
    return F.cross_entropy(logits, y) + beta * (v / s2 + torch.log(s2 / v) - 1).sum()


def nonrobust_mask(noise_scale: Tensor, variances: Tensor) -> Tensor:
    """FERD Eq. 6: channel k is non-robust iff σ_k² < max_c v_c; a float 0/1 mask (C,)."""
    return (noise_scale.square() < variances.max()).to(variances.dtype)


class InformationBottleneck:
    """The learnable per-channel noise scale at one layer l of the teacher (FERD Eq. 4-7).

    Z = f_l(x) is the layer's output (B, C, ...), channel dim 1. :meth:`fit` runs ``steps``
    Adam steps (lr ``lr``) on λ (C,) of Eq. 5 with Z_I = Z + softplus(λ)·ε, ε ~ N(0, I) of Z's
    shape (Eq. 4, a forward hook adds it and the teacher's layers after l give f_{l+}(Z_I)),
    then sets the mask of Eq. 6. v_c = Var(z_r^{(c)}): the biased variance of channel c of
    the *clean* features Z over the batch and every spatial dim (Kim et al., NeurIPS 2021's
    z_r, the official code's ``latent_r``: the variance of Z_I would count the injected noise
    itself); Eq. 5 and Eq. 6 use the same v of the batch being fitted. λ starts at 0
    (σ = log 2) and is carried across iterations with its Adam state. :meth:`uniform_loss` is
    Eq. 7, L_uni = KL(U ‖ f_{l+}(mask·Z)), through a hook that masks the layer's output; the
    teacher's parameters are frozen, so gradients reach λ (fit) or the input (L_uni) only.
    """

    def __init__(self, teacher: nn.Module, layer: str, *, in_shape: tuple, bounds: tuple[float, float],
                 beta: float, lr: float, steps: int, device: torch.device):
        try:
            self.module = teacher.get_submodule(layer)
        except AttributeError:
            names = ", ".join(name for name, _ in teacher.named_modules() if name)
            raise ValueError(f"ib_layer {layer!r} is not a module of the teacher ({type(teacher).__name__}); "
                             f"its modules: {names}") from None
        self.layer, self.beta, self.steps = layer, beta, steps
        captured: list[Tensor] = []
        with torch.no_grad(), self._hooked(lambda out: captured.append(out)):
            teacher(torch.full((1, *in_shape), float(bounds[0]), device=device))
        out = captured[0] if captured else None
        if not isinstance(out, Tensor) or out.ndim < 2:
            got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"ib_layer {layer!r} must output a (B, C, ...) tensor with channels in dim 1, got {got}")
        self.channels, self.lr = out.shape[1], lr
        self.output_shape = tuple(out.shape[1:])
        self.spatial_size = math.prod(out.shape[2:])
        self.raw_scale = torch.zeros(self.channels, device=device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.raw_scale], lr=lr)
        self.mask = torch.ones(self.channels, device=device)

    @contextlib.contextmanager
    def _hooked(self, transform: Callable[[Tensor], Tensor | None]) -> Iterator[None]:
        """Inside the block, the layer's output goes through ``transform`` (None: unchanged)."""
        handle = self.module.register_forward_hook(lambda module, inputs, out: transform(out))
        try:
            yield
        finally:
            handle.remove()

    @staticmethod
    def _per_channel(values: Tensor, like: Tensor) -> Tensor:
        return values.view(1, -1, *([1] * (like.ndim - 2)))

    def noise_scale(self) -> Tensor:
        """σ = softplus(λ), (C,)."""
        return F.softplus(self.raw_scale)

    def fit(self, teacher: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """``steps`` Adam steps of Eq. 5 on the (detached) batch x with labels y, then the mask of
        Eq. 6. Returns detached ``ib_loss`` (the last step's Eq. 5) and ``ib_nonrobust_fraction``."""
        x = x.detach()
        captured: list[Tensor] = []
        with torch.no_grad(), self._hooked(lambda out: captured.append(out)):
            teacher(x)
        clean = captured[0]
        _, variances = channel_statistics(clean)
        logs: dict[str, Tensor] = {}
        for _ in range(self.steps):
            device = generator.device if generator is not None else clean.device
            noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype).to(clean.device)
            scale = self.noise_scale()
            with self._hooked(lambda out: out + self._per_channel(scale, out) * noise):
                logits = teacher(x)
            loss = ib_objective(logits, y, scale, variances, self.beta)
            (grad,) = torch.autograd.grad(loss, [self.raw_scale])
            self.raw_scale.grad = grad
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            logs["ib_loss"] = loss.detach()
        self.mask = nonrobust_mask(self.noise_scale().detach(), variances)
        check_teacher_eval(teacher, "after the information-bottleneck fit")
        logs["ib_nonrobust_fraction"] = self.mask.mean()
        return logs

    def uniform_loss(self, teacher: nn.Module, x: Tensor) -> Tensor:
        """L_uni = KL(U ‖ softmax(f_{l+}(mask·f_l(x)))) (Eq. 7), batchmean, gradient to x."""
        mask = self.mask
        with self._hooked(lambda out: out * self._per_channel(mask, out)):
            logits = teacher(x)
        return uniform_kl(logits)

    def state_dict(self) -> dict[str, Any]:
        return {"raw_scale": self.raw_scale.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "mask": self.mask.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.raw_scale.copy_(state["raw_scale"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.mask = state["mask"].to(self.raw_scale.device)


def official_ib_kl(latent: Tensor, noise_scale: Tensor) -> Tensor:
    """The official code's Eq. 5 regulariser (``models/IFP.py`` ``kl_div``), per (sample, channel):
    ½·mean_{b,c} (v_bc/(σ²_bc + δ) + log((σ²_bc + δ)/(v_bc + δ)) − 1), δ = 1e-10, v_bc the
    unbiased variance of latent[b, c] over its spatial dims (``p.var(dim=[2, 3])``), σ (B, C)."""
    delta = 1e-10
    v = latent.flatten(2).var(dim=2)
    s2 = noise_scale.square()
    return 0.5 * (v / (s2 + delta) + torch.log((s2 + delta) / (v + delta)) - 1).mean()


def last_batchnorm(teacher: nn.Module) -> str | None:
    """The dotted name of the teacher's last BatchNorm module (in module order), or None: where
    the official code reads its features (``pop=3``: the output of the last BatchNorm, before the
    ReLU, ``models/wideresnet_ifd.py``)."""
    names = [name for name, m in teacher.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return names[-1] if names else None


class SampleInformationBottleneck(InformationBottleneck):
    """The official code's bottleneck (``models/IFP.py`` ``InformativeFeaturePackage.find_features``,
    Kim et al. NeurIPS 2021's procedure): at every fit a *fresh* λ (B, C) = 0, one per (sample,
    channel), ``steps`` (official 50) Adam steps (lr ``lr``, official 0.1) on
    CE(f_{l+}(Z + softplus(λ)·ε), y) + β·:func:`official_ib_kl`, with noise ε ~ N(0, 1) per
    (sample, channel), broadcast over the spatial dims (``torch.normal(size=lambda_r.size())``,
    lambda_r (B, C, 1, 1)); then channel c of sample b is non-robust iff softplus(λ_bc)² <= the
    largest v_b'c' of the batch (``sample_robust_and_non_robust_latent``), a (B, C) mask that
    :meth:`uniform_loss` applies per sample (so the batch must be the one fitted). The layer
    must have spatial dims (per-sample variances). Nothing is carried between fits: the state
    is the last mask only."""

    def __init__(self, teacher: nn.Module, layer: str, **kwargs):
        super().__init__(teacher, layer, **kwargs)
        if self.spatial_size < 2:
            raise ValueError(f"ib_fit 'official' needs a layer with spatial dims (per-sample variances); ib_layer "
                             f"{layer!r} outputs {self.output_shape}: use ib_fit 'channel' or another ib_layer")

    def fit(self, teacher: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        x = x.detach()
        captured: list[Tensor] = []
        with torch.no_grad(), self._hooked(lambda out: captured.append(out)):
            teacher(x)
        clean = captured[0]
        shape = (*clean.shape[:2], *([1] * (clean.ndim - 2)))
        raw = torch.zeros(shape, device=clean.device, requires_grad=True)
        optimizer = torch.optim.Adam([raw], lr=self.lr)
        logs: dict[str, Tensor] = {}
        device = generator.device if generator is not None else clean.device
        for _ in range(self.steps):
            noise = torch.randn(shape, generator=generator, device=device, dtype=clean.dtype).to(clean.device)
            scale = F.softplus(raw)
            with self._hooked(lambda out: clean + scale * noise):
                logits = teacher(x)
            loss = F.cross_entropy(logits, y) + self.beta * official_ib_kl(clean, scale.flatten(1))
            (grad,) = torch.autograd.grad(loss, [raw])
            raw.grad = grad
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            logs["ib_loss"] = loss.detach()
        variances = clean.flatten(2).var(dim=2)
        self.mask = (F.softplus(raw.detach()).flatten(1).square() <= variances.max()).to(clean.dtype)
        check_teacher_eval(teacher, "after the information-bottleneck fit")
        logs["ib_nonrobust_fraction"] = self.mask.mean()
        return logs

    def uniform_loss(self, teacher: nn.Module, x: Tensor) -> Tensor:
        """L_uni (Eq. 7) with the per-sample mask of the last fit (official ``t_logit_non_r``)."""
        mask = self.mask
        if mask.ndim != 2 or mask.shape[0] != x.shape[0]:
            raise RuntimeError("SampleInformationBottleneck.uniform_loss needs the batch of its last fit")
        with self._hooked(lambda out: out * mask.view(*mask.shape, *([1] * (out.ndim - 2)))):
            logits = teacher(x)
        return uniform_kl(logits)

    def state_dict(self) -> dict[str, Any]:
        return {"mask": self.mask.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mask = state["mask"].to(self.raw_scale.device)


# ------------------------------------------------------------------------------------ FERD
class FERD(DataFreeDistillation):
    name = "ferd"
    #: small enough for the contract checks (distfair.testing): two batches of six, a tiny generator.
    #: The alternating loop: the contract draws batches without ``start_epoch``, and the official
    #: loop's bank is filled by ``start_epoch`` (tests/test_ferd.py checks the official loop)
    TEST_OPTIONS = {"iterations_per_epoch": 2, "batch_size": 6, "z_dim": 4, "generator_width": 2, "steps": 2,
                    "reweight_steps": 2, "ib_steps": 1, "loop": "alternating"}

    def __init__(self, *, attack=None, num_classes: int, teacher: str | None = None,
                 iterations_per_epoch: int = 400, batch_size: int = 256, z_dim: int = 100,
                 generator_width: int = 64, generator_lr: float = 2e-3, lambda_adv: float = 1.0,
                 lambda_bn: float = 5.0, lambda_oh: float = 1.0, lambda_uni: float = 5.0, gamma: float = 0.5,
                 lambda1: float = 5 / 6, lambda2: float | None = None, eps: float = 8 / 255,
                 alpha: float = 2 / 255, steps: int = 10, reweight: str = "softmax",
                 reweight_margin: str = "probability", reweight_steps: int = 20,
                 reweight_samples: int | None = None, ib_fit: str = "channel", ib_layer: str | None = None,
                 ib_beta: float = 0.3, ib_lr: float = 0.1, ib_steps: int | None = None, reweighting: bool = True,
                 faes: bool = True, utaes: bool = True, utae_network: str = "student", loop: str = "official",
                 gen_steps: int = 200, student_steps: int = 400, warmup: int = 20, noise_lr: float = 0.015,
                 augment: bool | None = None, crop_padding: int = 4, bank_size: int | None = None):
        super().__init__(attack=attack, num_classes=num_classes, teacher=teacher,
                         iterations_per_epoch=iterations_per_epoch, batch_size=batch_size, z_dim=z_dim,
                         generator_width=generator_width, generator_lr=generator_lr, lambda_adv=lambda_adv,
                         lambda_bn=lambda_bn, lambda_oh=lambda_oh, eps=eps, alpha=alpha, steps=steps, loop=loop,
                         gen_steps=gen_steps, student_steps=student_steps, warmup=warmup, noise_lr=noise_lr,
                         augment=augment, crop_padding=crop_padding, bank_size=bank_size)
        for name, value in (("lambda_uni", lambda_uni), ("gamma", gamma), ("lambda1", lambda1), ("ib_beta", ib_beta)):
            check_weight(name, value)
        self.weights["uni"] = float(lambda_uni)
        self.gamma, self.lambda1 = float(gamma), float(lambda1)
        if lambda2 is None:
            if lambda1 > 1:
                raise ValueError(f"lambda2 defaults to 1 - lambda1, which is negative for lambda1 {lambda1}: "
                                 "set lambda2")
            lambda2 = 1.0 - lambda1
        check_weight("lambda2", lambda2)
        self.lambda2 = float(lambda2)
        if reweight not in REWEIGHT_RULES:
            raise ValueError(f"reweight must be one of {', '.join(REWEIGHT_RULES)}, got {reweight!r}")
        self.reweight = reweight
        if utae_network not in UTAE_NETWORKS:
            raise ValueError(f"utae_network must be one of {', '.join(UTAE_NETWORKS)}, got {utae_network!r}")
        self.utae_network = utae_network
        if reweight_margin not in REWEIGHT_MARGINS:
            raise ValueError(f"reweight_margin must be one of {', '.join(REWEIGHT_MARGINS)}, got {reweight_margin!r}")
        self.reweight_margin = reweight_margin
        self.reweight_steps = _check_int("reweight_steps", reweight_steps, 1)
        self.reweight_samples = (None if reweight_samples is None
                                 else _check_int("reweight_samples", reweight_samples, 2))
        if ib_fit not in IB_FITS:
            raise ValueError(f"ib_fit must be one of {', '.join(IB_FITS)}, got {ib_fit!r}")
        self.ib_fit = ib_fit
        if ib_layer is not None and (not isinstance(ib_layer, str) or not ib_layer.strip()):
            raise ValueError(f"ib_layer must be a dotted module name of the teacher, got {ib_layer!r}")
        self.ib_layer, self.ib_beta = ib_layer, float(ib_beta)
        self.ib_lr = _check_positive("ib_lr", ib_lr)
        self.ib_steps = _check_int("ib_steps", IB_STEPS[ib_fit] if ib_steps is None else ib_steps, 1)
        for name, value in (("reweighting", reweighting), ("faes", faes), ("utaes", utaes)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {value!r}")
        self.reweighting, self.faes, self.utaes = reweighting, faes, utaes

    def setup(self, ctx) -> None:
        """The common setup (``_datafree.py``), then uniform class probabilities, the reweighting
        PGD and, with ``faes``, the information bottleneck at ``ib_layer`` (default: the
        teacher's ``feature_layer`` for ``ib_fit: channel``, its last BatchNorm for ``official``;
        ValueError if there is none)."""
        super().setup(ctx)
        self.class_probs = torch.full((self.num_classes,), 1 / self.num_classes, device=ctx.device)
        self.vulnerability = torch.full((self.num_classes,), float("nan"), device=ctx.device)
        self.reweight_attack = PGD(eps=self.eps, alpha=self.alpha, steps=self.reweight_steps, bounds=ctx.bounds)
        self.ib = None
        if self.faes:
            if self.ib_fit == "official":
                layer, where = self.ib_layer or last_batchnorm(self.teacher), "BatchNorm layer"
            else:
                layer, where = self.ib_layer or getattr(self.teacher, "feature_layer", None), "`feature_layer`"
            if not layer:
                raise ValueError(f"defense 'ferd': the teacher ({type(self.teacher).__name__}) has no {where}: set "
                                 "`defense.ib_layer` to the dotted name of its last convolutional stage (FERD Eq. 4), "
                                 "or disable the FAEs (`faes: false`)")
            cls = SampleInformationBottleneck if self.ib_fit == "official" else InformationBottleneck
            self.ib = cls(self.teacher, layer, in_shape=ctx.in_shape, bounds=ctx.bounds, beta=self.ib_beta,
                          lr=self.ib_lr, steps=self.ib_steps, device=ctx.device)

    # ----------------------------------------------------------------- reweighting (Eq. 1-2)
    def start_epoch(self, model, train_set, *, epoch, batch_size, generator):
        """Once per epoch; the training set is never read. Official loop: the generation stage
        (labels from the current class probabilities), then Eq. 1-2 on its kept batch, for the
        next epoch's labels (the official code measures after each generation stage,
        ``IBD_module_cmi.py``, on that stage's last batch; ours on the kept one, the batch the
        student trains on). Alternating: Eq. 1-2 on fresh samples from epoch 1 on. Logs the
        probabilities' range (and D's when measured)."""
        logs = super().start_epoch(model, train_set, epoch=epoch, batch_size=batch_size, generator=generator)
        if not self.reweighting:
            return logs
        if self.loop == "official":
            logs.update(self.update_class_probabilities(epoch, self.require_context().world, batch=self.kept))
        elif epoch > 0:
            logs.update(self.update_class_probabilities(epoch, self.require_context().world))
        return {**logs, "class_prob_max": float(self.class_probs.max()),
                "class_prob_min": float(self.class_probs.min())}

    def update_class_probabilities(self, epoch: int, world: int = 1,
                                   batch: tuple[Tensor, Tensor] | None = None) -> dict[str, float]:
        """Eq. 1-2 on ``batch`` (x, y), or on ``reweight_samples`` fresh synthetic samples in
        equal class proportions (randomness from ``context.generator("reweight", epoch)``),
        margins on the teacher's probabilities or logits (``reweight_margin``), then
        ``reweight``'s rule."""
        teacher = self._require_setup()
        g = self.context.generator("reweight", epoch)
        if batch is None:
            n = self.reweight_samples or self.batch_size
            y = balanced_labels(n, self.num_classes, g)
            x = self.synthesize(torch.randn(n, self.z_dim, generator=g, device=g.device), y)
        else:
            x, y = batch
        x_adv = self.reweight_attack(teacher, x, y, generator=g)
        check_teacher_eval(teacher, "after the reweighting attack")
        scores = self.teacher_logits(x_adv)
        if self.reweight_margin == "probability":
            scores = torch.softmax(scores, dim=1)
        margins = cw_margin(scores, y)
        sums, counts = class_vulnerability(margins, y, self.num_classes)
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        present = counts > 0
        self.vulnerability = torch.where(present, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
        self.class_probs = reweighted_probabilities(self.vulnerability, present, self.class_probs, self.reweight)
        measured = self.vulnerability[present]
        return {"vulnerability_max": float(measured.max()), "vulnerability_min": float(measured.min())}

    def draw_labels(self, n: int, generator: torch.Generator) -> Tensor:
        """Reweighted: i.i.d. from the class probabilities; ablated: equal class proportions."""
        if not self.reweighting:
            return super().draw_labels(n, generator)
        return sample_labels(self.class_probs, n, generator)

    # --------------------------------------------------------------------- FAEs (Eq. 4-9)
    def generator_terms(self, x, y, student, generator):
        """Eq. 8's terms and, with ``faes``, the bottleneck fit on x and L_uni (Eq. 7)."""
        terms, logs = super().generator_terms(x, y, student, generator)
        if self.faes:
            logs = {**logs, **self.ib.fit(self.teacher, x, y, generator)}
            terms["uni"] = self.ib.uniform_loss(self.teacher, x)
            check_teacher_eval(self.teacher, "after L_uni")
        return terms, logs

    # ------------------------------------------------------------------ student (Eq. 10-11)
    def loss(self, model, x, y, *, generator=None):
        """Eq. 11 on the FAEs x = x_F (B, ...) with labels y (B,): UTAEs x_U (Eq. 10, γ =
        ``gamma``, 0 with ``utaes: false``) against the network ``utae_network`` names: the
        unwrapped student by default, KL(T(x_F) ‖ S(x_U)) − γ·KL(U ‖ S(x_U)) (the official
        ``generate_adv(student_model, ...)``, Eq. 11's f^S(x_U)), or the teacher (Eq. 10's f^T
        as written); then λ1·KL(T(x_F) ‖ S(x_F)) + λ2·KL(T(x_F) ‖ S(x_U)) through ``model``.
        Components ``kl_benign``, ``kl_adv`` and, with UTAEs, ``utae_uniform_kl`` =
        KL(U ‖ T(x_U))."""
        teacher_logits = self.teacher_logits(x)
        objective = UniformTargetKL(teacher_logits, gamma=self.gamma if self.utaes else 0.0)
        network = self.teacher if self.utae_network == "teacher" else unwrap_model(model)
        x_u = self.adversarial(network, x, y, objective, generator)
        kl_benign = kl_to_teacher(teacher_logits, model(x))
        kl_adv = kl_to_teacher(teacher_logits, model(x_u))
        loss = self.lambda1 * kl_benign + self.lambda2 * kl_adv
        parts = {"kl_benign": kl_benign.detach(), "kl_adv": kl_adv.detach()}
        if self.utaes:
            parts["utae_uniform_kl"] = uniform_kl(self.teacher_logits(x_u))
        return loss, parts

    # ---------------------------------------------------------------------------- state
    def extra_state(self) -> dict[str, Any]:
        return {"class_probs": self.class_probs.clone(), "vulnerability": self.vulnerability.clone(),
                "ib": None if self.ib is None else self.ib.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        device = self.context.device
        self.class_probs = state["class_probs"].to(device)
        self.vulnerability = state["vulnerability"].to(device)
        if self.ib is not None:
            self.ib.load_state_dict(state["ib"])
