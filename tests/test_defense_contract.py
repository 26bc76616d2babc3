"""Properties every registered defense must have, run over every entry of ``DEFENSES``, then
defense-specific checks against losses computed by hand.

Adding a defense to the registry adds it here; its constructor must accept
``cls(attack=..., num_classes=K)`` with every other option defaulting.

A defense that reads a teacher (``"teacher" in reference_options``: the data-free FERD and
DFRD) is set up with a tiny BatchNorm teacher checkpoint (:class:`ContractTeacher`, registered
as a model for this module only) before its per-batch ``loss`` is checked, with small options
(:data:`SMALL_DATAFREE`). Defenses with their own lifecycle (their own ``batches`` or
``train_step``) run through the data-free lifecycle checks instead of the default one.
"""
import copy
import inspect
import math
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distfair.attacks import ATTACKS, PGD, build_attack
from distfair.config import ConfigError, validate
from distfair.defenses import DEFENSE_RUNTIME_ARGS, DEFENSES, Defense, DefenseContext, build_defense
from distfair.defenses.syfar import SyFAR
from distfair.models import MODELS

NAMES = sorted(DEFENSES)
NEEDS_ATTACK = [n for n in NAMES if DEFENSES[n].needs_attack]
#: defenses whose batches are the engine's loader and whose step is loss -> backward -> step
DEFAULT_LIFECYCLE = [n for n in NAMES if DEFENSES[n].batches is Defense.batches
                     and DEFENSES[n].train_step is Defense.train_step]
OWN_LIFECYCLE = [n for n in NAMES if n not in DEFAULT_LIFECYCLE]
WITH_TEACHER = [n for n in NAMES if "teacher" in DEFENSES[n].reference_options]
K = 3
BATCH = 12
#: small options of the data-free defenses (each gets those its signature has)
SMALL_DATAFREE = {"iterations_per_epoch": 2, "batch_size": 6, "z_dim": 4, "generator_width": 2, "steps": 2,
                  "reweight_steps": 2, "ib_steps": 1}
TEACHER_MODEL = "contract_teacher"
TEACHER_PATH: str | None = None       # set by the module fixture below


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


@pytest.fixture(scope="module", autouse=True)
def teacher_checkpoint(tmp_path_factory):
    """An engine-format checkpoint of :class:`ContractTeacher` (BatchNorm statistics of 64
    random inputs), its model name registered while this module runs."""
    global TEACHER_PATH
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MODELS, TEACHER_MODEL, ContractTeacher)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            teacher = ContractTeacher(num_classes=K, in_shape=(1, 6, 6))
            with torch.no_grad():
                teacher.train()(torch.rand(64, 1, 6, 6))
        path = tmp_path_factory.mktemp("contract_teacher") / "last.pt"
        torch.save({"model": teacher.state_dict(), "model_name": TEACHER_MODEL, "model_config": {"name": TEACHER_MODEL},
                    "num_classes": K, "in_shape": (1, 6, 6)}, path)
        TEACHER_PATH = str(path)
        yield path
        TEACHER_PATH = None


def make_attack() -> PGD:
    return PGD(eps=0.1, steps=2, bounds=(0.0, 1.0))


def make_defense(name: str, **options) -> Defense:
    """The defense with ``options``; one that reads a teacher is set up with the contract
    teacher (and small options), so its per-batch ``loss`` can run."""
    cls = DEFENSES[name]
    if name in WITH_TEACHER:
        params = inspect.signature(cls).parameters
        options = {**{k: v for k, v in SMALL_DATAFREE.items() if k in params}, **options}
    defense = cls(attack=make_attack() if cls.needs_attack else None, num_classes=K, **options)
    if name in WITH_TEACHER:
        defense.setup(context(references={"teacher": TEACHER_PATH}))
    return defense


def tiny_cnn(k: int = K) -> nn.Module:
    """BatchNorm makes train/eval mode observable (and must be restored by the attack)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, k))


def tiny_linear(k: int = K) -> nn.Module:
    """No BatchNorm: outputs do not depend on the order of train/eval passes, so losses can
    be recomputed by hand and compared exactly."""
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, k))


def batch(k: int = K, labels=None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(BATCH) % k if labels is None else torch.as_tensor(labels)
    x = torch.rand(len(y), 1, 6, 6, generator=g)
    return x, y


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


@pytest.fixture
def model():
    torch.manual_seed(0)
    return tiny_cnn().train()


# ----------------------------------------------------------------------------- contract
def test_registry_entry(name):
    cls = DEFENSES[name]
    assert issubclass(cls, Defense) and cls.name == name
    assert isinstance(build_defense(name, attack=make_attack(), num_classes=K), cls)
    # the config validator reads options from the signature: keyword-only, annotated, defaulted
    for pname, p in inspect.signature(cls).parameters.items():
        assert p.kind is p.KEYWORD_ONLY, pname
        if pname not in DEFENSE_RUNTIME_ARGS:
            assert p.annotation is not p.empty, pname
            assert p.default is not p.empty, pname


def test_loss_is_finite_scalar_with_detached_components(name, model):
    x, y = batch()
    loss, parts = make_defense(name).loss(model, x, y, generator=gen())
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and loss.requires_grad
    assert torch.isfinite(loss)
    assert isinstance(parts, dict) and parts
    for key, value in parts.items():
        assert isinstance(key, str)
        assert isinstance(value, torch.Tensor) and value.ndim == 0, key
        assert not value.requires_grad and value.grad_fn is None, key
        assert torch.isfinite(value), key


def test_backward_gives_finite_grads_to_every_parameter(name, model):
    x, y = batch()
    loss, _ = make_defense(name).loss(model, x, y, generator=gen())
    # loss() itself must not touch .grad (attacks take input gradients with autograd.grad)
    assert all(p.grad is None for p in model.parameters())
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_model_stays_in_train_mode(name, model):
    x, y = batch()
    make_defense(name).loss(model, x, y, generator=gen())
    assert all(m.training for m in model.modules())


def test_inputs_untouched(name, model):
    x, y = batch()
    x0, y0 = x.clone(), y.clone()
    make_defense(name).loss(model, x, y, generator=gen())
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert not x.requires_grad and x.grad is None


def test_same_generator_seed_same_loss(name, model):
    x, y = batch()
    defense = make_defense(name)
    runs = [defense.loss(copy.deepcopy(model), x, y, generator=gen(3)) for _ in range(2)]
    (loss_a, parts_a), (loss_b, parts_b) = runs
    assert torch.equal(loss_a, loss_b)
    assert parts_a.keys() == parts_b.keys()
    for key in parts_a:
        assert torch.equal(parts_a[key], parts_b[key]), key


@pytest.mark.parametrize("name", NEEDS_ATTACK)
def test_needs_attack_without_attack_raises(name):
    with pytest.raises(ValueError, match="attack"):
        DEFENSES[name](attack=None, num_classes=K)


def test_num_classes_below_two_raises(name):
    with pytest.raises(ValueError, match="num_classes"):
        DEFENSES[name](attack=make_attack(), num_classes=1)


# ------------------------------------------------------------- lifecycle (simple case)
def context(references: dict | None = None) -> DefenseContext:
    return DefenseContext(num_classes=K, in_shape=(1, 6, 6), bounds=(0.0, 1.0), class_names=("a", "b", "c"),
                          device=torch.device("cpu"), make_generator=lambda *labels: gen(),
                          references=references or {})


@pytest.mark.parametrize("name", DEFAULT_LIFECYCLE)
def test_default_lifecycle_is_the_per_batch_loss(name):
    """setup keeps the context; batches are the engine's loader; train_step is loss -> backward
    -> the engine's optimiser step (the same update as by hand); no state to checkpoint."""
    torch.manual_seed(0)
    by_step = tiny_cnn().train()
    by_hand = copy.deepcopy(by_step)
    x, y = batch()
    defense = make_defense(name)
    ctx = context()
    defense.setup(ctx)
    assert defense.context is ctx
    loader = [(x, y)]
    assert defense.batches(loader, epoch=0) is loader
    opt_step = torch.optim.SGD(by_step.parameters(), lr=0.1, momentum=0.9)
    opt_hand = torch.optim.SGD(by_hand.parameters(), lr=0.1, momentum=0.9)
    logged = defense.train_step(by_step, (x, y), opt_step, generator=gen(3))
    hand = make_defense(name)
    hand.setup(context())           # the same context: a defense may read it (bounds for clamping)
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


@pytest.mark.parametrize("name", DEFAULT_LIFECYCLE)
def test_default_train_step_hands_a_non_finite_loss_to_the_engine(name, model):
    """No host read in the step (no ``if`` on the loss): it returns the non-finite loss, and
    the engine, which watches ``finite_parts`` on the device, fails the epoch."""
    defense = make_defense(name)
    defense.loss = lambda model, x, y, generator=None: (model(x).sum() * float("inf"), {})
    logged = defense.train_step(model, batch(), torch.optim.SGD(model.parameters(), lr=0.1), generator=gen())
    assert "loss" in defense.finite_parts and not torch.isfinite(logged["loss"])


def turning_nan(defense: Defense, *, epoch: int, step: int, kind: float = float("nan")):
    """``defense.loss`` turned non-finite at its ``step``-th call (1-based) of ``epoch``
    (0-based; the engine's), counted in Python; the defense's own loss otherwise."""
    original, calls = defense.loss, {"n": 0}

    def loss(model, x, y, *, generator=None):
        value, parts = original(model, x, y, generator=generator)
        calls["n"] += 1
        return (value * kind if (epoch, calls["n"]) == (EPOCH_UNDER_TEST, step) else value), parts

    defense.loss = loss
    return defense


EPOCH_UNDER_TEST = 1      # 0-based: reported as "epoch 2"


@pytest.mark.parametrize("name", NAMES)
def test_a_loss_turning_nan_is_reported_with_its_epoch_and_batch(name, model):
    """Every defense, through the engine's step loop (``distfair.engine.steps.run_steps``, what
    ``train_epoch`` runs): a loss that turns NaN at the 2nd batch of the 2nd epoch fails the
    epoch with ``loss is nan at epoch 2, batch 2`` (1-based, as the ``epoch k/n`` progress
    lines), also when a later step of the now-NaN model fails in its own way (FAAL's solver),
    and the numbers of the steps before it are never returned."""
    from distfair.engine.steps import Diverged, run_steps

    defense = turning_nan(make_defense(name) if name in DEFAULT_LIFECYCLE else own_defense(name),
                          epoch=EPOCH_UNDER_TEST, step=2)
    batches = [batch(seed=i) for i in range(3)] if name in DEFAULT_LIFECYCLE else \
        list(defense.batches(_UnreadableLoader(), epoch=EPOCH_UNDER_TEST)) * 2
    with pytest.raises(Diverged, match=r"^loss is nan at epoch 2, batch 2$") as err:
        run_steps(defense, model, batches, torch.optim.SGD(model.parameters(), lr=0.1),
                  epoch=EPOCH_UNDER_TEST, device=torch.device("cpu"), generator=gen())
    assert (err.value.epoch, err.value.batch, err.value.quantity, err.value.kind) == (2, 2, "loss", "nan")


def test_an_infinite_loss_is_reported_as_inf(model):
    from distfair.engine.steps import Diverged, run_steps

    defense = turning_nan(make_defense("standard"), epoch=EPOCH_UNDER_TEST, step=3, kind=float("inf"))
    with pytest.raises(Diverged, match=r"^loss is inf at epoch 2, batch 3$"):
        run_steps(defense, model, [batch(seed=i) for i in range(4)], torch.optim.SGD(model.parameters(), lr=0.1),
                  epoch=EPOCH_UNDER_TEST, device=torch.device("cpu"), generator=gen())


@pytest.mark.parametrize("name", WITH_TEACHER)
def test_a_diverging_generator_is_named_before_the_student_it_poisons(name, model):
    """Data-free distillation watches the generator's objective first (``finite_parts``): a
    generator loss turning NaN at batch 1 is reported as such, not as the student's NaN loss
    that follows from its NaN samples in the same step."""
    from distfair.engine.steps import Diverged, run_steps

    defense = own_defense(name)
    assert defense.finite_parts[0] == "generator_loss"
    terms = defense.generator_terms

    def nan_terms(x, y, student, generator):
        found, logs = terms(x, y, student, generator)
        return {k: v * float("nan") for k, v in found.items()}, logs

    defense.generator_terms = nan_terms
    with pytest.raises(Diverged, match=r"^generator_loss is nan at epoch 1, batch 1$"):
        run_steps(defense, model, list(defense.batches(_UnreadableLoader(), epoch=0)),
                  torch.optim.SGD(model.parameters(), lr=0.1), epoch=0, device=torch.device("cpu"), generator=gen())


# ------------------------------------------------- lifecycle (own batches and train step)
class _UnreadableLoader:
    """The engine's loader, which a data-free defense must never iterate."""

    def __iter__(self):
        raise AssertionError("the defense read the engine's loader (the training set)")

    def __len__(self):
        return 5


def own_context(rank: int = 0) -> DefenseContext:
    """Rank ``rank`` of two, generators seeded from (labels, rank) as the engine's are, the
    contract teacher as the reference."""
    def make_generator(*labels):
        return torch.Generator().manual_seed(zlib.crc32(repr((labels, rank)).encode()))

    return DefenseContext(num_classes=K, in_shape=(1, 6, 6), bounds=(0.0, 1.0), class_names=("a", "b", "c"),
                          device=torch.device("cpu"), make_generator=make_generator, rank=rank, world=2,
                          references={"teacher": TEACHER_PATH})


def own_defense(name: str, rank: int = 0) -> Defense:
    cls = DEFENSES[name]
    params = inspect.signature(cls).parameters
    options = {k: v for k, v in SMALL_DATAFREE.items() if k in params} if name in WITH_TEACHER else {}
    defense = cls(attack=make_attack() if cls.needs_attack else None, num_classes=K, **options)
    defense.setup(own_context(rank))
    return defense


def _tensors_equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_tensors_equal(u, v) for u, v in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b) or bool(torch.isnan(a).all() and torch.isnan(b).all())
    return a == b


@pytest.mark.parametrize("name", OWN_LIFECYCLE)
def test_own_batches_never_read_the_loader_and_are_seeded_per_epoch_and_rank(name):
    """Every rank yields as many batches (DDP), the same ones for the same (epoch, rank) (a
    resumed epoch draws what the uninterrupted one did), others for another epoch or rank."""
    defense, other_rank = own_defense(name), own_defense(name, rank=1)
    epoch0 = list(defense.batches(_UnreadableLoader(), epoch=0))
    assert len(epoch0) == len(list(other_rank.batches(_UnreadableLoader(), epoch=0))) >= 1
    assert _tensors_equal(epoch0, list(defense.batches(_UnreadableLoader(), epoch=0)))
    assert not _tensors_equal(epoch0, list(defense.batches(_UnreadableLoader(), epoch=1)))
    assert not _tensors_equal(epoch0, list(other_rank.batches(_UnreadableLoader(), epoch=0)))


@pytest.mark.parametrize("name", OWN_LIFECYCLE)
def test_own_train_step_trains_the_student_with_the_engines_optimizer(name, model):
    defense = own_defense(name)
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch = next(iter(defense.batches(_UnreadableLoader(), epoch=0)))
    logged = defense.train_step(model, batch, optimizer, generator=gen(3))
    assert "loss" in logged
    for key, value in logged.items():
        assert isinstance(value, torch.Tensor) and value.ndim == 0, key
        assert not value.requires_grad and torch.isfinite(value), key
    assert all(m.training for m in model.modules())
    assert optimizer.state                                                   # the engine's optimiser stepped
    assert not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", OWN_LIFECYCLE)
def test_own_train_step_hands_a_non_finite_loss_to_the_engine(name, model):
    """As the default step: no host read, the non-finite loss is returned for the engine."""
    defense = own_defense(name)
    defense.loss = lambda model, x, y, generator=None: (model(x).sum() * float("inf"), {})
    step_batch = next(iter(defense.batches(_UnreadableLoader(), epoch=0)))
    logged = defense.train_step(model, step_batch, torch.optim.SGD(model.parameters(), lr=0.1), generator=gen())
    assert "loss" in defense.finite_parts and not torch.isfinite(logged["loss"])


@pytest.mark.parametrize("name", OWN_LIFECYCLE)
def test_own_state_dict_resumes_exactly(name, model):
    """What ``state_dict`` returns after an epoch, loaded into a fresh set-up defense, makes
    the next epoch's step exactly what the uninterrupted defense's is."""
    torch.manual_seed(0)
    straight = own_defense(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    straight.start_epoch(model, None, epoch=0, device=torch.device("cpu"), batch_size=8, generator=gen())
    for batch in straight.batches(_UnreadableLoader(), epoch=0):
        straight.train_step(model, batch, opt, generator=gen(1))
    state = copy.deepcopy(straight.state_dict())
    resumed = own_defense(name)
    resumed.load_state_dict(state)
    model_b, opt_state = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9)
    opt_b.load_state_dict(opt_state)
    results = []
    for defense, net, optimizer in ((straight, model, opt), (resumed, model_b, opt_b)):
        defense.start_epoch(net, None, epoch=1, device=torch.device("cpu"), batch_size=8, generator=gen())
        results.append([defense.train_step(net, batch, optimizer, generator=gen(2))
                        for batch in defense.batches(_UnreadableLoader(), epoch=1)])
    assert _tensors_equal(*results)
    assert _tensors_equal(model.state_dict(), model_b.state_dict())
    assert _tensors_equal(straight.state_dict(), resumed.state_dict())


@pytest.mark.parametrize("name", WITH_TEACHER)
def test_a_defense_reading_a_teacher_needs_it_at_setup(name):
    cls = DEFENSES[name]
    defense = cls(attack=make_attack() if cls.needs_attack else None, num_classes=K)
    with pytest.raises(ValueError, match="teacher"):
        defense.setup(context())


def test_context_generators_are_seeded_per_labels():
    from distfair.data import build_dataset
    from distfair.engine.train import defense_context

    data = build_dataset("synthetic", num_samples=30, num_classes=K, dim=4)
    a, b = (defense_context(data, 1, device=torch.device("cpu"), rank=r, world=2, references={"t": "f"})
            for r in (0, 1))
    draw = lambda ctx, *labels: torch.rand(3, generator=ctx.generator(*labels))  # noqa: E731
    assert torch.equal(draw(a, "batches", 0), draw(a, "batches", 0))         # same labels: same stream
    assert not torch.equal(draw(a, "batches", 0), draw(a, "batches", 1))     # per epoch
    assert not torch.equal(draw(a, "batches", 0), draw(b, "batches", 0))     # per rank
    assert (a.num_classes, a.in_shape, a.bounds, a.rank, a.world) == (K, tuple(data.in_shape), data.bounds, 0, 2)
    assert a.class_names == tuple(data.class_names) and a.references == {"t": "f"}


# ------------------------------------------- after training: finish_training and the predictors
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_finish_training_and_predictors_keep_the_contract(name):
    """After training: ``finish_training`` leaves the model's weights and mode alone and returns
    finite numbers; every predictor (per epoch and final) gives (B,) classes or ABSTAIN with
    float scores, abstains only if it may, and a predictor with a threshold rule abstains
    exactly where its rule rejects its own score; ``attack_model`` is differentiable."""
    from distfair.evaluation import ABSTAIN, predict, rejected_at

    torch.manual_seed(0)
    model = tiny_cnn().train()
    before = copy.deepcopy(model.state_dict())
    defense = make_defense(name)
    defense.setup(context({"teacher": TEACHER_PATH} if name in WITH_TEACHER else None))
    train = torch.utils.data.TensorDataset(*batch(labels=[0, 1, 2] * 8))
    numbers = defense.finish_training(model, train, device=torch.device("cpu"), batch_size=5)
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


# ------------------------------------------------------- threat models: defense × attack
#: every perturbation set an attack may declare (``Attack.norm``)
KNOWN_NORMS = {"linf", "l2", "patch", "mixed"}


def attack_variants() -> list[tuple[str, dict]]:
    """Every registered attack with its defaults (eps 0.1 where required), once per value of a
    ``norm`` option, and a mixed ensemble: (id, config block)."""
    variants = []
    for attack_name, cls in sorted(ATTACKS.items()):
        params = inspect.signature(cls).parameters
        block = {"name": attack_name}
        if params["eps"].default is inspect.Parameter.empty:
            block["eps"] = 0.1
        if "norm" in params:
            variants += [(f"{attack_name}-{norm}", {**block, "norm": norm}) for norm in ("linf", "l2")]
        else:
            variants.append((attack_name, block))
    variants.append(("ensemble-pgd,pgd_l2", {"name": "ensemble", "eps": 0.1, "members": "pgd,pgd_l2"}))
    return variants


VARIANTS = attack_variants()


def config_with(defense: str, attack: dict) -> dict:
    return {"defense": {"name": defense}, "dataset": {"name": "synthetic", "num_samples": 60, "num_classes": K},
            "model": {"name": "mlp", "hidden": 8}, "attack": attack,
            "eval": {"attacks": [{"name": "p", "attack": "pgd", "eps": 0.1, "steps": 2}]}, "seeds": [0]}


def test_defenses_with_their_own_inner_maximisation_declare_linf_only():
    """TRADES and SpecNorm project their KL maximiser onto an ℓ∞ box; the others call the
    configured attack as is and honour any threat model."""
    declared = {n: DEFENSES[n].attack_norms for n in NAMES if DEFENSES[n].attack_norms is not None}
    assert declared == {"trades": frozenset({"linf"}), "specnorm": frozenset({"linf"})}


def test_attacks_declare_their_threat_model():
    norms = {label: build_attack(block["name"], bounds=(0.0, 1.0), **{k: v for k, v in block.items() if k != "name"}).norm
             for label, block in VARIANTS}
    assert norms == {"autoattack-linf": "linf", "autoattack-l2": "l2", "cw_linf": "linf", "ensemble": "linf",
                     "eyeglass": "patch", "face_mask": "patch", "fgsm": "linf", "pgd": "linf", "pgd_l2": "l2",
                     "roa": "patch", "square-linf": "linf", "square-l2": "l2", "ensemble-pgd,pgd_l2": "mixed"}


@pytest.mark.parametrize("label,block", VARIANTS, ids=[label for label, _ in VARIANTS])
def test_validator_and_constructor_enforce_the_declared_threat_models(name, label, block):
    """Every registered defense × attack: a training attack whose ``norm`` the defense does not
    declare in ``attack_norms`` is one ``attack.name`` problem of the config (nothing is built
    or started), and the constructor refuses it too; every other pair validates."""
    attack = build_attack(block["name"], bounds=(0.0, 1.0), **{k: v for k, v in block.items() if k != "name"})
    assert attack.norm in KNOWN_NORMS, f"{label} declares no known threat model (Attack.norm)"
    cls = DEFENSES[name]
    raw = config_with(name, block)
    if cls.attack_norms is None or attack.norm in cls.attack_norms:
        assert validate(raw, "cfg.yaml")["attack"]["name"] == block["name"]
        assert isinstance(cls(attack=attack, num_classes=K), cls)
        return
    with pytest.raises(ConfigError) as info:
        validate(raw, "cfg.yaml")
    assert [key for key, _ in info.value.problems] == ["attack.name"]
    line = str(info.value)
    assert line.startswith("cfg.yaml: attack.name: ") and f"'{name}'" in line and f"'{block['name']}'" in line
    assert f"({attack.norm!r})" in line and all(repr(norm) in line for norm in cls.attack_norms)
    with pytest.raises(ValueError, match=f"'{name}'.*'{block['name']}'"):
        cls(attack=attack, num_classes=K)


# ------------------------------------------------------------------------- by-hand losses
def adversarial(model, x, y, seed: int = 7):
    """The attack the defenses run, with the same generator seed."""
    return make_attack()(model, x, y, generator=gen(seed))


def test_standard_equals_plain_ce():
    torch.manual_seed(0)
    model = tiny_linear().train()
    x, y = batch()
    loss, parts = make_defense("standard").loss(model, x, y, generator=gen())
    expected = F.cross_entropy(model(x), y)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    torch.testing.assert_close(parts["clean_ce"], expected.detach(), rtol=0, atol=0)


def test_pgd_at_equals_ce_of_attacked_batch():
    torch.manual_seed(0)
    model = tiny_linear().train()
    x, y = batch()
    loss, parts = make_defense("pgd_at").loss(model, x, y, generator=gen(7))
    x_adv = adversarial(model, x, y, seed=7)
    assert not torch.equal(x_adv, x)  # the attack did something
    expected = F.cross_entropy(model(x_adv), y)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts["adv_ce"], expected.detach(), rtol=1e-6, atol=1e-7)


def test_syfar_without_symmetry_is_weighted_ce():
    torch.manual_seed(0)
    model = tiny_linear().train()
    x, y = batch()
    lc, la = 0.3, 0.7
    loss, _ = make_defense("syfar", lambda_clean=lc, lambda_adv=la, lambda_sym=0.0).loss(
        model, x, y, generator=gen(7))
    x_adv = adversarial(model, x, y, seed=7)
    expected = lc * F.cross_entropy(model(x), y) + la * F.cross_entropy(model(x_adv), y)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)


def hand_symmetry(probs: torch.Tensor, y: torch.Tensor, classes, eps: float) -> float:
    """Sy-FAR Eq. 1-2 by loops, over the given classes only: C[i][j] = mean of probs[:, j]
    over the samples of class i; sum over pairs i < j of |a-b| / (a+b+eps) * (a+b)."""
    p = probs.detach().double()
    C = {i: {j: p[y == i, j].mean().item() for j in classes} for i in classes}
    total = 0.0
    for n, i in enumerate(classes):
        for j in classes[n + 1:]:
            a, b = C[i][j], C[j][i]
            total += abs(a - b) / (a + b + eps) * (a + b)
    return total


@pytest.mark.parametrize("sym_eps", [None, 0.5])
def test_syfar_symmetry_term_by_hand(sym_eps):
    torch.manual_seed(0)
    k = 4
    model = tiny_linear(k).train()
    x, y = batch(k)
    _, parts = SyFAR(attack=make_attack(), num_classes=k, sym_eps=sym_eps).loss(model, x, y, generator=gen(7))
    probs = model(adversarial(model, x, y, seed=7)).softmax(dim=1)
    expected = hand_symmetry(probs, y, list(range(k)), 1 / k if sym_eps is None else sym_eps)
    assert expected > 1e-4  # a random model is not symmetric: the check is not vacuous
    assert parts["sym"].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_syfar_absent_classes_add_no_penalty():
    torch.manual_seed(0)
    k = 6
    model = tiny_linear(k).train()
    present = [0, 2, 3]
    x, y = batch(k, labels=[present[i % 3] for i in range(BATCH)])
    _, parts = SyFAR(attack=make_attack(), num_classes=k).loss(model, x, y, generator=gen(7))
    probs = model(adversarial(model, x, y, seed=7)).softmax(dim=1)
    # ε stays 1/K of the task; only pairs of classes present in the batch count
    expected = hand_symmetry(probs, y, present, 1 / k)
    assert expected > 1e-4
    assert parts["sym"].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # what the term would be if absent classes' zero rows were paired with present ones
    with_absent = hand_symmetry_with_zero_rows(probs, y, k, 1 / k)
    assert with_absent > expected + 1e-4


def hand_symmetry_with_zero_rows(probs, y, k, eps):
    p = probs.detach().double()
    C = [[p[y == i, j].mean().item() if (y == i).any() else 0.0 for j in range(k)] for i in range(k)]
    return sum(abs(C[i][j] - C[j][i]) / (C[i][j] + C[j][i] + eps) * (C[i][j] + C[j][i])
               for i in range(k) for j in range(i + 1, k))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.1, 1.0, 10.0), (0.0, 2.0, 0.5), (1.0, 0.0, 0.0)])
def test_syfar_weights_scale_components(weights):
    torch.manual_seed(0)
    model = tiny_linear().train()
    x, y = batch()
    lc, la, ls = weights
    loss, parts = SyFAR(attack=make_attack(), num_classes=K, lambda_clean=lc, lambda_adv=la,
                        lambda_sym=ls).loss(copy.deepcopy(model), x, y, generator=gen(7))
    _, unit = SyFAR(attack=make_attack(), num_classes=K).loss(copy.deepcopy(model), x, y, generator=gen(7))
    assert set(parts) == {"clean_ce", "adv_ce", "sym"}
    for key in parts:  # the components themselves do not depend on the weights
        torch.testing.assert_close(parts[key], unit[key], rtol=0, atol=0)
    expected = lc * parts["clean_ce"] + la * parts["adv_ce"] + ls * parts["sym"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-7)


def test_syfar_defaults_are_unit_weights_and_eps_one_over_k():
    defense = SyFAR(attack=make_attack(), num_classes=K)
    assert (defense.lambda_clean, defense.lambda_adv, defense.lambda_sym) == (1.0, 1.0, 1.0)
    assert defense.sym_eps is None


@pytest.mark.parametrize("option,value", [
    ("lambda_clean", -0.1), ("lambda_adv", -1.0), ("lambda_sym", -1e-3),
    ("sym_eps", 0.0), ("sym_eps", -1.0),
])
def test_syfar_rejects_impossible_options(option, value):
    with pytest.raises(ValueError, match=option):
        SyFAR(attack=make_attack(), num_classes=K, **{option: value})


def test_syfar_zero_weights_are_allowed():
    defense = SyFAR(attack=make_attack(), num_classes=K, lambda_clean=0.0, lambda_adv=0.0, lambda_sym=0.0)
    loss, _ = defense.loss(tiny_linear().train(), *batch(), generator=gen())
    assert loss.item() == 0.0 and math.isfinite(loss.item())
