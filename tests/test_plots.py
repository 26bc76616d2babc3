"""Tests of the evaluation plots: hand-computed asymmetry and target shares, tick-label logic,
and that every figure is a readable PNG with its title, labels and colour bar."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.figure  # noqa: E402
import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from distfair import plotting as plots  # noqa: E402
from distfair.metrics import fairness_metrics  # noqa: E402

# row sums 10, 10, 4 -> R = [[.6, .3, .1], [.1, .8, .1], [0, .5, .5]]
# asymmetry: (0,1) |.3 - .1| = .2, (0,2) |.1 - 0| = .1, (1,2) |.1 - .5| = .4
# off-diagonal column sums: col0 .1 + 0 = .1, col1 .3 + .5 = .8, col2 .1 + .1 = .2; total 1.1
# -> T = [1/11, 8/11, 2/11]
THREE = [[6, 3, 1], [1, 8, 1], [0, 2, 2]]
# class 1 absent: R = [[.6, .3, .1], [0, 0, 0], [0, .5, .5]]
# asymmetry: only (0,2) is defined, |.1 - 0| = .1; pairs with class 1 are NaN
# column sums: col0 0, col1 .3 + .5 = .8, col2 .1; total .9 -> T = [0, 8/9, 1/9]
# (class 1 has no samples, yet it is the target of most misclassifications)
THREE_ABSENT = [[6, 3, 1], [0, 0, 0], [0, 2, 2]]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def random_counts(k, seed=0, absent=()):
    counts = np.random.default_rng(seed).integers(0, 20, size=(k, k)).astype(float)
    counts[list(absent)] = 0
    return counts


@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure passed to ``savefig``, still inspectable after ``plt.close``."""
    figures = []
    original = matplotlib.figure.Figure.savefig

    def recording(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording)
    return figures


def assert_png(path, min_px=200, max_px=2400):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min_px <= image.shape[0] <= max_px and min_px <= image.shape[1] <= max_px, image.shape


def texts(ax):
    return [t.get_text() for t in ax.texts]


# ---- numbers ---------------------------------------------------------------------------

def test_asymmetry_matrix_hand_values():
    nan = np.nan
    expected = [[nan, 0.2, 0.1], [nan, nan, 0.4], [nan, nan, nan]]
    np.testing.assert_allclose(plots.asymmetry_matrix(THREE), expected)
    np.testing.assert_allclose(plots.asymmetry_matrix(torch.tensor(THREE)), expected)


def test_asymmetry_matrix_absent_class_is_nan_without_warning():
    nan = np.nan
    # the filterwarnings=error setting turns a distfair UserWarning into a failure here
    np.testing.assert_allclose(plots.asymmetry_matrix(THREE_ABSENT),
                               [[nan, nan, 0.1], [nan, nan, nan], [nan, nan, nan]])


@pytest.mark.parametrize("k,absent", [(4, ()), (7, (2,)), (12, (0, 5))])
def test_asymmetry_max_is_max_asym_gap(k, absent):
    counts = random_counts(k, seed=k, absent=absent)
    with pytest.warns(UserWarning) if absent else _no_op():
        expected = fairness_metrics(counts)["max_asym_gap"]
    assert np.nanmax(plots.asymmetry_matrix(counts)) == pytest.approx(expected)


def test_target_shares_hand_values():
    np.testing.assert_allclose(plots.target_shares(THREE), [1 / 11, 8 / 11, 2 / 11])
    np.testing.assert_allclose(plots.target_shares(THREE_ABSENT), [0, 8 / 9, 1 / 9])


@pytest.mark.parametrize("counts", [THREE, THREE_ABSENT, random_counts(10, 3, absent=(4,))])
def test_target_shares_match_fairness_metrics(counts):
    shares = plots.target_shares(counts)
    with pytest.warns(UserWarning) if np.any(np.sum(counts, axis=1) == 0) else _no_op():
        metrics = fairness_metrics(counts)
    assert shares.sum() == pytest.approx(1.0)
    assert (shares.max(), shares.min(), shares.std()) == pytest.approx(
        (metrics["tgt_max"], metrics["tgt_min"], metrics["tgt_std"]))


@pytest.mark.parametrize("counts", [[[5, 0], [0, 3]], [[5, 0, 0], [0, 0, 0], [0, 0, 2]]])
def test_target_shares_none_without_misclassifications(counts):
    assert plots.target_shares(counts) is None


@pytest.mark.parametrize("bad", [[[1, 2, 3]], [[0, 0], [0, 0]], [[1, -1], [0, 1]], [[1]]])
def test_bad_counts_raise(bad):
    with pytest.raises(ValueError, match="counts"):
        plots.asymmetry_matrix(bad)
    with pytest.raises(ValueError, match="counts"):
        plots.target_shares(bad)


class _no_op:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---- tick labels -----------------------------------------------------------------------

def test_tick_labels_hand_values():
    # 3 short names: 3 * 3 = 9 characters side by side fit, no rotation
    assert plots.common._tick_labels(["cat", "dog", "car"], 3) == ([0, 1, 2], ["cat", "dog", "car"], 0)
    # names of the wrong length fall back to indices
    assert plots.common._tick_labels(["a", "b"], 3) == ([0, 1, 2], ["0", "1", "2"], 0)
    assert plots.common._tick_labels(None, 2) == ([0, 1], ["0", "1"], 0)
    # CIFAR-10: 10 labels x "automobile" (10 chars) = 100 > 40 -> 45 degrees
    assert plots.common._tick_labels(CIFAR10, 10) == (list(range(10)), CIFAR10, 45)
    # 10 digits: 10 x 1 = 10 characters -> flat
    assert plots.common._tick_labels(None, 10)[2] == 0
    # 40 classes: every one labelled, 40 x 2 = 80 > 40 and more than 20 labels -> 90 degrees
    positions, labels, rotation = plots.common._tick_labels(None, 40)
    assert positions == list(range(40)) and rotation == 90
    # 41 classes: step ceil(41 / 40) = 2 -> 0, 2, ..., 40 (21 labels)
    assert plots.common._tick_labels(None, 41)[0] == list(range(0, 41, 2))
    # 100 classes: step ceil(100 / 40) = 3 -> 0, 3, ..., 99 (34 labels)
    names = [f"c{i}" for i in range(100)]
    positions, labels, rotation = plots.common._tick_labels(names, 100)
    assert positions == list(range(0, 100, 3)) and len(positions) == 34
    assert labels[:3] == ["c0", "c3", "c6"] and labels[-1] == "c99" and rotation == 90


# ---- figures ---------------------------------------------------------------------------

HEATMAPS = {
    "confusion": (plots.confusion_heatmap, lambda c: c, "fraction of true class"),
    "asymmetry": (plots.asymmetry_heatmap, lambda c: c, "|C_ij − C_ji|"),
    "target_success": (plots.target_success_heatmap,
                       lambda c: np.asarray(c) / np.asarray(c).sum(axis=1, keepdims=True).clip(1),
                       "targeted success rate"),
}


@pytest.mark.parametrize("kind", sorted(HEATMAPS))
@pytest.mark.parametrize("k,named", [(2, True), (10, True), (100, False)])
def test_heatmaps_write_png_with_labels(kind, k, named, tmp_path, saved_figures):
    function, prepare, cbar_label = HEATMAPS[kind]
    names = CIFAR10[:k] if named else []
    out = function(prepare(random_counts(k, seed=k)), names, f"{kind} K={k}", tmp_path / "h.png")
    assert out == tmp_path / "h.png"
    assert_png(out)
    (fig,) = saved_figures
    ax, cbar = fig.axes  # the heatmap and its colour bar
    assert ax.get_title() == f"{kind} K={k}"
    assert cbar.get_ylabel() == cbar_label
    expected_ticks = plots.common._tick_labels(names, k)[1]
    assert [t.get_text() for t in ax.get_xticklabels()] == expected_ticks
    assert [t.get_text() for t in ax.get_yticklabels()] == expected_ticks
    if k > 20:
        assert texts(ax) == []
    else:
        n_cells = {"confusion": k * k, "asymmetry": k * (k - 1) // 2, "target_success": k * k - k}
        assert len(texts(ax)) == n_cells[kind]
    assert fig.get_size_inches().max() <= 16


def test_asymmetry_heatmap_blank_and_annotated_cells(tmp_path, saved_figures):
    plots.asymmetry_heatmap(THREE_ABSENT, ["a", "b", "c"], "absent b", tmp_path / "a.png")
    (fig,) = saved_figures
    assert texts(fig.axes[0]) == ["0.10"]  # the one defined pair (0, 2)
    image = fig.axes[0].images[0].get_array()
    assert image.mask.tolist() == [[True, True, False], [True, True, True], [True, True, True]]


def test_confusion_heatmap_unchanged_rates(tmp_path, saved_figures):
    plots.confusion_heatmap(THREE_ABSENT, ["a", "b", "c"], "t", tmp_path / "c.png")
    (fig,) = saved_figures
    assert texts(fig.axes[0]) == ["0.60", "0.30", "0.10", "0.00", "0.00", "0.00",
                                  "0.00", "0.50", "0.50"]


def test_target_success_heatmap_diagonal_blank_and_input_untouched(tmp_path, saved_figures):
    matrix = np.full((3, 3), 0.5)
    plots.target_success_heatmap(matrix, ["a", "b", "c"], "t", tmp_path / "t.png")
    assert np.all(matrix == 0.5)
    mask = saved_figures[0].axes[0].images[0].get_array().mask
    assert mask.tolist() == np.eye(3, dtype=bool).tolist()
    with pytest.raises(ValueError, match="square"):
        plots.target_success_heatmap(np.ones((2, 3)), [], "t", tmp_path / "x.png")


@pytest.mark.parametrize("k,named", [(2, True), (10, True), (100, False)])
def test_target_share_bars(k, named, tmp_path, saved_figures):
    names = CIFAR10[:k] if named else []
    out = plots.target_share_bars(random_counts(k, seed=k + 1), names, "shares", tmp_path / "s.png")
    assert_png(out)
    ax = saved_figures[0].axes[0]
    assert ax.get_title() == "shares" and len(ax.patches) == k
    (uniform,) = ax.lines
    assert uniform.get_linestyle() == "--" and list(uniform.get_ydata()) == [1 / k, 1 / k]


def test_target_share_bars_without_misclassifications(tmp_path, saved_figures):
    out = plots.target_share_bars([[5, 0], [0, 3]], ["a", "b"], "perfect", tmp_path / "p.png")
    assert_png(out)
    ax = saved_figures[0].axes[0]
    assert len(ax.patches) == 0 and "no misclassifications" in texts(ax)[0]


@pytest.mark.parametrize("k,named", [(2, True), (10, True), (100, False)])
def test_per_class_bars(k, named, tmp_path, saved_figures):
    rng = np.random.default_rng(k)
    clean = rng.uniform(size=k).tolist()
    robust = [None if i % 4 == 1 else v / 2 for i, v in enumerate(clean)]  # absent classes
    names = CIFAR10[:k] if named else []
    out = plots.per_class_bars({"clean": clean, "pgd20": robust}, names, "per class", tmp_path / "b.png")
    assert_png(out)
    ax = saved_figures[0].axes[0]
    n_missing = sum(v is None for v in robust)
    assert len(ax.patches) == 2 * k - n_missing
    assert texts(ax) == ["n/a"] * n_missing
    assert ax.get_ylim() == (0, 1) and ax.get_title() == "per class"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["clean", "pgd20"]
    assert [t.get_text() for t in ax.get_xticklabels()] == plots.common._tick_labels(names, k)[1]


def test_per_class_bars_rejects_bad_lengths(tmp_path):
    with pytest.raises(ValueError, match=r"per_class\['pgd20'\]: need 3 values, got 2"):
        plots.per_class_bars({"clean": [1, 1, 1], "pgd20": [1, 1]}, [], "t", tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one"):
        plots.per_class_bars({}, [], "t", tmp_path / "x.png")


def test_group_bars(tmp_path, saved_figures):
    groups = {"clean": {"male": 0.9, "female": 0.85}, "eyeglass": {"male": 0.6, "female": 0.24},
              "pgd20": {"female": 0.5}}  # "male" missing -> n/a
    out = plots.group_bars(groups, "gender", tmp_path / "g.png", ylabel="robust accuracy")
    assert_png(out)
    ax = saved_figures[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["male", "female"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["clean", "eyeglass", "pgd20"]
    assert ax.get_ylabel() == "robust accuracy" and ax.get_title() == "gender"
    assert len(ax.patches) == 5
    assert sorted(texts(ax)) == sorted(["0.90", "0.85", "0.60", "0.24", "0.50", "n/a"])
    with pytest.raises(ValueError, match="at least one"):
        plots.group_bars({}, "t", tmp_path / "x.png")
