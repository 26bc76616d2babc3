"""Physical face attacks (eyeglass, face mask, ROA) and their masks: property tests."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from distfair.attacks import ATTACKS, ROA, EyeglassAttack, FaceMaskAttack
from distfair.attacks._masks import (BestIterate, eyeglass_mask, goal_margin, goal_reached, load_mask, lower_face_mask,
                                     resolve_mask)
from distfair.attacks.eyeglass import palette
from distfair.attacks.roa import positions, scaled_geometry
from distfair.defenses import build_defense

SHAPE = (3, 16, 16)
FAST = {  # few steps: the defaults (300 / 100 / 100) stay as specified
    "eyeglass": lambda **kw: EyeglassAttack(steps=5, **kw),
    "face_mask": lambda **kw: FaceMaskAttack(steps=5, **kw),
    "roa": lambda **kw: ROA(steps=5, size=5, stride=2, **kw),
}
MASKED = {"eyeglass": eyeglass_mask, "face_mask": lower_face_mask}


def tiny_cnn(classes: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 16 * 16, classes))


def data(bounds=(0.0, 1.0), n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    low, high = bounds
    return low + (high - low) * torch.rand(n, *SHAPE, generator=g), torch.randint(0, 4, (n,), generator=g)


def margin_of(model, x, y, target=None):
    """Per-sample distance to the attack's goal (< 0: reached), the model in eval mode."""
    with torch.no_grad():
        return goal_margin(model.eval()(x), y, target)


def reached(model, x, y, target=None):
    with torch.no_grad():
        return goal_reached(model.eval()(x), y, target)


def changed(x_adv, x):
    """(B, H, W) pixels where any channel differs."""
    return (x_adv != x).any(dim=1)


@pytest.mark.parametrize("eps", [None, 0.05])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 1.0)])
@pytest.mark.parametrize("name", sorted(FAST))
def test_region_range_budget_and_monotone_margin(name, bounds, eps):
    torch.manual_seed(0)
    model = tiny_cnn()
    x, y = data(bounds)
    x_copy = x.clone()
    attack = FAST[name](eps=eps, bounds=bounds)
    x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x_copy)  # input untouched
    assert x_adv.min() >= bounds[0] and x_adv.max() <= bounds[1]
    if eps is not None:
        assert (x_adv - x).abs().max() <= eps + 1e-6
    diff = changed(x_adv, x)
    if name in MASKED:
        outside = MASKED[name](16, 16) == 0
        assert torch.equal(x_adv[:, :, outside], x[:, :, outside])  # exactly x outside the mask
    else:
        for d in diff:  # within one size × size rectangle
            rows, cols = d.any(1).nonzero(), d.any(0).nonzero()
            if len(rows):
                assert rows.max() - rows.min() < 5 and cols.max() - cols.min() < 5
    assert diff.any()
    # never further from the goal than x, per sample (the returned iterate is the first success
    # or the lowest margin, and x itself is a candidate)
    assert (margin_of(model, x_adv, y) <= margin_of(model, x, y)).all()
    assert (reached(model, x_adv, y) >= reached(model, x, y)).all()


@pytest.mark.parametrize("name", sorted(FAST))
def test_targeted_approaches_target_and_restores_mode(name):
    torch.manual_seed(0)
    model = tiny_cnn().train()
    x, y = data()
    target = (y + 1) % 4
    x_adv = FAST[name]()(model, x, y, target=target)
    assert all(m.training for m in model.modules())
    assert (margin_of(model, x_adv, y, target) <= margin_of(model, x, y, target)).all()
    assert margin_of(model, x_adv, y, target).sum() < margin_of(model, x, y, target).sum()


def near_tied_linear(x: torch.Tensor, y: int, classes: int = 5, seed: int = 0) -> nn.Module:
    """A linear model over 3 × 16 × 16 images whose logits at x have y ahead by 0.5."""
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(x[0].numel(), classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(classes, x[0].numel(), generator=g) * 0.05)
        linear.bias.copy_(-(linear.weight @ x[0].flatten()) + 0.5 * F.one_hot(torch.tensor(y), classes))
    return nn.Sequential(nn.Flatten(), linear)


@pytest.mark.parametrize("name", sorted(FAST))
def test_targeted_reaches_target_on_linear_model(name):
    x = data(n=1)[0]
    model = near_tied_linear(x, y=2)
    assert model(x).argmax(1).item() == 2
    attack = {"eyeglass": EyeglassAttack(steps=20), "face_mask": FaceMaskAttack(steps=20),
              "roa": ROA(steps=20, size=5, stride=2)}[name]
    for t in [0, 1, 3, 4]:
        x_adv = attack(model, x, torch.tensor([2]), target=torch.tensor([t]))
        assert model(x_adv).argmax(1).item() == t


@pytest.mark.parametrize("name", sorted(FAST))
def test_nothing_to_gain_returns_x(name):
    """A model blind to the image: no iterate is strictly better, so x comes back unchanged."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16 * 3, 4))
    with torch.no_grad():
        model[1].weight.zero_()
    x, y = data()
    assert torch.equal(FAST[name]()(model, x, y), x)


@pytest.mark.parametrize("size", [(6, 6), (16, 16), (32, 32), (224, 224), (12, 20), (40, 24), (1, 4)])
@pytest.mark.parametrize("make", [eyeglass_mask, lower_face_mask])
def test_generated_masks_any_size(make, size):
    h, w = size
    mask = make(h, w)
    assert mask.shape == (h, w) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum() >= 1
    if h >= 6:
        assert mask.sum() < h * w  # a region of the face, not the whole image
        rows = mask.any(1).nonzero().squeeze(1).float() / h
        if make is eyeglass_mask:
            assert rows.max() < 0.6  # around the eye line
        else:
            assert rows.min() >= 0.45  # lower face


def test_eyeglass_mask_proportional():
    small, big = eyeglass_mask(56, 56), eyeglass_mask(224, 224)
    assert abs(small.mean() - big.mean()) < 0.02


def write_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


def test_load_mask_resize_threshold_and_errors(tmp_path):
    img = np.zeros((8, 8), dtype=np.uint8)
    img[:4, :4] = 255
    img[4:, 4:] = 128  # 128/255 > 0.5: in the mask
    img[:4, 4:] = 127  # 127/255 < 0.5: out
    path = write_png(tmp_path / "m.png", img)
    mask = load_mask(path, 4, 4)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float32)
    assert torch.equal(mask, expected)
    assert load_mask(path, 16, 8).shape == (16, 8)
    assert torch.equal(load_mask(path, 16, 8)[:8, :4], torch.ones(8, 4))
    rgb = write_png(tmp_path / "rgb.png", np.stack([img] * 3, axis=-1))
    assert torch.equal(load_mask(rgb, 4, 4), expected)
    zero = write_png(tmp_path / "zero.png", np.full((8, 8), 100))
    with pytest.raises(ValueError, match="zero.png.*all zero"):
        load_mask(zero, 4, 4)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_mask(str(tmp_path / "missing.png"), 4, 4)
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(ValueError, match="junk.png"):
        load_mask(str(tmp_path / "junk.png"), 4, 4)


def test_resolve_mask_default_and_file(tmp_path):
    assert torch.equal(resolve_mask(None, "eyeglass", 16, 16), eyeglass_mask(16, 16))
    assert torch.equal(resolve_mask(None, "lower_face", 16, 16, dtype=torch.float64),
                       lower_face_mask(16, 16).double())
    img = np.zeros((16, 16), dtype=np.uint8)
    img[2:5, 3:9] = 255
    path = write_png(tmp_path / "m.png", img)
    mask = resolve_mask(path, "eyeglass", 16, 16)
    mask[:] = 0  # a fresh tensor: the cache is not mutated
    assert resolve_mask(path, "eyeglass", 16, 16).sum() == 18


@pytest.mark.parametrize("cls", [EyeglassAttack, FaceMaskAttack])
def test_attack_with_mask_file(tmp_path, cls):
    img = np.zeros((32, 32), dtype=np.uint8)
    img[4:12, 20:30] = 255  # at 16 × 16: rows 2-5, cols 10-14
    path = write_png(tmp_path / "m.png", img)
    torch.manual_seed(0)
    model, (x, y) = tiny_cnn(), data()
    x_adv = cls(mask=path, steps=3)(model, x, y)
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[2:6, 10:15] = True
    assert torch.equal(x_adv[:, :, ~region], x[:, :, ~region]) and changed(x_adv, x).any()
    with pytest.raises(FileNotFoundError, match="mask"):
        cls(mask=str(tmp_path / "nope.png"))


def test_face_mask_grid_one_is_a_solid_colour():
    torch.manual_seed(0)
    model, (x, y) = tiny_cnn(), data()
    x_adv = FaceMaskAttack(grid=1, steps=3)(model, x, y)
    inside = lower_face_mask(16, 16).bool()
    for xa, xc in zip(x_adv, x):
        values = xa[:, inside]
        if not torch.equal(values, xc[:, inside]):  # attacked sample: one colour per channel
            assert torch.allclose(values, values[:, :1].expand_as(values))


def test_palette():
    colours = palette(3, -1.0, 1.0)
    assert len(colours) == 9 and (0.0, 0.0, 0.0) in colours and (1.0, -1.0, 1.0) in colours
    assert palette(1, 0.0, 1.0) == [(0.0,), (0.25,), (0.5,), (0.75,), (1.0,)]


def sensitive_linear(region: tuple[slice, slice]) -> nn.Module:
    """Class 0's logit sums the pixels of ``region`` (all channels); zero weights elsewhere."""
    weight = torch.zeros(2, *SHAPE)
    weight[0, :, region[0], region[1]] = 1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight[0].numel(), 2))
    with torch.no_grad():
        model[1].weight.copy_(weight.flatten(1))
        model[1].bias.zero_()
    return model


@pytest.mark.parametrize("stride, steps, search_batch", [(1, 0, 256), (4, 0, 256), (3, 2, 1)])
def test_roa_search_finds_the_sensitive_region(stride, steps, search_batch):
    region = (slice(10, 13), slice(2, 5))
    model = sensitive_linear(region)
    x, y = torch.ones(2, *SHAPE), torch.zeros(2, dtype=torch.long)  # grey lowers class 0's logit
    x_adv = ROA(size=5, stride=stride, steps=steps, search_batch=search_batch)(model, x, y)
    for d in changed(x_adv, x):
        rows, cols = d.any(1).nonzero().squeeze(1), d.any(0).nonzero().squeeze(1)
        assert rows.max() - rows.min() == cols.max() - cols.min() == 4  # one 5 × 5 rectangle
        assert rows.min() <= 10 and rows.max() >= 12 and cols.min() <= 2 and cols.max() >= 4  # covers it


def test_roa_scaled_defaults_and_positions():
    assert scaled_geometry(224, 224) == (70, 10)
    assert scaled_geometry(112, 112) == (35, 5)
    assert scaled_geometry(32, 32) == (10, 1)
    assert scaled_geometry(6, 6) == (2, 1)
    assert scaled_geometry(224, 112) == (35, 5)  # the smaller side
    assert ROA().geometry(224, 224) == (70, 10) and ROA(size=7, stride=3).geometry(32, 32) == (7, 3)
    corners = positions(16, 16, 5, 4)
    assert sorted(set(corners[:, 0].tolist())) == [0, 4, 8, 11]  # the far edge is searched too
    assert len(positions(224, 224, 70, 10)) == 17 * 17  # 0, 10, ..., 150 and 154 per axis
    with pytest.raises(ValueError, match="size must be <="):
        ROA(size=17)(tiny_cnn(), *data())


def test_roa_random_start_is_seeded():
    torch.manual_seed(0)
    model, (x, y) = tiny_cnn(), data()
    attack = ROA(size=5, stride=4, steps=1, random_start=True)
    a = attack(model, x, y, generator=torch.Generator().manual_seed(1))
    b = attack(model, x, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_pgd_at_with_roa_trains():
    torch.manual_seed(0)
    model = tiny_cnn().train()
    defense = build_defense("pgd_at", attack=ROA(size=5, stride=4, steps=2), num_classes=4)
    x, y = data()
    loss, parts = defense.loss(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.ndim == 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.training


def test_eps_none_means_the_range():
    for name in ("eyeglass", "face_mask", "roa"):
        attack = ATTACKS[name](bounds=(-1.0, 1.0))
        assert attack.budget is None and attack.eps == 2.0
        assert ATTACKS[name](eps=0.1).eps == 0.1


@pytest.mark.parametrize("cls, bad, message", [
    (EyeglassAttack, {"steps": 0}, "steps must be >= 1, got 0"),
    (EyeglassAttack, {"alpha": 0.0}, "alpha must be > 0"),
    (EyeglassAttack, {"momentum": -1.0}, "momentum must be >= 0"),
    (EyeglassAttack, {"mask": ""}, "mask"),
    (FaceMaskAttack, {"grid": 0}, "grid must be >= 1, got 0"),
    (FaceMaskAttack, {"mask": 3}, "mask"),
    (ROA, {"size": 0}, "size must be >= 1"),
    (ROA, {"stride": 0}, "stride must be >= 1"),
    (ROA, {"steps": -1}, "steps must be >= 0"),
    (ROA, {"alpha": -0.1}, "alpha must be > 0"),
    (ROA, {"random_start": "yes"}, "random_start"),
    (ROA, {"search_batch": 0}, "search_batch"),
])
def test_invalid_params(cls, bad, message):
    with pytest.raises(ValueError, match=message):
        cls(**bad)


@pytest.mark.parametrize("name", sorted(FAST))
def test_non_image_input_raises(name):
    with pytest.raises(ValueError, match="x must be images"):
        FAST[name]()(nn.Flatten(), torch.rand(2, 1, 1, 4, 4), torch.tensor([0, 1]))


# ------------------------------------------------------------- which iterate comes back
def test_best_iterate_keeps_the_first_success_not_the_highest_ce():
    """Iterates along which CE(y) rises while the prediction goes y → 1 → y: the highest-CE
    iterate (a flat softmax, still y) is not an adversarial example; the first success is."""
    y = torch.tensor([0])
    steps = [torch.tensor([[0.0, -3.0, -3.0]]),   # correct, CE 0.10
             torch.tensor([[0.0, 0.2, -3.0]]),    # misclassified as 1, CE 0.82
             torch.tensor([[0.0, 0.4, -3.0]]),    # misclassified as 1, CE 0.93 (further, not first)
             torch.tensor([[0.0, -0.05, -0.05]])]  # correct again, CE 1.07: the highest
    ce = [F.cross_entropy(z, y).item() for z in steps]
    assert ce == sorted(ce) and steps[-1].argmax().item() == 0
    best = BestIterate(torch.full((1, 1, 1, 1), 0.0), steps[0], y, None)
    for i, z in enumerate(steps[1:], start=1):
        best.update(torch.full((1, 1, 1, 1), float(i)), z)
    assert best.x.item() == 1.0 and best.done.item()


def test_best_iterate_targeted_and_lowest_margin_without_success():
    target = torch.tensor([1, 1])
    y = torch.tensor([0, 0])
    # sample 0 reaches the target at iterate 1, then p(target) keeps rising while y retakes
    # the lead; sample 1 never reaches it: the iterate closest to it (lowest margin) is kept
    steps = [torch.tensor([[2.0, 0.0, -1.0], [3.0, 0.0, 0.0]]),
             torch.tensor([[-0.1, 0.0, -0.1], [1.0, 0.0, 0.0]]),    # 0: predicted 1 (p_t 0.36)
             torch.tensor([[0.2, 0.0, -9.0], [2.0, 0.0, 0.0]]),     # 0: p_t 0.45 but predicted 0
             torch.tensor([[0.2, 0.0, -9.0], [1.5, 0.0, 0.0]])]
    p_t = [F.softmax(z, dim=1)[0, 1].item() for z in steps]
    assert p_t[2] > p_t[1] and steps[2][0].argmax().item() == 0
    best = BestIterate(torch.zeros(2, 1), steps[0], y, target)
    for i, z in enumerate(steps[1:], start=1):
        best.update(torch.full((2, 1), float(i)), z)
    assert best.x.squeeze(1).tolist() == [1.0, 1.0] and best.done.tolist() == [True, False]
    torch.testing.assert_close(best.margin, torch.tensor([-0.1, 1.0]))


def ramp(s: torch.Tensor, knots: list[tuple[float, float]]) -> torch.Tensor:
    """Piecewise-linear interpolation through ``knots`` (x increasing), autograd-friendly."""
    (x0, y0), (x1, y1) = knots[0], knots[1]
    out, slope = y0 + (y1 - y0) / (x1 - x0) * (s - x0), (y1 - y0) / (x1 - x0)
    for (xa, ya), (xb, yb) in zip(knots[1:], knots[2:]):
        new = (yb - ya) / (xb - xa)
        out, slope = out + (new - slope) * F.relu(s - xa), new
    return out


#: exp-logits (u, v) of two classes against a reference class at logit 0, along s ∈ [0, 1].
#: Untargeted (y = 0, the reference): u + v rises all the way, so CE(y) rises, but u > 1
#: (misclassified as 1) only for s in about (0.21, 0.94); at s = 1, y leads again with the
#: highest CE. Targeted (target = 1, the reference; u is y's): u + v falls all the way, so
#: CE(target) falls, but both stay below 1 (the target predicted) only for s in about
#: (0.24, 0.85); at s = 1, y leads again with the target's highest probability.
PATHS = {
    "untargeted": ([(0, 0.05), (0.25, 1.2), (0.75, 1.3), (1, 0.9)],
                   [(0, 0.05), (0.25, 0.1), (0.75, 0.2), (1, 0.9)]),
    "targeted": ([(0, 3.0), (0.25, 0.95), (0.75, 0.85), (1, 1.222)],
                 [(0, 0.3), (0.25, 0.95), (0.75, 0.85), (1, 0.001)]),
}


class PathModel(nn.Module):
    """Logits that depend on one feature s = Σ W·x / norm only, following ``PATHS[mode]``."""

    def __init__(self, weight: torch.Tensor, norm: float, mode: str):
        super().__init__()
        self.register_buffer("weight", weight)
        self.norm, self.mode = norm, mode

    def feature(self, x):
        return (x * self.weight).sum(dim=(1, 2, 3)) / self.norm

    def head(self, s):
        u, v = (torch.log(ramp(s, k)) for k in PATHS[self.mode])
        ref = torch.zeros_like(s)
        return torch.stack([ref, u, v] if self.mode == "untargeted" else [u, ref, v], dim=1)

    def forward(self, x):
        return self.head(self.feature(x))


def path_case(name: str, mode: str):
    """(attack, model, expected s of the first successful iterate) on a black 16 × 16 image.

    ROA and face mask start at s = 0.5 (a mid-grey fill: already a success) and the ascent
    then saturates the region at s = 1. The eyeglass weights form a balanced ± checkerboard
    over the frame, so every solid palette colour gives s = 0 (a tie: black, the clean x,
    starts) and each step adds α = 20/255 to s: 3α is the first untargeted success, 4α the
    first targeted one, and s = 1 after 13 steps.
    """
    c, h, w = SHAPE
    if name == "eyeglass":
        inside = eyeglass_mask(h, w).flatten().bool()
        sign = torch.zeros(h * w)
        idx = inside.nonzero().squeeze(1)
        idx = idx[: len(idx) // 2 * 2]
        sign[idx[0::2]], sign[idx[1::2]] = 1.0, -1.0
        weight, norm = sign.view(1, h, w).expand(c, h, w).clone(), c * len(idx) / 2
        first = {"untargeted": 3 * 20 / 255, "targeted": 4 * 20 / 255}[mode]
        attack = EyeglassAttack(steps=20)
    elif name == "face_mask":
        inside = lower_face_mask(h, w)
        weight, norm, first = inside.expand(c, h, w).clone(), c * inside.sum().item(), 0.5
        attack = FaceMaskAttack(grid=1, steps=20)
    else:
        weight, norm, first = torch.ones(c, h, w), c * 4 * 4, 0.5
        attack = ROA(size=4, stride=4, steps=20)
    return attack, PathModel(weight, norm, mode), first


@pytest.mark.parametrize("mode", sorted(PATHS))
@pytest.mark.parametrize("name", sorted(FAST))
def test_returns_the_first_success_not_the_highest_ce_iterate(name, mode):
    attack, model, first = path_case(name, mode)
    x, y = torch.zeros(1, *SHAPE), torch.tensor([0])
    target = None if mode == "untargeted" else torch.tensor([1])
    goal = y if target is None else target
    # the construction: x fails, the saturated end of the path fails too, with the highest CE of
    # y (untargeted) / the lowest CE of the target (targeted) of the whole path
    logits = model.head(torch.linspace(0, 1, 201))
    ok = goal_reached(logits, y.expand(201), None if target is None else target.expand(201))
    ce = F.cross_entropy(logits, goal.expand(201), reduction="none")
    assert not ok[0] and not ok[-1] and ok.any()
    assert (ce.diff() > 0).all() if target is None else (ce.diff() < 0).all()

    x_adv = attack(model, x, y, target=target)
    assert reached(model, x_adv, y, target).item()                      # an adversarial example
    torch.testing.assert_close(model.feature(x_adv).item(), first, atol=1e-5, rtol=0)  # the first one
