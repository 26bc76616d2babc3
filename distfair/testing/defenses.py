"""The defense contract (``distfair/defenses/_base.py``) as checks any defense class can be run
through: the repository's registered defenses (``tests/test_defense_contract.py``) and a third
party's alike.

Each check is ``check(cls, references)``: ``cls`` a ``Defense`` subclass, built with
``cls.TEST_OPTIONS`` (its smallest options) on a tiny (1, 6, 6) three-class problem;
``references`` the files a defense reading references is set up with (option -> path, from
:func:`contract_references`). A check raises ``AssertionError`` saying what broke the contract,
and :data:`CHECKS` lists them all (:func:`check_defense` runs every one)::

    from distfair.testing import check_defense, contract_references

    with contract_references(tmp_dir) as references:
        check_defense(MyDefense, references)

The checks follow the lifecycle: construction and declarations, the per-batch ``loss`` (for a
defense that has one), the default or its own lifecycle (``batches``, ``train_step``,
``state_dict``), divergence through the engine's step loop, ``finish_training``, the
predictors and ``validation_metrics``.
"""
from __future__ import annotations

import copy
import inspect
import math
from typing import Callable

import numpy as np
import torch

from distfair.defenses import DEFENSE_RUNTIME_ARGS, Defense
from distfair.testing._asserts import raises
from distfair.testing._defense_problem import (BATCH, EPOCH_UNDER_TEST, IN_SHAPE, K, TEACHER_MODEL, ContractTeacher,
                                               References, UnreadableLoader, references_for, batch, build, context,
                                               contract_references, gen, has_default_lifecycle, make_attack,
                                               make_defense, own_defense, seeded_model, tensors_equal, tiny_cnn,
                                               tiny_linear)

__all__ = ["BATCH", "CHECKS", "EPOCH_UNDER_TEST", "IN_SHAPE", "K", "TEACHER_MODEL", "ContractTeacher",
           "UnreadableLoader", "batch", "build", "check_defense", "context", "contract_references", "gen",
           "has_default_lifecycle", "make_attack", "make_defense", "own_defense", "references_for", "seeded_model",
           "tensors_equal", "tiny_cnn", "tiny_linear", "turning_nan"]


# ------------------------------------------------------------------ construction, declarations
def check_signature_and_declarations(cls: type[Defense], references: References | None = None) -> None:
    """Keyword-only, annotated, defaulted options (the config validator reads the signature);
    declared options name real options; adversarial training needs an attack."""
    assert issubclass(cls, Defense) and isinstance(cls.name, str) and cls.name
    params = inspect.signature(cls).parameters
    for pname, p in params.items():
        assert p.kind is p.KEYWORD_ONLY, f"{cls.name}: option {pname} must be keyword-only"
        if pname not in DEFENSE_RUNTIME_ARGS:
            assert p.annotation is not p.empty, f"{cls.name}: option {pname} has no annotation"
            assert p.default is not p.empty, f"{cls.name}: option {pname} has no default"
    for option in (*cls.TEST_OPTIONS, *cls.reference_options):
        assert option in params, f"{cls.name}: {option!r} (TEST_OPTIONS / reference_options) is no option"
    for attr in ("adversarial_weight_option", "noise_sigma_option"):
        option = getattr(cls, attr)
        assert option is None or option in params, f"{cls.name}.{attr} = {option!r} is no option"
    assert isinstance(cls.adversarial_training, bool)
    assert not cls.adversarial_training or cls.needs_attack, \
        f"{cls.name}: adversarial_training without needs_attack (it trains on which attack?)"
    assert isinstance(build(cls), cls)


def check_refuses_bad_construction(cls: type[Defense], references: References | None = None) -> None:
    """No attack where one is needed, fewer than two classes: a ValueError naming the problem."""
    if cls.needs_attack:
        with raises(ValueError, match="attack"):
            cls(attack=None, num_classes=K, **cls.TEST_OPTIONS)
    with raises(ValueError, match="num_classes"):
        cls(attack=make_attack(), num_classes=1, **cls.TEST_OPTIONS)


def check_reference_needed_at_setup(cls: type[Defense], references: References | None = None) -> None:
    """A defense that reads references refuses to set up without them, naming the option."""
    for option in cls.reference_options:
        with raises(ValueError, match=option):
            build(cls).setup(context())


# ----------------------------------------------------------------------------- per-batch loss
def _has_loss(cls: type[Defense]) -> bool:
    return has_default_lifecycle(cls) or bool(cls.reference_options)


def check_loss_is_finite_scalar_with_detached_components(cls, references=None) -> None:
    if not _has_loss(cls):
        return
    model, (x, y) = seeded_model(), batch()
    loss, parts = make_defense(cls, references).loss(model, x, y, generator=gen())
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and loss.requires_grad
    assert torch.isfinite(loss)
    assert isinstance(parts, dict) and parts
    for key, value in parts.items():
        assert isinstance(key, str)
        assert isinstance(value, torch.Tensor) and value.ndim == 0, key
        assert not value.requires_grad and value.grad_fn is None, key
        assert torch.isfinite(value), key


def check_backward_gives_finite_grads_to_every_parameter(cls, references=None) -> None:
    if not _has_loss(cls):
        return
    model, (x, y) = seeded_model(), batch()
    loss, _ = make_defense(cls, references).loss(model, x, y, generator=gen())
    # loss() itself must not touch .grad (attacks take input gradients with autograd.grad)
    assert all(p.grad is None for p in model.parameters()), f"{cls.name}: loss() touched parameters' .grad"
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def check_model_stays_in_train_mode_and_inputs_untouched(cls, references=None) -> None:
    if not _has_loss(cls):
        return
    model, (x, y) = seeded_model(), batch()
    x0, y0 = x.clone(), y.clone()
    make_defense(cls, references).loss(model, x, y, generator=gen())
    assert all(m.training for m in model.modules()), f"{cls.name}: loss() left the model out of train mode"
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert not x.requires_grad and x.grad is None


def check_same_generator_seed_same_loss(cls, references=None) -> None:
    if not _has_loss(cls):
        return
    model, (x, y) = seeded_model(), batch()
    defense = make_defense(cls, references)
    (loss_a, parts_a), (loss_b, parts_b) = [defense.loss(copy.deepcopy(model), x, y, generator=gen(3))
                                            for _ in range(2)]
    assert torch.equal(loss_a, loss_b)
    assert parts_a.keys() == parts_b.keys()
    for key in parts_a:
        assert torch.equal(parts_a[key], parts_b[key]), key


# ------------------------------------------------------------------- lifecycle (simple case)
def check_default_lifecycle_is_the_per_batch_loss(cls, references=None) -> None:
    """setup keeps the context; batches are the engine's loader; train_step is loss -> backward
    -> the engine's optimiser step (the same update as by hand); no state to checkpoint."""
    if not has_default_lifecycle(cls):
        return
    torch.manual_seed(0)
    by_step = tiny_cnn().train()
    by_hand = copy.deepcopy(by_step)
    x, y = batch()
    defense = make_defense(cls, references)
    ctx = context(references_for(cls, references))
    defense.setup(ctx)
    assert defense.context is ctx and defense.require_context() is ctx
    loader = [(x, y)]
    assert defense.batches(loader, epoch=0) is loader
    opt_step = torch.optim.SGD(by_step.parameters(), lr=0.1, momentum=0.9)
    opt_hand = torch.optim.SGD(by_hand.parameters(), lr=0.1, momentum=0.9)
    logged = defense.train_step(by_step, (x, y), opt_step, generator=gen(3))
    hand = make_defense(cls, references)
    hand.setup(context(references_for(cls, references)))   # the same context: a defense may read it
    loss, parts = hand.loss(by_hand, x, y, generator=gen(3))
    opt_hand.zero_grad(set_to_none=True)
    loss.backward()
    opt_hand.step()
    assert list(logged) == ["loss", *parts]
    assert torch.equal(logged["loss"], loss.detach()) and not logged["loss"].requires_grad
    for (pname, a), b in zip(by_step.state_dict().items(), by_hand.state_dict().values()):
        assert torch.equal(a, b), pname
    assert defense.state_dict() == {}
    defense.load_state_dict({})


def check_train_step_hands_a_non_finite_loss_to_the_engine(cls, references=None) -> None:
    """No host read in the step (no ``if`` on the loss): it returns the non-finite loss, and
    the engine, which watches ``finite_parts`` on the device, fails the epoch."""
    model = seeded_model()
    if has_default_lifecycle(cls):
        defense = make_defense(cls, references)
        step_batch = batch()
    else:
        defense = own_defense(cls, references)
        step_batch = None
    defense.loss = lambda model, x, y, generator=None: (model(x).sum() * float("inf"), {})
    if step_batch is None:
        step_batch = next(iter(defense.batches(UnreadableLoader(), epoch=0)))
    logged = defense.train_step(model, step_batch, torch.optim.SGD(model.parameters(), lr=0.1), generator=gen())
    assert "loss" in defense.finite_parts and not torch.isfinite(logged["loss"])


def turning_nan(defense: Defense, *, step: int, kind: float = float("nan")) -> Defense:
    """``defense.loss`` turned non-finite at its ``step``-th call (1-based), counted in Python."""
    original, calls = defense.loss, {"n": 0}

    def loss(model, x, y, *, generator=None):
        value, parts = original(model, x, y, generator=generator)
        calls["n"] += 1
        return (value * kind if calls["n"] == step else value), parts

    defense.loss = loss
    return defense


def check_a_loss_turning_nan_is_reported_with_its_epoch_and_batch(cls, references=None) -> None:
    """Through the engine's step loop (``distfair.engine.steps.run_steps``, what
    ``train_epoch`` runs): a loss that turns NaN at the 2nd batch of the 2nd epoch fails the
    epoch with ``loss is nan at epoch 2, batch 2`` (1-based), also when a later step of the
    now-NaN model fails in its own way (FAAL's solver), and the numbers of the steps before it
    are never returned."""
    from distfair.engine.steps import Diverged, run_steps

    model = seeded_model()
    default = has_default_lifecycle(cls)
    defense = turning_nan(make_defense(cls, references) if default else own_defense(cls, references), step=2)
    batches = [batch(seed=i) for i in range(3)] if default else \
        list(defense.batches(UnreadableLoader(), epoch=EPOCH_UNDER_TEST)) * 2
    with raises(Diverged, match=r"^loss is nan at epoch 2, batch 2$") as err:
        run_steps(defense, model, batches, torch.optim.SGD(model.parameters(), lr=0.1),
                  epoch=EPOCH_UNDER_TEST, device=torch.device("cpu"), generator=gen())
    assert (err.value.epoch, err.value.batch, err.value.quantity, err.value.kind) == (2, 2, "loss", "nan")


# ------------------------------------------------------- lifecycle (own batches and train step)
def check_own_batches_never_read_the_loader_and_are_seeded_per_epoch_and_rank(cls, references=None) -> None:
    """Every rank yields as many batches (DDP), the same ones for the same (epoch, rank) (a
    resumed epoch draws what the uninterrupted one did), others for another epoch or rank."""
    if has_default_lifecycle(cls):
        return
    defense, other_rank = own_defense(cls, references), own_defense(cls, references, rank=1)
    epoch0 = list(defense.batches(UnreadableLoader(), epoch=0))
    assert len(epoch0) == len(list(other_rank.batches(UnreadableLoader(), epoch=0))) >= 1
    assert tensors_equal(epoch0, list(defense.batches(UnreadableLoader(), epoch=0)))
    assert not tensors_equal(epoch0, list(defense.batches(UnreadableLoader(), epoch=1)))
    assert not tensors_equal(epoch0, list(other_rank.batches(UnreadableLoader(), epoch=0)))


def check_own_train_step_trains_the_student_with_the_engines_optimizer(cls, references=None) -> None:
    if has_default_lifecycle(cls):
        return
    model = seeded_model()
    defense = own_defense(cls, references)
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step_batch = next(iter(defense.batches(UnreadableLoader(), epoch=0)))
    logged = defense.train_step(model, step_batch, optimizer, generator=gen(3))
    assert "loss" in logged
    for key, value in logged.items():
        assert isinstance(value, torch.Tensor) and value.ndim == 0, key
        assert not value.requires_grad and torch.isfinite(value), key
    assert all(m.training for m in model.modules())
    assert optimizer.state                                                   # the engine's optimiser stepped
    assert not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def check_own_state_dict_resumes_exactly(cls, references=None) -> None:
    """What ``state_dict`` returns after an epoch, loaded into a fresh set-up defense, makes
    the next epoch's step exactly what the uninterrupted defense's is."""
    if has_default_lifecycle(cls):
        return
    model = seeded_model()
    torch.manual_seed(0)
    straight = own_defense(cls, references)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    straight.start_epoch(model, None, epoch=0, batch_size=8, generator=gen())
    for step_batch in straight.batches(UnreadableLoader(), epoch=0):
        straight.train_step(model, step_batch, opt, generator=gen(1))
    state = copy.deepcopy(straight.state_dict())
    resumed = own_defense(cls, references)
    resumed.load_state_dict(state)
    model_b, opt_state = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9)
    opt_b.load_state_dict(opt_state)
    results = []
    for defense, net, optimizer in ((straight, model, opt), (resumed, model_b, opt_b)):
        defense.start_epoch(net, None, epoch=1, batch_size=8, generator=gen())
        results.append([defense.train_step(net, b, optimizer, generator=gen(2))
                        for b in defense.batches(UnreadableLoader(), epoch=1)])
    assert tensors_equal(*results)
    assert tensors_equal(model.state_dict(), model_b.state_dict())
    assert tensors_equal(straight.state_dict(), resumed.state_dict())


# ------------------------------------------------ after training: finish_training, predictors
def check_finish_training_and_predictors_keep_the_contract(cls, references=None) -> None:
    """After training: ``finish_training`` leaves the model's weights and mode alone and returns
    finite numbers; every predictor (per epoch and final) gives (B,) classes or ABSTAIN with
    float scores, abstains only if it may, and a predictor with a threshold rule abstains
    exactly where its rule rejects its own score; ``attack_model`` is differentiable."""
    from distfair.evaluation import ABSTAIN, predict, rejected_at

    model = seeded_model()
    before = copy.deepcopy(model.state_dict())
    defense = make_defense(cls, references)
    defense.setup(context(references_for(cls, references)))
    train = torch.utils.data.TensorDataset(*batch(labels=[0, 1, 2] * 8))
    numbers = defense.finish_training(model, train, batch_size=5)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers.values())
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x, _ = batch(seed=3)
    model.eval()
    for predictor in (defense.epoch_predictor(0), defense.predictor()):
        pred, score = predict(predictor, model, x, K)
        assert pred.shape == score.shape == (len(x),) and not model.training
        assert ((pred >= 0) & (pred < K) | (pred == ABSTAIN)).all()
        if not predictor.can_abstain:
            assert (pred != ABSTAIN).all()
        if predictor.reject_rule is not None:
            rejected = rejected_at(score.numpy(), predictor.reject_rule, [predictor.threshold])[0]
            assert np.array_equal(pred.numpy() == ABSTAIN, rejected)
        x_grad = x.clone().requires_grad_(True)
        predictor.attack_model(model)(x_grad).sum().backward()
        assert x_grad.grad is not None and torch.isfinite(x_grad.grad).all()


def check_validation_metrics_are_val_prefixed_finite_floats(cls, references=None) -> None:
    """``validation_metrics`` of an attacked validation pass (counts and soft sums, a class
    absent): ``val_``-prefixed names, finite floats, the inputs untouched, the same twice."""
    defense = make_defense(cls, references)
    counts = torch.tensor([[5, 1, 0], [2, 4, 0], [0, 0, 0]])
    soft = torch.tensor([[4.5, 1.0, 0.5], [1.5, 4.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    kept = counts.clone(), soft.clone()
    out = defense.validation_metrics(counts, soft)
    assert isinstance(out, dict)
    for key, value in out.items():
        assert isinstance(key, str) and key.startswith("val_"), f"{cls.name}: validation metric {key!r}"
        assert isinstance(value, float) and math.isfinite(value), f"{cls.name}: {key} = {value!r}"
    assert torch.equal(counts, kept[0]) and torch.equal(soft, kept[1])
    assert defense.validation_metrics(counts, soft) == out


#: name -> check, in lifecycle order; each is ``check(cls, references)``
CHECKS: dict[str, Callable[..., None]] = {
    check.__name__.removeprefix("check_"): check for check in (
        check_signature_and_declarations, check_refuses_bad_construction, check_reference_needed_at_setup,
        check_loss_is_finite_scalar_with_detached_components, check_backward_gives_finite_grads_to_every_parameter,
        check_model_stays_in_train_mode_and_inputs_untouched, check_same_generator_seed_same_loss,
        check_default_lifecycle_is_the_per_batch_loss, check_train_step_hands_a_non_finite_loss_to_the_engine,
        check_a_loss_turning_nan_is_reported_with_its_epoch_and_batch,
        check_own_batches_never_read_the_loader_and_are_seeded_per_epoch_and_rank,
        check_own_train_step_trains_the_student_with_the_engines_optimizer, check_own_state_dict_resumes_exactly,
        check_finish_training_and_predictors_keep_the_contract,
        check_validation_metrics_are_val_prefixed_finite_floats)
}


def check_defense(cls: type[Defense], references: References | None = None) -> None:
    """Every contract check on ``cls`` (:data:`CHECKS`)."""
    for check in CHECKS.values():
        check(cls, references)
