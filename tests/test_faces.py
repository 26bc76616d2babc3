"""Face data (``faces``) on a tiny generated PubFig-style set, and the torchvision face models
(``vgg16``, ``vit_b_16``): shapes, splits, lazy loading, metadata, weights, every error path."""
import csv
import importlib
import os

import numpy as np
import pytest
import torch
import torchvision
from fake_faces import make_fake_faces  # tests/ is on sys.path under pytest (no __init__.py)
from PIL import Image

from distfair.data import DATASETS, build_dataset
from distfair.models import MODELS, Normalize
from distfair.models.torchvision_nets import VGG16, ViTB16

faces_module = importlib.import_module("distfair.data.faces")
IDS = ("dave", "alice", "carol", "bob")   # written unsorted: classes come out sorted
GENDERS = ("M", "F", "F", "M")
SORTED = ["alice", "bob", "carol", "dave"]
K = 3


def rel(path, root) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.fixture
def face_root(tmp_path):
    # 10 per identity: the default 80/10/10 split (Sy-FAR §5) leaves 8 / 1 / 1 of each
    return make_fake_faces(tmp_path / "faces", identities=IDS, genders=GENDERS, per_identity=10, size=20)


# --------------------------------------------------------------------------------- data
def test_registries():
    assert DATASETS["faces"] is faces_module.faces
    assert MODELS["vgg16"] is VGG16 and MODELS["vit_b_16"] is ViTB16


def test_shapes_bounds_names(face_root):
    b = build_dataset("faces", root=str(face_root), image_size=16)
    assert b.num_classes == 4 and b.class_names == SORTED
    assert b.in_shape == (3, 16, 16) and b.bounds == (0.0, 1.0)
    for ds in (b.train, b.val, b.test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 16, 16) and x.dtype == torch.float32
            assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > x.min()
            assert isinstance(y, int) and SORTED[y] == rel(ds.paths[i], face_root).split("/")[0]


def test_pixels_match_the_files(face_root):
    b = build_dataset("faces", root=str(face_root), image_size=20)  # same size: no resampling
    x, _ = b.test[0]
    expected = np.asarray(Image.open(b.test.paths[0]).convert("RGB"), dtype=np.float32) / 255.0
    torch.testing.assert_close(x, torch.from_numpy(expected).permute(2, 0, 1))


def test_splits_disjoint_stratified_complete(face_root):
    b = build_dataset("faces", root=str(face_root), image_size=8, test_fraction=0.2, val_fraction=0.1)
    parts = {p: [rel(q, face_root) for q in getattr(b, p).paths] for p in ("train", "val", "test")}
    every = {f"{i}/{n:03d}.png" for i in IDS for n in range(10)}
    assert sorted(sum(parts.values(), [])) == sorted(every)          # a partition of the files
    # per identity of 10: test round(2) = 2, val round(3) - 2 = 1, train the other 7
    for part, n in (("train", 7), ("val", 1), ("test", 2)):
        labels = np.bincount(getattr(b, part).targets, minlength=4)
        assert labels.tolist() == [n] * 4, part


def test_default_split_is_the_papers_80_10_10(face_root):
    """Sy-FAR §5: "an 80/10/10 split for training, validation, and testing"."""
    b = build_dataset("faces", root=str(face_root), image_size=8)
    for part, n in (("train", 8), ("val", 1), ("test", 1)):
        assert np.bincount(getattr(b, part).targets, minlength=4).tolist() == [n] * 4, part


def test_split_fractions_follow_stratified_split(tmp_path):
    root = make_fake_faces(tmp_path, per_identity=10, size=8)
    b = build_dataset("faces", root=str(root), image_size=8, test_fraction=0.3, val_fraction=0.2)
    for part, n in (("test", 3), ("val", 2), ("train", 5)):
        assert np.bincount(getattr(b, part).targets).tolist() == [n] * 4, part


def test_deterministic_in_split_seed(face_root):
    def test_files(seed):
        return build_dataset("faces", root=str(face_root), image_size=8, split_seed=seed).test.paths

    assert test_files(0) == test_files(0)
    assert test_files(0) != test_files(1)


def test_lazy_loading(face_root, monkeypatch):
    opened = []
    real_open = Image.open

    def spy(path, *args, **kwargs):
        opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(faces_module.Image, "open", spy)
    b = build_dataset("faces", root=str(face_root), image_size=8)
    assert opened == []                                        # building reads no image
    assert not any(isinstance(v, torch.Tensor) for ds in (b.train, b.val, b.test) for v in vars(ds).values())
    b.train[2]
    assert opened == [b.train.paths[2]]
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(b.train.paths[2])  # read at access time
    assert b.train[2][0].max() == 0


def test_class_attributes(face_root):
    b = build_dataset("faces", root=str(face_root), image_size=8)
    assert b.class_attributes == {"gender": ["F", "M", "F", "M"]}   # alice, bob, carol, dave
    assert b.test_attributes == {}
    # extra rows for identities without a folder are ignored; several attributes; absolute path
    path = write_csv(face_root.parent / "ids.csv", ["gender", "identity", "age"],
                     [["F", "alice", "30"], ["M", "bob", "40"], ["X", "zoe", "1"], ["F", "carol", "50"],
                      ["M", "dave", "60"]])
    b = build_dataset("faces", root=str(face_root), image_size=8, metadata=str(path))
    assert b.class_attributes == {"gender": ["F", "M", "F", "M"], "age": ["30", "40", "50", "60"]}


def test_test_attributes_per_sample(tmp_path):
    root = make_fake_faces(tmp_path, identities=IDS, genders=GENDERS, per_identity=10, per_sample=True)
    b = build_dataset("faces", root=str(root), image_size=8)
    gender = dict(zip(IDS, GENDERS))
    expected = [gender[rel(p, root).split("/")[0]] for p in b.test.paths]
    assert b.test_attributes == {"gender": expected} and b.class_attributes == {}
    # order: the i-th value belongs to test[i]
    files = [f"{i}/{n:03d}.png" for i in IDS for n in range(10)]
    write_csv(root / "tags.csv", ["file", "tag"], [[f"./{f}", f"tag:{f}"] for f in reversed(files)])
    b = build_dataset("faces", root=str(root), image_size=8, metadata="tags.csv")
    assert b.test_attributes["tag"] == [f"tag:{rel(p, root)}" for p in b.test.paths]


def test_no_metadata(face_root):
    os.remove(face_root / "metadata.csv")
    b = build_dataset("faces", root=str(face_root), image_size=8, metadata=None)
    assert b.class_attributes == {} and b.test_attributes == {}
    with pytest.raises(FileNotFoundError, match="metadata.csv.*metadata=None"):
        build_dataset("faces", root=str(face_root), image_size=8)


def test_file_discovery(face_root):
    (face_root / ".hidden").mkdir()                         # hidden folder: not a class
    (face_root / ".hidden" / "x.png").write_bytes((face_root / "bob" / "000.png").read_bytes())
    (face_root / "bob" / "notes.txt").write_text("not an image")
    (face_root / "bob" / ".x.png").write_bytes((face_root / "bob" / "000.png").read_bytes())
    for name in ("UP.PNG", "mixed.JpG"):
        fmt = "PNG" if "PNG" in name else "JPEG"
        Image.new("RGB", (5, 7), (9, 9, 9)).save(face_root / "bob" / name, format=fmt)
    b = build_dataset("faces", root=str(face_root), image_size=8, test_fraction=0.1, val_fraction=0.1)
    paths = b.train.paths + b.val.paths + b.test.paths
    bob = sorted(rel(p, face_root) for p in paths if rel(p, face_root).startswith("bob/"))
    assert b.class_names == SORTED and len(paths) == 42
    assert bob == sorted([f"bob/{n:03d}.png" for n in range(10)] + ["bob/UP.PNG", "bob/mixed.JpG"])


def test_max_per_class(face_root):
    b = build_dataset("faces", root=str(face_root), image_size=8, max_per_class=5, test_fraction=0.2,
                      val_fraction=0.2)
    paths = sorted(rel(p, face_root) for ds in (b.train, b.val, b.test) for p in ds.paths)
    assert paths == sorted(f"{i}/{n:03d}.png" for i in IDS for n in range(5))  # the first 5 by name
    with pytest.raises(ValueError, match="max_per_class"):
        build_dataset("faces", root=str(face_root), max_per_class=0)


def test_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset("faces", root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no identity folders"):
        build_dataset("faces", root=str(tmp_path))
    (tmp_path / "solo").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "solo" / "a.png")
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_dataset("faces", root=str(tmp_path))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no faces")
    with pytest.raises(ValueError, match="empty.*holds no images"):
        build_dataset("faces", root=str(tmp_path))


@pytest.mark.parametrize("options,match", [
    ({"test_fraction": 0.0}, "test_fraction"), ({"val_fraction": 1.0}, "val_fraction"),
    ({"test_fraction": 0.6, "val_fraction": 0.5}, "sum to < 1"), ({"image_size": 0}, "image_size"),
    ({"test_fraction": 0.01, "val_fraction": 0.01}, "test split is empty"),
])
def test_bad_options(face_root, options, match):
    with pytest.raises(ValueError, match=match):
        build_dataset("faces", root=str(face_root), **options)


@pytest.mark.parametrize("header,rows,match", [
    (["identity", "gender"], [["alice", "F"], ["bob", "M"], ["dave", "M"]], r"bad\.csv.*identity 'carol'"),
    (["file", "gender"], [[f"alice/{n:03d}.png", "F"] for n in range(10)], r"bad\.csv.*file 'bob/000\.png'"),
    (["identity", "file", "gender"], [], r"bad\.csv.*exactly one.*\['identity', 'file', 'gender'\]"),
    (["name", "gender"], [["alice", "F"]], r"bad\.csv.*exactly one.*\['name', 'gender'\]"),
    ([], [], r"bad\.csv.*exactly one"),
    (["identity"], [["alice"]], r"bad\.csv.*attribute columns"),
    (["identity", "gender"], [["alice", "F"], ["bob"]], r"bad\.csv', row 3: 1 fields"),
    (["identity", "gender"], [["alice", "F"], ["alice", "M"]],
     r"bad\.csv', row 3: duplicate identity 'alice'"),
])
def test_bad_metadata(face_root, header, rows, match):
    write_csv(face_root / "bad.csv", header, rows)
    with pytest.raises(ValueError, match=match):
        build_dataset("faces", root=str(face_root), metadata="bad.csv")


def test_unreadable_image_named(face_root):
    b = build_dataset("faces", root=str(face_root), image_size=8)
    with open(b.test.paths[0], "wb") as f:
        f.write(b"not a png")
    with pytest.raises(OSError, match=rel(b.test.paths[0], face_root)):
        b.test[0]


# ------------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Torchvision state dicts on disk: vgg16 (plain) and vit_b_16 at 32 px (under "model")."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    vgg = torchvision.models.vgg16(weights=None).state_dict()
    torch.save(vgg, folder / "vgg16.pt")
    vit = torchvision.models.vit_b_16(weights=None, image_size=32).state_dict()
    torch.save({"model": vit, "epoch": 3}, folder / "vit.pt")
    return {"vgg": vgg, "vit": vit, "vgg_file": folder / "vgg16.pt", "vit_file": folder / "vit.pt"}


def check_model(model, keys, saved_state):
    norm = model.normalize
    assert isinstance(norm, Normalize) and sum(isinstance(m, Normalize) for m in model.modules()) == 1
    assert "normalize.mean" in dict(model.named_buffers())
    torch.testing.assert_close(norm.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    torch.testing.assert_close(norm.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    for key in keys:
        assert torch.equal(model.state_dict()[f"net.{key}"], saved_state[key]), key
    out = model.eval()(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, K) and torch.isfinite(out).all()


def test_vgg16_weights_round_trip(saved):
    model = VGG16(num_classes=K, in_shape=(3, 32, 32), weights=str(saved["vgg_file"]))
    check_model(model, ["features.0.weight", "features.28.bias", "classifier.3.weight"], saved["vgg"])
    assert model.net.classifier[6].out_features == K
    assert not torch.equal(model.net.classifier[6].weight[:K], saved["vgg"]["classifier.6.weight"][:K])


def test_vit_weights_round_trip(saved):
    model = ViTB16(num_classes=K, in_shape=(3, 32, 32), weights=str(saved["vit_file"]))
    keys = ["conv_proj.weight", "encoder.pos_embedding", "encoder.layers.encoder_layer_11.mlp.0.weight"]
    check_model(model, keys, saved["vit"])
    assert model.net.heads.head.out_features == K


def test_vit_resizes_positional_embedding(saved):
    model = ViTB16(num_classes=K, in_shape=(3, 48, 48), weights=str(saved["vit_file"]))
    pos = model.net.encoder.pos_embedding
    assert pos.shape == (1, 10, 768)                                      # 3x3 patches + class token
    assert torch.equal(pos[:, :1], saved["vit"]["encoder.pos_embedding"][:, :1])
    assert model.eval()(torch.rand(1, 3, 48, 48)).shape == (1, K)


def test_wrong_architecture_weights(saved, tmp_path):
    with pytest.raises(ValueError, match=r"vit\.pt.*missing keys: classifier\.0\.bias.*unexpected keys: "
                                         r"class_token"):
        VGG16(num_classes=K, in_shape=(3, 32, 32), weights=str(saved["vit_file"]))
    wrong_head = dict(saved["vit"], **{"heads.head.weight": torch.zeros(10, 768)})
    torch.save({"state_dict": wrong_head}, tmp_path / "vit10.pt")
    with pytest.raises(ValueError, match=r"vit10\.pt.*shape mismatches: heads\.head\.weight \(10, 768\) "
                                         r"vs \(1000, 768\)"):
        ViTB16(num_classes=K, in_shape=(3, 32, 32), weights=str(tmp_path / "vit10.pt"))


@pytest.mark.parametrize("cls", [VGG16, ViTB16])
def test_bad_weight_files(cls, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent\\.pt"):
        cls(num_classes=K, in_shape=(3, 32, 32), weights=str(tmp_path / "absent.pt"))
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="cannot read .*text\\.pt"):
        cls(num_classes=K, in_shape=(3, 32, 32), weights=str(tmp_path / "text.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list\\.pt.*no state dict"):
        cls(num_classes=K, in_shape=(3, 32, 32), weights=str(tmp_path / "list.pt"))


@pytest.mark.parametrize("cls,shape,match", [
    (ViTB16, (3, 32, 48), "square.*divisible by 16"), (ViTB16, (3, 40, 40), "square.*divisible by 16"),
    (ViTB16, (1, 32, 32), "shape"), (VGG16, (1, 32, 32), "shape"), (VGG16, (3, 16, 16), "at least 32x32"),
    (VGG16, (32, 32, 3), "shape"), (ViTB16, (3, 32), "shape"),
])
def test_bad_input_shapes(cls, shape, match):
    with pytest.raises(ValueError, match=match):
        cls(num_classes=K, in_shape=shape)


def test_shipped_faces_file_follows_the_paper():
    """tune_spaces/faces_roa.yaml: Sy-FAR §5's 80/10/10 split and ROA with FaceSec's defaults
    (70 × 70, stride 10, α = 20/255, 100 iterations); its deviations are commented there."""
    import yaml

    path = os.path.join(os.path.dirname(__file__), os.pardir, "tune_spaces", "faces_roa.yaml")
    with open(path) as f:
        cfg = yaml.safe_load(f)
    assert (cfg["dataset"]["val_fraction"], cfg["dataset"]["test_fraction"]) == (0.1, 0.1)
    roa = cfg["attack"]
    assert roa["name"] == "roa" and (roa["size"], roa["stride"], roa["steps"]) == (70, 10, 100)
    assert abs(roa["alpha"] - 20 / 255) < 1e-12
    assert [e["steps"] for e in cfg["eval"]["attacks"] if e["attack"] == "eyeglass"] == [300, 300]
