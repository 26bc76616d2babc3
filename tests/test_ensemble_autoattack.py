"""Per-sample ensembles (``sequential``/``Ensemble``), Square and AutoAttack through ART."""
import inspect
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distfair.attacks import FGSM, PGD, Attack, AutoAttack, Ensemble, Square, build_attack
from distfair.attacks._art import EOT, is_randomized
from distfair.attacks.ensemble import sequential


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def identity_model() -> nn.Module:
    """logits = x (3 features, 3 classes): margins are readable off the inputs."""
    model = nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
        model.bias.zero_()
    return model.eval()


def predict(model, x):
    with torch.no_grad():
        return model.eval()(x).argmax(1)


class Spy(Attack):
    """Records what it receives; returns ``x + shift`` (or x), or delegates to ``inner``."""

    name = "spy"

    def __init__(self, inner: Attack | None = None, shift: torch.Tensor | None = None):
        super().__init__(eps=1.0, bounds=(-10.0, 10.0))
        self.inner, self.shift, self.seen, self.targets = inner, shift, [], []

    def _perturb(self, model, x, y, target, generator):
        self.seen.append(x.clone())
        self.targets.append(target)
        if self.inner is not None:
            return self.inner(model, x, y, target=target, generator=generator)
        return x if self.shift is None else x + self.shift


# ---------------------------------------------------------------- sequential / Ensemble
@pytest.fixture
def linear_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).eval()
    x = torch.rand(64, 1, 6, 6)
    y = predict(model, x)
    y[::3] = torch.randint(0, 3, (len(y[::3]),))  # some clean points misclassified
    return model, x, y


def test_final_flags_are_the_and_of_members_run_alone(linear_setup):
    model, x, y = linear_setup
    fgsm = FGSM(eps=0.1)
    pgd = PGD(eps=0.1, steps=5, random_start=False)
    x_adv, stages = sequential(model, x, y, [("fgsm", fgsm), ("pgd", pgd)], target=None, generator=gen())
    clean = predict(model, x) == y
    alone = {name: predict(model, attack(model, x, y)) == y for name, attack in [("fgsm", fgsm), ("pgd", pgd)]}
    assert list(stages) == ["fgsm", "pgd"]
    assert torch.equal(stages["fgsm"], clean & alone["fgsm"])
    assert torch.equal(stages["pgd"], clean & alone["fgsm"] & alone["pgd"])
    assert 0 < stages["pgd"].sum() < clean.sum()  # the test is not vacuous
    assert torch.equal(predict(model, x_adv) == y, stages["pgd"])  # x_adv matches the flags


def test_ensemble_of_deterministic_members_matches_the_members(linear_setup):
    model, x, y = linear_setup
    ensemble = Ensemble(eps=0.1, members="fgsm, fgsm")
    x_adv, stages = ensemble.run_stages(model, x, y, generator=gen())
    assert list(stages) == ["fgsm", "fgsm#2"]
    expected = (predict(model, x) == y) & (predict(model, FGSM(eps=0.1)(model, x, y)) == y)
    assert torch.equal(stages["fgsm"], expected) and torch.equal(stages["fgsm#2"], expected)
    assert torch.equal(ensemble(model, x, y, generator=gen()), x_adv)


def test_members_only_see_still_robust_points_and_misclassified_are_not_attacked():
    model = identity_model()
    x = torch.tensor([[1.0, 0.0, 0.0],    # y=0, margin 1: broken by FGSM eps 0.6
                      [3.0, 0.0, 0.0],    # y=0, margin 3: robust
                      [0.0, 2.0, 0.0],    # y=0 but predicted 1: misclassified clean
                      [0.0, 0.0, 5.0]])   # y=2, margin 5: robust
    y = torch.tensor([0, 0, 0, 2])
    first, second = Spy(inner=FGSM(eps=0.6, bounds=(-10.0, 10.0))), Spy()
    x_adv, stages = sequential(model, x, y, [("a", first), ("b", second)], target=None, generator=None)
    assert torch.equal(first.seen[0], x[[0, 1, 3]])           # clean-correct points only
    assert torch.equal(second.seen[0], x[[1, 3]])             # still robust after "a" only
    assert stages["a"].tolist() == [False, True, False, True]
    assert stages["b"].tolist() == [False, True, False, True]
    assert torch.equal(x_adv[2], x[2])                        # misclassified: not attacked
    assert predict(model, x_adv[:1]).item() != 0              # broken: first breaking example


def test_members_skipped_when_nothing_is_robust():
    model, spy = identity_model(), Spy()
    x, y = torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([0])
    _, stages = sequential(model, x, y, [("spy", spy)], target=None, generator=None)
    assert spy.seen == [] and stages["spy"].tolist() == [False]


def test_never_broken_points_keep_the_highest_objective_output():
    model = identity_model()
    x, y = torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([0])
    weak, strong, weaker = (Spy(shift=torch.tensor([[-s, s, 0.0]])) for s in (0.2, 0.5, 0.1))
    x_adv, stages = sequential(model, x, y, [("w", weak), ("s", strong), ("ww", weaker)], target=None, generator=None)
    assert stages["ww"].tolist() == [True]
    assert torch.allclose(x_adv, torch.tensor([[2.5, 0.5, 0.0]]))


def test_targeted_semantics():
    model = identity_model()
    x = torch.tensor([[1.0, 0.5, 0.0],    # target 1, gap 0.5: reached by FGSM eps 0.6
                      [3.0, 0.0, 0.0],    # target 2, gap 3: stays robust
                      [0.0, 2.0, 0.0],    # already predicted as its target 1: non-robust
                      [0.0, 0.0, 3.0]])   # y=0 misclassified as 2, target 1: still attacked
    y, target = torch.tensor([0, 0, 0, 0]), torch.tensor([1, 2, 1, 1])
    spy = Spy(inner=FGSM(eps=0.6, bounds=(-10.0, 10.0)))
    x_adv, stages = sequential(model, x, y, [("fgsm", spy)], target=target, generator=None)
    assert torch.equal(spy.seen[0], x[[0, 1, 3]]) and torch.equal(spy.targets[0], target[[0, 1, 3]])
    assert stages["fgsm"].tolist() == [False, True, False, True]
    assert predict(model, x_adv[:1]).item() == 1


def test_ensemble_parameters_and_labels():
    ensemble = Ensemble(eps=0.2, bounds=(-1.0, 1.0), target_mode="random", members="fgsm,pgd,fgsm,fgsm")
    assert [label for label, _ in ensemble.members] == ["fgsm", "pgd", "fgsm#2", "fgsm#3"]
    assert all(a.eps == 0.2 and a.bounds == (-1.0, 1.0) and a.target_mode == "random" for _, a in ensemble.members)
    assert ensemble.black_box_stages() == set() and not ensemble.black_box
    assert Ensemble(eps=0.1, members="pgd,square").black_box_stages() == {"square"}
    assert Ensemble(eps=0.1, members="square").black_box
    for bad in ("", "fgsm,,pgd", "nope"):
        with pytest.raises(ValueError, match="members"):
            Ensemble(eps=0.1, members=bad)
    assert isinstance(build_attack("ensemble", bounds=(0.0, 1.0), eps=0.1), Ensemble)


def test_run_stages_restores_modes_and_eps_zero_gives_clean_flags(linear_setup):
    model, x, y = linear_setup
    model.train()
    x_adv, stages = Ensemble(eps=0.0, members="fgsm,pgd").run_stages(model, x, y)
    assert model.training and torch.equal(x_adv, x)
    assert torch.equal(stages["pgd"], predict(model, x) == y)


# ---------------------------------------------------------------- a small trained model
@pytest.fixture(scope="module")
def digits():
    """A 64-64-10 MLP trained for ~1 s on sklearn's 8×8 digits; 100 held-out points."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=gen())
    train, test = perm[:1500], perm[1500:1600]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(model(x[train]), y[train])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), x[test], y[test]


def test_autoattack_is_at_least_as_strong_as_pgd(digits):
    model, x, y = digits
    eps = 0.08
    x_pgd = PGD(eps=eps, steps=20)(model, x, y, generator=gen())
    x_adv, stages = AutoAttack(eps=eps, n_queries=500).run_stages(model, x, y, generator=gen())
    clean, pgd = (predict(model, x) == y).float().mean(), (predict(model, x_pgd) == y).float().mean()
    robust = stages["square"].float().mean()
    assert list(stages) == ["apgd_ce", "apgd_t", "square"]
    assert 0 < pgd < clean  # PGD leaves some robust accuracy: the comparison means something
    assert robust <= pgd and robust <= clean
    assert torch.equal(predict(model, x_adv) == y, stages["square"])
    assert (stages["apgd_t"] <= stages["apgd_ce"]).all() and (stages["square"] <= stages["apgd_t"]).all()
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_every_art_component_gets_our_eps(digits, monkeypatch):
    from art.attacks.evasion.auto_projected_gradient_descent import AutoProjectedGradientDescent
    from art.attacks.evasion.square_attack import SquareAttack

    built = []
    for cls in (AutoProjectedGradientDescent, SquareAttack):
        original = cls.__init__

        def spy(self, *args, _original=original, _cls=cls, **kwargs):
            built.append((_cls.__name__, kwargs))
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", spy)
    model, x, y = digits
    AutoAttack(eps=0.06, n_iter=5, n_target_classes=3, n_queries=20)(model, x, y, generator=gen())
    names = [name for name, _ in built]
    assert names == ["AutoProjectedGradientDescent"] * 4 + ["SquareAttack"]  # CE, 3 targets, Square
    assert all(kwargs["eps"] == 0.06 for _, kwargs in built)
    assert all(kwargs["eps_step"] == 0.12 and kwargs["verbose"] is False for name, kwargs in built[:4])
    assert inspect.signature(AutoAttack).parameters["eps"].default is inspect.Parameter.empty  # never ART's 0.3


class Noisy(nn.Module):
    """Dropout that stays active in eval mode: a randomised defense."""

    def __init__(self, randomized: bool | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
        if randomized is not None:
            self.randomized = randomized

    def forward(self, x):
        return self.net(F.dropout(x, 0.3, training=True))


def test_version_auto_picks_rand_for_models_that_declare_it():
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(36, 3), nn.Dropout(0.5))  # dropout off in eval
    flagged = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    flagged.randomized = True
    attack = AutoAttack(eps=0.1, n_iter=3, n_queries=10, eot_iter=2)
    assert attack.resolve_version(plain, x) == "standard" and not is_randomized(plain, x)
    assert attack.resolve_version(flagged, x) == "rand"
    assert attack.resolve_version(Noisy(True)) == "rand" and attack.resolve_version(Noisy(False)) == "standard"
    assert attack.resolve_version(nn.DataParallel(flagged)) == "rand"      # seen through a wrapper
    assert attack.resolve_version(Noisy()) == "standard"       # undeclared: the default, whatever a pass gives
    _, stages = attack.run_stages(Noisy(True), x, y, generator=gen())
    assert list(stages) == ["apgd_ce", "apgd_dlr"]
    assert attack.black_box_stages() == {"square"}
    noisy, runs = Noisy(), []
    for _ in range(2):  # ART's draws follow the generator; the model's own ones torch's global seed
        torch.manual_seed(1)
        runs.append(attack(noisy, x, y, generator=gen(5)))
    assert torch.equal(*runs)


class Jittery(nn.Module):
    """A deterministic model as a nondeterministic GPU kernel serves it: two eval-mode passes
    differ in the last bits (1e-6 relative), the decisions never."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))

    def forward(self, x):
        logits = self.net(x)
        return logits * (1 + 1e-6 * torch.rand(()))


def test_version_is_the_same_on_every_batch_whatever_two_passes_give():
    """Issue 9 point 4: "auto" used to compare two passes bitwise per batch, so jitter turned a
    deterministic model into "rand" on some batches (other stage labels, half-empty flags)."""
    torch.manual_seed(0)
    model = Jittery().eval()
    x, y = torch.rand(6, 1, 6, 6), torch.randint(0, 3, (6,))
    attack = AutoAttack(eps=0.05, n_iter=2, n_target_classes=2, n_queries=5)
    for batch in range(3):
        _, stages = attack.run_stages(model, x[2 * batch:2 * batch + 2], y[2 * batch:2 * batch + 2],
                                      generator=gen(batch))
        assert list(stages) == ["apgd_ce", "apgd_t", "square"]


def test_pin_versions_fixes_and_reports_every_autoattack():
    from distfair.attacks.autoattack import pin_versions

    plain = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    flagged = Noisy(True)
    attack = AutoAttack(eps=0.1)
    assert pin_versions(attack, flagged) == {"": "rand"} and attack.version == "rand"
    assert pin_versions(AutoAttack(eps=0.1), plain) == {"": "standard"}
    assert pin_versions(AutoAttack(eps=0.1, version="rand"), plain) == {"": "rand"}   # explicit wins
    ensemble = Ensemble(eps=0.1, members="pgd,autoattack")
    assert pin_versions(ensemble, flagged) == {"autoattack": "rand"}
    assert dict(ensemble.members)["autoattack"].version == "rand"
    assert pin_versions(PGD(eps=0.1), plain) == {}


class Crossing(nn.Module):
    """1-D input s, logits [0, a(s), b(s), b(s), b(s)], true class 0, ball [0, 0.6] around 0.3.

    Misclassified (a > 0) only for s < 0.03; the cross-entropy falls on [0.01, 0.25] and rises
    on [0.25, 0.6] to its maximum at 0.6 (three wrong logits close to the true one), where the
    prediction is correct again. APGD started in [0.03, 0.25] steps to s = 0 (adversarial) and
    then climbs to 0.6: only an intermediate iterate is adversarial."""

    def forward(self, x):
        s = x[:, 0]
        a = (0.1 - 5 * (s - 0.01).abs()).clamp(min=-1.15)
        b = -3 + 8.43 * (s - 0.25).clamp(min=0)
        return torch.stack([torch.zeros_like(s), a, b, b, b], dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_keeps_an_adversarial_iterate_the_last_one_lost(norm):
    """Issue 9 point 4: ART's APGD keeps a sample's perturbation only if its last iterate is
    adversarial; the reference (Croce & Hein 2020) keeps any adversarial iterate."""
    from art.attacks.evasion.auto_projected_gradient_descent import AutoProjectedGradientDescent

    from distfair.attacks._art import ART_NORMS, run_art
    from distfair.attacks.autoattack import CE, _APGD

    model = Crossing()
    x, y = torch.full((200, 1), 0.3), torch.zeros(200, dtype=torch.long)
    assert (predict(model, x) == 0).all() and (predict(model, torch.full((1, 1), 0.6)) == 0).all()
    ours = _APGD(eps=0.3, bounds=(0.0, 1.0), norm=norm, loss=CE, n_iter=10)(model, x, y, generator=gen())
    art = run_art(model, x, y, lambda c: AutoProjectedGradientDescent(
        c, norm=ART_NORMS[norm], eps=0.3, eps_step=0.6, max_iter=10, targeted=False, nb_random_init=1,
        batch_size=200, loss_type=CE, verbose=False), generator=gen(), eps=0.3, norm=norm, bounds=(0.0, 1.0))
    broken_ours, broken_art = predict(model, ours) != y, predict(model, art) != y
    assert (broken_ours >= broken_art).all()                 # same random starts: never weaker
    assert broken_ours.sum() >= broken_art.sum() + 30        # ART kept ~1/8 (lucky random starts), we ~1/2
    assert (ours - x).abs().max() <= 0.3 + 1e-6 and ours.min() >= 0


def test_eot_averages_logits():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return torch.full((len(x), 2), float(self.calls))

    counter = Counter()
    assert torch.equal(EOT(counter, 4)(torch.zeros(3, 1)), torch.full((3, 2), 2.5))  # mean(1, 2, 3, 4)
    assert counter.calls == 4


@pytest.mark.parametrize("name", ["square", "autoattack"])
def test_art_call_leaves_grads_and_global_rngs_untouched(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
    preset = [torch.randn_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), preset):
        p.grad = g
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    attack = build_attack(name, bounds=(0.0, 1.0), eps=0.1, n_queries=50)
    out = attack(model, x, y, generator=gen(3))
    assert all(p.grad is g for p, g in zip(model.parameters(), preset))
    assert all(torch.equal(p.grad, g) and p.requires_grad for p, g in zip(model.parameters(), preset))
    after = np.random.get_state()
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1]) and np_state[2:] == after[2:]
    assert random.getstate() == py_state and torch.equal(torch.get_rng_state(), torch_state)
    np.random.seed(123)  # a different global numpy state must not change the result
    assert torch.equal(attack(model, x, y, generator=gen(3)), out)


def test_binary_falls_back_to_ce_with_one_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 2, (8,))
    attack = AutoAttack(eps=0.1, n_iter=3, n_queries=10)
    with pytest.warns(UserWarning, match="DLR loss needs >= 3 classes"):
        attack(model, x, y, generator=gen())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attack(model, x, y, generator=gen())  # once per instance


def test_square_black_box_increases_loss_and_targets(digits):
    model, x, y = digits
    square = Square(eps=0.08, n_queries=300)
    assert Square.black_box and square.black_box
    x_adv = square(model, x, y, generator=gen())
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    assert (predict(model, x_adv) == y).sum() < (predict(model, x) == y).sum()
    target = (y + 1) % 10
    x_t = square(model, x, y, target=target, generator=gen())
    with torch.no_grad():
        assert F.cross_entropy(model(x_t), target) < F.cross_entropy(model(x), target)
    assert (predict(model, x_t) == target).sum() > 0


@pytest.mark.parametrize("shape", [(6, 20), (6, 2, 15), (6, 1, 3, 3)])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_any_input_shape_and_norm(shape, norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape[1:])), 3))
    x, y = torch.rand(shape), torch.randint(0, 3, (shape[0],))
    x_adv = Square(eps=0.3, norm=norm, n_queries=30)(model, x, y, generator=gen())
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= 0.3 + 1e-6).all()


def test_autoattack_l2_stays_in_the_ball(digits):
    model, x, y = digits
    x_adv, stages = AutoAttack(eps=0.5, norm="l2", n_iter=10, n_queries=50).run_stages(model, x, y, generator=gen())
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert torch.equal(predict(model, x_adv) == y, stages["square"])


def test_square_query_cache_keeps_the_search(monkeypatch):
    import distfair.attacks.square as square_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).eval()
    x = torch.rand(16, 1, 6, 6)
    y = predict(model, x)
    attack = Square(eps=0.05, n_queries=300)
    cached = attack(model, x, y, generator=gen())
    monkeypatch.setattr(square_module, "is_randomized", lambda *_: True)  # turns the cache off
    torch.testing.assert_close(attack(model, x, y, generator=gen()), cached, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cls, bad, message", [
    (AutoAttack, {"version": "fast"}, "version"), (AutoAttack, {"norm": "l1"}, "norm"),
    (AutoAttack, {"n_iter": 0}, "n_iter"), (AutoAttack, {"n_target_classes": 0}, "n_target_classes"),
    (AutoAttack, {"n_queries": 0}, "n_queries"), (AutoAttack, {"eot_iter": 0}, "eot_iter"),
    (Square, {"norm": "l1"}, "norm"), (Square, {"n_queries": 0}, "n_queries"),
    (Square, {"p_init": 1.0}, "p_init"), (Square, {"restarts": 0}, "restarts"),
])
def test_invalid_params(cls, bad, message):
    with pytest.raises(ValueError, match=message):
        cls(eps=0.1, **bad)
