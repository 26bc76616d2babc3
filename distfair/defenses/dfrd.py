"""DFRD: the data-free robustness distillation baseline of FERD Table 1 (paper 002,
§"Experimental Settings", Baselines; methods.md "FERD").

FERD compares against data-free knowledge distillation methods (DeepInv, CMI, Fast, ...)
"turned into DFRD" by making PGD adversarial examples of the synthetic samples and training
the student with RSLAD's loss (Zi et al., ICCV 2021). This is that baseline with a
Fast/DeepInversion-style generator (``_datafree.py``, the same generator class as FERD), trained
by default in the official FERD code's per-epoch loop (``loop: official``: a re-initialised
generator and learnable noise optimised ``gen_steps`` steps per epoch, the lowest-loss batch
kept in a memory bank, ``student_steps`` student steps per epoch on crop+flipped bank batches
after ``warmup`` epochs; ``test.py``, ``IBD_module_cmi.py``; ``_datafree.py`` says how), so that
FERD and its baseline differ only in FERD's parts; ``loop: alternating`` is distfair's earlier
one-generator-step-one-student-step loop:

- labels in equal class proportions (FERD §"Class-Aware Sample Reweighting": "in traditional
  DFRD, the labels y_i of synthetic samples are sampled from a uniform distribution");
- generator loss −λ_adv·L_adv + λ_bn·L_bn + λ_oh·L_oh (FERD Eq. 8-9 without L_uni; Fast's
  loss, with L_adv maximised; defaults 1, 5, 1 as FERD's, for a like-for-like comparison);
- adversarial examples by PGD-ℓ∞ against the *student* (unwrapped, eval mode inside the
  attack, mode restored) on RSLAD's inner objective KL(T(x) ‖ S(x_adv))
  (:class:`distfair.attacks.SoftTargetKL` of the teacher's clean prediction), ``eps``,
  ``alpha``, ``steps``, from a uniform random start (RSLAD starts at x + 0.001·N(0, 1));
- student loss RSLAD 5/6·KL(T(x) ‖ S(x_adv)) + 1/6·KL(T(x) ‖ S(x)), batchmean
  (:func:`distfair.defenses._datafree.rslad_loss`, direction and reduction documented there).

Options: those of ``DataFreeDistillation`` (teacher, iterations_per_epoch 400, batch_size 256,
z_dim 100, generator_width 64, generator_lr 2e-3, lambda_adv 1, lambda_bn 5, lambda_oh 1,
eps 8/255, alpha 2/255, steps 10, loop official, gen_steps 200, student_steps 400, warmup 20,
noise_lr 0.015, augment null (on for images), crop_padding 4, bank_size null).
The student's adversarial examples are made against the student, as the official
``query_sample.py`` ``generate_adv`` (called from ``test.py``) and RSLAD make them.
Logged per step: ``loss``, ``kl_adv``, ``kl_clean`` (alternating also ``generator_loss``,
``gen_adv``, ``gen_bn``, ``gen_oh``); per epoch in the official loop: ``generation_loss_first``,
``generation_loss_best``, ``generation_loss_last``, ``bank_samples`` and the last generator
step's ``gen_*``.
"""
from __future__ import annotations

import torch.nn.functional as F

from distfair.attacks import SoftTargetKL
from distfair.defenses._datafree import DataFreeDistillation, rslad_loss
from distfair.models import unwrap_model


class DFRD(DataFreeDistillation):
    name = "dfrd"
    #: small enough for the contract checks (distfair.testing): two batches of six, a tiny generator.
    #: The alternating loop: the contract draws batches without ``start_epoch``, and the official
    #: loop's bank is filled by ``start_epoch`` (tests/test_ferd.py checks the official loop)
    TEST_OPTIONS = {"iterations_per_epoch": 2, "batch_size": 6, "z_dim": 4, "generator_width": 2, "steps": 2,
                    "loop": "alternating"}

    def loss(self, model, x, y, *, generator=None):
        """RSLAD on the synthetic batch x (B, ...) (``y`` (B,) only shapes the attack call):
        PGD on the student towards KL(T(x) ‖ S(x_adv)), then 5/6·KL(T(x) ‖ S(x_adv)) +
        1/6·KL(T(x) ‖ S(x)) through ``model``."""
        teacher_logits = self.teacher_logits(x)
        objective = SoftTargetKL(F.log_softmax(teacher_logits, dim=1), log_target=True)
        x_adv = self.adversarial(unwrap_model(model), x, y, objective, generator)
        return rslad_loss(teacher_logits, model(x_adv), model(x))
