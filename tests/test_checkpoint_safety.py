"""Checkpoints are only ever read with ``torch.load(weights_only=True)``
(``distfair.models.load_checkpoint``): a checkpoint carrying a pickled payload is refused by
every entry point that reads one (resume, ``train.init_from``, a defense's teacher, the models
loader) with an error naming the file, and the payload never runs. Real checkpoints hold only
plain data, so they still load (the resume tests of test_engine, test_ferd and
test_defense_lifecycle run through the same loader)."""
from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch
import yaml

from distfair import cli
from distfair.config import validate
from distfair.engine import run_seed
from distfair.engine.train import CHECKPOINT_NAME, load_initial_weights
from distfair.models import UnsafeCheckpointError, build_model, load_checkpoint, model_from_checkpoint
from distfair.experiment.run import resolve_init_from, resolve_references


class Payload:
    """Unpickling this runs ``exec``: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('payload ran')",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real one-epoch epoch checkpoint of the tiny configuration."""
    from conftest import TINY  # tests/ is on sys.path under pytest (no __init__.py)

    cfg = validate({**copy.deepcopy(TINY), "train": {**TINY["train"], "epochs": 1}, "seeds": [0]}, "tiny.yaml")
    workdir = tmp_path_factory.mktemp("trained")
    run_seed(cfg, 0, workdir=workdir)
    return cfg, workdir / CHECKPOINT_NAME


@pytest.fixture
def poisoned(trained, tmp_path):
    """The real checkpoint plus one key whose unpickling would write ``marker``."""
    _, path = trained
    state = torch.load(path, weights_only=True)
    marker = tmp_path / "payload-ran"
    state["extra"] = Payload(marker)
    evil = tmp_path / "evil" / CHECKPOINT_NAME
    evil.parent.mkdir()
    torch.save(state, evil)
    return evil, marker


def test_real_checkpoints_hold_only_plain_data(trained):
    _, path = trained
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    state = load_checkpoint(path)
    assert state["epoch"] == 0 and state["model_name"] == "mlp" and isinstance(state["rng"]["numpy"][1], torch.Tensor)


def test_the_payload_is_live(poisoned):
    """Not vacuous: read without weights_only, the file does run its payload."""
    evil, marker = poisoned
    torch.load(evil, weights_only=False)
    assert marker.read_text() == "payload ran"


def test_every_loader_refuses_the_payload_naming_the_file(poisoned, trained, tmp_path):
    evil, marker = poisoned
    cfg, _ = trained
    with pytest.raises(UnsafeCheckpointError, match=rf"{evil}: refused: .*builtins.exec"):
        load_checkpoint(evil)
    with pytest.raises(UnsafeCheckpointError, match=rf"{evil}: refused"):
        model_from_checkpoint(evil)                                     # teachers (FERD, DFRD)
    with pytest.raises(ValueError, match=rf"train.init_from: {evil}: refused"):
        load_initial_weights(build_model("mlp", num_classes=3, in_shape=(6,), hidden=16), evil, model_name="mlp",
                             num_classes=3)
    with pytest.raises(ValueError, match=rf"train.init_from: {evil}: refused"):
        resolve_init_from({**cfg, "train": {**cfg["train"], "init_from": str(evil)}}, "sqlite:///unused.db", tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=rf"{evil}: refused"):
        run_seed(cfg, 0, workdir=evil.parent)                          # resume from the epoch checkpoint
    assert not marker.exists()


def test_a_poisoned_teacher_is_refused_naming_the_reference_key(poisoned, tmp_path):
    evil, marker = poisoned
    cfg = validate({"defense": {"name": "ferd", "teacher": str(evil), "iterations_per_epoch": 2, "batch_size": 16},
                    "dataset": {"name": "synthetic", "num_samples": 120, "num_classes": 3, "dim": 6},
                    "model": {"name": "mlp", "hidden": 16}, "attack": {"name": "pgd", "eps": 0.1, "steps": 2},
                    "seeds": [0]}, "ferd.yaml")
    with pytest.raises(ValueError, match=rf"defense.teacher: {evil}: refused"):
        resolve_references(cfg, "sqlite:///unused.db", tmp_path)
    assert not marker.exists()


def test_the_command_refuses_a_poisoned_init_from_before_anything_starts(poisoned, tmp_path, capsys, monkeypatch):
    from conftest import TINY

    evil, marker = poisoned
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "init_from": str(evil)}}))
    assert cli.main(["run", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: train.init_from: {evil}: refused" in err and len(err.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "distfair_runs" / "logs").exists()


def test_a_file_that_is_no_checkpoint_says_so(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=rf"{garbage}: not a readable PyTorch checkpoint"):
        load_checkpoint(garbage)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty or truncated"):
        load_checkpoint(empty)


# ------------------------------------------------- every torch.load in the code says weights_only=True
ROOT = Path(__file__).resolve().parent.parent


def unsafe_torch_loads(source: str, filename: str = "<source>") -> list[str]:
    """Every call of ``torch.load`` (``torch.serialization.load``, ``from torch import load``,
    an alias of torch) in ``source`` that does not pass ``weights_only=True`` literally, as
    ``file:line: why``. Read from the syntax tree, so a comment or a string naming it is not a call."""
    tree = ast.parse(source, filename)
    modules, functions = {"torch"}, set()          # names bound to torch / to torch.load
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name == "torch"}
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            functions |= {a.asname or a.name for a in node.names if a.name == "load"}

    def is_torch_load(func) -> bool:
        if isinstance(func, ast.Name):
            return func.id in functions
        if isinstance(func, ast.Attribute) and func.attr == "load":
            owner = func.value
            if isinstance(owner, ast.Name):
                return owner.id in modules
            return (isinstance(owner, ast.Attribute) and owner.attr == "serialization"
                    and isinstance(owner.value, ast.Name) and owner.value.id in modules)
        return False

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and is_torch_load(node.func):
            given = {k.arg: k.value for k in node.keywords}
            value = given.get("weights_only")
            if None in given:
                why = "**kwargs: weights_only cannot be read"
            elif value is None:
                why = "no weights_only argument (torch's default has changed across releases)"
            elif not (isinstance(value, ast.Constant) and value.value is True):
                why = f"weights_only={ast.unparse(value)}"
            else:
                continue
            found.append(f"{filename}:{node.lineno}: {why}")
    return found


def test_the_scan_finds_each_unsafe_form():
    source = ("import torch\nimport torch as th\nfrom torch import load as tload\n"
              "torch.load(p, weights_only=True)\n"            # 4: safe
              "torch.load(p, weights_only=False)\n"           # 5
              "th.load(p)\n"                                  # 6
              "tload(p, weights_only=flag)\n"                 # 7
              "torch.serialization.load(p, **kw)\n"           # 8
              "x = 'torch.load(p, weights_only=False)'  # torch.load(p)\n"   # 9: text, not a call
              "json.load(f)\n")                               # 10: not torch
    assert [f.split(":")[1] for f in unsafe_torch_loads(source)] == ["5", "6", "7", "8"]


def test_every_torch_load_in_distfair_and_scripts_passes_weights_only_true():
    """scripts/syfar_diagnostics.py read its checkpoints with weights_only=False (issue 28 §8);
    it now goes through load_checkpoint like the package."""
    files = sorted([*(ROOT / "distfair").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")])
    assert ROOT / "scripts" / "syfar_diagnostics.py" in files and len(files) > 50
    found = [f for path in files for f in unsafe_torch_loads(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []
