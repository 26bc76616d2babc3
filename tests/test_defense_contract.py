"""The defense contract over every entry of ``DEFENSES``, then defense-specific checks against
losses computed by hand.

The contract checks themselves ship with the package (``distfair.testing.defenses``, run on any
defense class, a third party's too); this module runs each of them on each registered defense,
built with its declared ``TEST_OPTIONS``. Adding a defense to the registry adds it here. What
stays here is the registry's own table (names, threat models against every registered attack,
the configuration validator) and the by-hand losses.
"""
import copy
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from distfair.attacks import ATTACKS, build_attack
from distfair.config import ConfigError, validate
from distfair.defenses import DEFENSES, Defense, build_defense
from distfair.defenses.syfar import SyFAR
from distfair.testing import defenses as contract
from distfair.testing.defenses import (BATCH, EPOCH_UNDER_TEST, K, UnreadableLoader, batch, gen, make_attack, own_defense,
                                       tiny_linear)

NAMES = sorted(DEFENSES)
WITH_TEACHER = [n for n in NAMES if "teacher" in DEFENSES[n].reference_options]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The contract problem's reference files (a BatchNorm teacher checkpoint, its model name
    registered while this module runs)."""
    with contract.contract_references(tmp_path_factory.mktemp("contract_references")) as found:
        yield found


def make_defense(name: str, references=None, **options) -> Defense:
    return contract.make_defense(DEFENSES[name], references, **options)


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


@pytest.fixture
def model():
    return contract.seeded_model()


# ----------------------------------------------------------------------------- contract
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("check", list(contract.CHECKS))
def test_contract(check, name, references):
    """``distfair.testing.defenses.<check>`` on the registered defense ``name``."""
    contract.CHECKS[check](DEFENSES[name], references)


def test_registry_entry(name):
    cls = DEFENSES[name]
    assert issubclass(cls, Defense) and cls.name == name
    assert isinstance(build_defense(name, attack=make_attack(), num_classes=K, **cls.TEST_OPTIONS), cls)


def test_a_third_party_defense_is_checked_by_the_same_contract(references):
    """A defense outside the registry runs through the same checks; one that breaks the
    contract (its loss reads the model in eval mode and leaves it there) fails them."""
    class Plain(Defense):
        name = "plain"
        needs_attack = False

        def loss(self, model, x, y, *, generator=None):
            value = F.cross_entropy(model(x), y)
            return value, {"clean_ce": value.detach()}

    contract.check_defense(Plain, references)

    class LeavesEvalMode(Plain):
        def loss(self, model, x, y, *, generator=None):
            return super().loss(model.eval(), x, y, generator=generator)

    with pytest.raises(AssertionError, match="train mode"):
        contract.check_model_stays_in_train_mode_and_inputs_untouched(LeavesEvalMode, references)


def test_an_infinite_loss_is_reported_as_inf(model):
    from distfair.engine.steps import Diverged, run_steps

    defense = contract.turning_nan(make_defense("standard"), step=3, kind=float("inf"))
    with pytest.raises(Diverged, match=r"^loss is inf at epoch 2, batch 3$"):
        run_steps(defense, model, [batch(seed=i) for i in range(4)], torch.optim.SGD(model.parameters(), lr=0.1),
                  epoch=EPOCH_UNDER_TEST, device=torch.device("cpu"), generator=gen())


@pytest.mark.parametrize("name", WITH_TEACHER)
def test_a_diverging_generator_is_named_before_the_student_it_poisons(name, model, references):
    """Data-free distillation watches the generator's objective first (``finite_parts``): a
    generator loss turning NaN at batch 1 is reported as such, not as the student's NaN loss
    that follows from its NaN samples in the same step."""
    from distfair.engine.steps import Diverged, run_steps

    defense = own_defense(DEFENSES[name], references)
    assert defense.finite_parts[0] == "generator_loss"
    terms = defense.generator_terms

    def nan_terms(x, y, student, generator):
        found, logs = terms(x, y, student, generator)
        return {k: v * float("nan") for k, v in found.items()}, logs

    defense.generator_terms = nan_terms
    with pytest.raises(Diverged, match=r"^generator_loss is nan at epoch 1, batch 1$"):
        run_steps(defense, model, list(defense.batches(UnreadableLoader(), epoch=0)),
                  torch.optim.SGD(model.parameters(), lr=0.1), epoch=0, device=torch.device("cpu"), generator=gen())


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
