"""``distfair.config``: the shipped quickstart resolves, defaults are filled in, every problem
is a ``ConfigError`` line ``<file>: <dotted key>: <reason>``, all problems at once."""
import copy
from pathlib import Path

import pytest
import yaml

from distfair.attacks import ATTACKS
from distfair.config import SCALING_FIELDS, TRAIN_FIELDS, ConfigError, flatten, load_config, validate

QUICKSTART = Path(__file__).resolve().parents[1] / "tune_spaces" / "quickstart.yaml"

# cheap to validate: the synthetic set and an MLP are built in milliseconds
BASE = {
    "defense": {"name": "syfar", "lambda_sym": 0.5},
    "dataset": {"name": "synthetic", "num_samples": 60},
    "model": {"name": "mlp", "hidden": 8},
    "attack": {"name": "pgd", "eps": 0.1, "steps": 2},
    "train": {"epochs": 1, "lr": 0.1},
    "seeds": [0, 1],
}


def write(tmp_path, raw, name="cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def changed(**blocks) -> dict:
    """BASE with top-level blocks replaced (a value of ... deletes the block)."""
    raw = copy.deepcopy(BASE)
    for key, value in blocks.items():
        if value is ...:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def with_option(block: str, **options) -> dict:
    raw = copy.deepcopy(BASE)
    raw[block] = {**raw.get(block, {}), **options}
    return raw


def errors_of(tmp_path, raw, overrides=None) -> ConfigError:
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value


def assert_problem(err: ConfigError, key: str, *fragments: str) -> None:
    """The message has a line ``<file>: <key>: <reason>`` whose reason holds every fragment."""
    prefix = f"{err.source}: {key}: "
    lines = [line for line in str(err).splitlines() if line.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in:\n{err}"
    assert any(all(f in line for f in fragments) for line in lines), f"{fragments} not in {lines}"
    assert any(k == key for k, _ in err.problems)


# ------------------------------------------------------------------------------ loading
def test_quickstart_loads_and_resolves_defaults():
    cfg = load_config(QUICKSTART)
    assert cfg["defense"] == {"name": "syfar", "lambda_clean": 1.0, "lambda_adv": 1.0, "lambda_sym": 0.3,
                              "sym_eps": None, "sym_estimate": "batch", "sym_momentum": 0.9,
                              "grad_norms": False}
    assert cfg["attack"]["name"] == "pgd" and cfg["attack"]["eps"] == 0.1
    assert cfg["attack"]["alpha"] is None
    assert cfg["attack"]["random_start"] is True and cfg["attack"]["target_mode"] == "none"
    pgd20, fgsm = cfg["eval"]["attacks"]
    assert pgd20["name"] == "pgd20" and pgd20["attack"] == "pgd" and pgd20["steps"] == 20
    assert pgd20["eps"] == cfg["attack"]["eps"] and pgd20["alpha"] is None
    assert fgsm["attack"] == "fgsm" and fgsm["eps"] == cfg["attack"]["eps"]
    assert set(cfg["train"]) == set(TRAIN_FIELDS)
    assert cfg["train"]["eval_batch_size"] == TRAIN_FIELDS["eval_batch_size"][1]
    assert cfg["train"]["milestones"] == [] and cfg["train"]["nesterov"] is False
    assert set(cfg["scaling"]) == set(SCALING_FIELDS)
    assert cfg["scaling"]["max_concurrent_seeds"] is None
    assert cfg["model"]["width"] == 32  # model default filled in
    assert cfg["seeds"] == [0, 1, 2]
    assert cfg["space"] == {}


def test_validate_equals_load_config_and_does_not_mutate_input(tmp_path):
    raw = copy.deepcopy(BASE)
    cfg = validate(raw, "inline")
    assert raw == BASE
    assert cfg == load_config(write(tmp_path, BASE))


def test_defaults_of_missing_blocks(tmp_path):
    cfg = load_config(write(tmp_path, changed(train=..., seeds=..., scaling=...)))
    assert cfg["train"] == {k: d for k, (_, d, _) in TRAIN_FIELDS.items()}
    assert cfg["scaling"] == {k: d for k, (_, d, _) in SCALING_FIELDS.items()}
    assert cfg["seeds"] == [0, 1, 2]
    # default evaluation: one PGD-20 at the training eps
    (entry,) = cfg["eval"]["attacks"]
    assert (entry["name"], entry["attack"], entry["steps"], entry["eps"]) == ("pgd20", "pgd", 20, 0.1)


def test_resolved_defaults_are_not_shared(tmp_path):
    path = write(tmp_path, BASE)
    first = load_config(path)
    first["train"]["milestones"].append(3)
    first["scaling"]["resources_per_worker"]["GPU"] = 1
    second = load_config(path)
    assert second["train"]["milestones"] == []
    assert second["scaling"]["resources_per_worker"] == {"CPU": 1.0}


def test_bare_names_and_int_to_float(tmp_path):
    cfg = load_config(write(tmp_path, changed(defense="standard", model="mlp", attack=...,
                                              eval={"attacks": [{"name": "p", "attack": "pgd", "eps": 0.2}]},
                                              train={"lr": 1}, seeds=2)))
    assert cfg["defense"] == {"name": "standard"}
    assert cfg["model"] == {"name": "mlp", "hidden": 32, "mean": 0.5, "std": 0.25}
    assert cfg["attack"] is None
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert cfg["seeds"] == [0, 1]


def test_flatten():
    cfg = load_config(QUICKSTART)
    cfg["space"] = {"defense.lambda_sym": {"low": 0.0, "high": 1.0}}
    flat = flatten(cfg)
    assert flat["train.lr"] == 0.02
    assert flat["defense.lambda_sym"] == 0.3
    assert flat["attack.alpha"] is None
    assert flat["eval.attacks.0.steps"] == 20 and flat["eval.attacks.1.name"] == "fgsm"
    assert flat["scaling.resources_per_worker.CPU"] == 1
    assert flat["seeds"] == [0, 1, 2] and flat["train.milestones"] == []
    assert not any(key == "space" or key.startswith("space.") for key in flat)
    assert all(not isinstance(v, dict) for v in flat.values())


def test_space_block_is_accepted_and_ignored(tmp_path):
    space = {"defense.lambda_sym": {"type": "float", "low": 0.0, "high": 10.0, "whatever": [1, 2]}}
    cfg = load_config(write(tmp_path, changed(space=space)))
    assert cfg["space"] == space
    without = load_config(write(tmp_path, BASE, "plain.yaml"))
    assert {k: v for k, v in cfg.items() if k != "space"} == {k: v for k, v in without.items() if k != "space"}


# ----------------------------------------------------------------------------- overrides
def test_overrides_apply(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.lr=0.01", "seeds=[4,5]", "attack.steps=3"])
    assert cfg["train"]["lr"] == 0.01 and cfg["seeds"] == [4, 5] and cfg["attack"]["steps"] == 3
    assert cfg["eval"]["attacks"][0]["eps"] == 0.1


def test_override_into_bare_name(tmp_path):
    cfg = load_config(write(tmp_path, changed(model="mlp")), ["model.hidden=4"])
    assert cfg["model"] == {"name": "mlp", "hidden": 4, "mean": 0.5, "std": 0.25}


def test_overrides_are_type_checked(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.lr=fast"])
    err = info.value
    assert str(path) in err.source
    assert_problem(err, "train.lr", "must be float", "'fast'")


@pytest.mark.parametrize("bad", ["train.lr", "=0.1", "train..lr=0.1"])
def test_bad_override_string(tmp_path, bad):
    err = errors_of(tmp_path, BASE, [bad])
    assert err.source == str(tmp_path / "cfg.yaml")
    assert_problem(err, "--set", repr(bad))


# -------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("raw,key,fragments", [
    pytest.param(changed(foo=1), "foo", ("unknown top-level key",), id="unknown-top-level"),
    pytest.param(with_option("train", lrr=0.1), "train.lrr", ("unknown key", "lr"), id="unknown-train-key"),
    pytest.param(with_option("scaling", gpus=1), "scaling.gpus", ("unknown key",), id="unknown-scaling-key"),
    pytest.param(with_option("train", lr="fast"), "train.lr", ("must be float", "'fast'"), id="lr-str"),
    pytest.param(with_option("train", epochs=1.5), "train.epochs", ("must be int", "1.5"), id="epochs-float"),
    pytest.param(with_option("train", epochs=True), "train.epochs", ("must be int",), id="epochs-bool"),
    pytest.param(with_option("scaling", use_gpu="yes"), "scaling.use_gpu", ("must be bool", "'yes'"),
                 id="use_gpu-str"),
    pytest.param(with_option("train", lr=0), "train.lr", ("must be > 0",), id="lr-zero"),
    pytest.param(with_option("train", optimizer="rmsprop"), "train.optimizer", ("must be one of", "sgd"),
                 id="optimizer"),
    pytest.param(with_option("scaling", resources_per_worker={"CPU": 1, "GPU": 1}),
                 "scaling.resources_per_worker.GPU", ("use_gpu",), id="gpu-without-use_gpu"),
    pytest.param(with_option("defense", name="nope"), "defense.name", ("unknown defense 'nope'", "known:", "syfar"),
                 id="defense-name"),
    pytest.param(with_option("dataset", name="nope"), "dataset.name", ("unknown dataset 'nope'", "known:", "digits"),
                 id="dataset-name"),
    pytest.param(with_option("model", name="nope"), "model.name", ("unknown model 'nope'", "known:", "mlp"),
                 id="model-name"),
    pytest.param(with_option("attack", name="nope"), "attack.name", ("unknown attack 'nope'", "known:", "pgd"),
                 id="attack-name"),
    pytest.param(changed(eval={"attacks": [{"name": "x", "attack": "nope"}]}), "eval.attacks[0].attack",
                 ("unknown attack 'nope'", f"known: {', '.join(sorted(ATTACKS))}"), id="eval-attack-name"),
    pytest.param(with_option("defense", lambda_foo=1.0), "defense.lambda_foo",
                 ("unknown option of 'syfar'", "lambda_sym"), id="defense-option"),
    pytest.param(with_option("model", width=4), "model.width", ("unknown option of 'mlp'",), id="model-option"),
    pytest.param(with_option("defense", lambda_sym="big"), "defense.lambda_sym", ("must be float",),
                 id="defense-option-type"),
    pytest.param(with_option("attack", eps=-1), "attack", ("eps must be >= 0",), id="attack-eps"),
    pytest.param(with_option("defense", lambda_sym=-1), "defense", ("lambda_sym must be >= 0",),
                 id="defense-lambda"),
    pytest.param(with_option("defense", sym_eps=0), "defense", ("sym_eps must be > 0",), id="defense-sym_eps"),
    pytest.param(with_option("dataset", val_fraction=1.5), "dataset", ("val_fraction", "1.5"),
                 id="dataset-fraction"),
    pytest.param(with_option("model", hidden=0), "model", ("hidden must be >= 1",), id="model-hidden"),
    pytest.param(changed(defense=...), "defense", ("required",), id="missing-defense"),
    pytest.param(changed(dataset=...), "dataset", ("required",), id="missing-dataset"),
    pytest.param(changed(model=...), "model", ("required",), id="missing-model"),
    pytest.param(changed(defense={"lambda_sym": 1.0}), "defense.name", ("required",), id="defense-without-name"),
    pytest.param(changed(attack=..., eval={"attacks": [{"name": "p", "attack": "pgd", "eps": 0.1}]}),
                 "defense", ("needs a training attack",), id="syfar-without-attack"),
    pytest.param(changed(seeds=[]), "seeds", ("non-empty list",), id="seeds-empty"),
    pytest.param(changed(seeds=[1, 1]), "seeds", ("must not repeat",), id="seeds-duplicate"),
    pytest.param(changed(seeds=[0, -1]), "seeds", ("non-negative",), id="seeds-negative"),
    pytest.param(changed(seeds="abc"), "seeds", ("list of integers", "'abc'"), id="seeds-str"),
    pytest.param(changed(seeds=[0, 1.5]), "seeds", ("list of integers",), id="seeds-float"),
    pytest.param(changed(seeds=0), "seeds", ("must be >= 1",), id="seeds-zero-count"),
    pytest.param(changed(eval={"attacks": [{"attack": "pgd"}]}), "eval.attacks[0].name", ("needs a name",),
                 id="eval-without-name"),
    pytest.param(changed(eval={"attacks": [{"name": "a", "attack": "pgd"}, {"name": "a", "attack": "fgsm"}]}),
                 "eval.attacks[1].name", ("duplicate", "'a'"), id="eval-duplicate-name"),
    pytest.param(changed(eval={"attacks": [{"name": "clean_pgd", "attack": "pgd"}]}), "eval.attacks[0].name",
                 ("must not",), id="eval-clean-name"),
    pytest.param(changed(eval={"steps": 3}), "eval.steps", ("unknown key",), id="eval-unknown-key"),
    pytest.param(changed(defense="standard", attack=..., eval={"attacks": [{"name": "p", "attack": "pgd"}]}),
                 "eval.attacks[0].eps", ("no training attack",), id="eval-without-eps"),
    pytest.param(changed(defense="standard", attack=..., eval=...), "eval.attacks[0].eps",
                 ("no training attack",), id="default-eval-without-eps"),
    pytest.param(changed(eval={"attacks": [{"name": "p", "attack": "pgd", "steps": 0}]}), "eval.attacks[0]",
                 ("steps must be >= 1",), id="eval-attack-value"),
    pytest.param(changed(space=[1, 2]), "space", ("must be a mapping",), id="space-not-mapping"),
    pytest.param(changed(eval={"attacks": [{"name": "p", "attack": "pgd", "target": -1}]}), "eval.attacks[0].target",
                 ("class index", "'every'"), id="eval-target-negative"),
    pytest.param(changed(eval={"attacks": [{"name": "p", "attack": "pgd", "target": 1.5}]}), "eval.attacks[0].target",
                 ("class index",), id="eval-target-float"),
    pytest.param(changed(eval={"attacks": [{"name": "p", "attack": "pgd", "target": 7}]}), "eval.attacks[0].target",
                 ("out of range 0..2",), id="eval-target-range"),
    pytest.param(changed(eval={"attacks": [{"name": "p", "attack": "pgd", "target": "cat"}]}),
                 "eval.attacks[0].target", ("'cat' is not a class name",), id="eval-target-name"),
    pytest.param(changed(eval={"attacks": [{"name": "p", "attack": "pgd", "target": "random",
                                            "target_mode": "random"}]}),
                 "eval.attacks[0].target", ("not both",), id="eval-target-twice"),
    pytest.param(changed(eval={"attacks": [{"name": "a:b", "attack": "pgd"}]}), "eval.attacks[0].name",
                 ("must not",), id="eval-colon-name"),
    pytest.param(changed(eval={"subgroups": ["gender"]}), "eval.subgroups", ("must be a mapping",),
                 id="subgroups-list"),
    pytest.param(changed(eval={"subgroups": {"gender": "meta"}}), "eval.subgroups.gender",
                 ("'metadata' or a non-empty",), id="subgroups-bad-source"),
    pytest.param(changed(eval={"subgroups": {"gender": "metadata"}}), "eval.subgroups.gender",
                 ("no attribute 'gender'",), id="subgroups-no-metadata"),
    pytest.param(changed(eval={"subgroups": {"half": {0: "a", 1: "b"}}}), "eval.subgroups.half",
                 ("classes without a group: 2",), id="subgroups-unmapped-class"),
    pytest.param(changed(eval={"subgroups": {"half": {0: "a", 1: "b", 9: "c"}}}), "eval.subgroups.half.9",
                 ("not a class",), id="subgroups-unknown-class"),
    pytest.param(changed(eval={"subgroups": {"half": {0: ["a"]}}}), "eval.subgroups.half.0",
                 ("plain values",), id="subgroups-nested-group"),
])
def test_problem_is_reported(tmp_path, raw, key, fragments):
    err = errors_of(tmp_path, raw)
    assert err.source == str(tmp_path / "cfg.yaml")
    assert_problem(err, key, *fragments)


# ------------------------------------------------------ threat model of the training attack
@pytest.mark.parametrize("defense,attack,norm", [
    ("trades", {"name": "pgd_l2", "eps": 0.5}, "l2"),
    ("trades", {"name": "roa"}, "patch"),
    ("trades", {"name": "eyeglass"}, "patch"),
    ("trades", {"name": "square", "eps": 0.1, "norm": "l2"}, "l2"),
    ("specnorm", {"name": "pgd_l2", "eps": 0.5}, "l2"),
    ("specnorm", {"name": "face_mask"}, "patch"),
    ("specnorm", {"name": "ensemble", "eps": 0.1, "members": "pgd,pgd_l2"}, "mixed"),
])
def test_non_linf_training_attack_of_trades_or_specnorm_is_an_attack_name_problem(tmp_path, defense, attack, norm):
    """TRADES' own KL maximiser (reused by SpecNorm) is ℓ∞ only: any other threat model would
    silently become an ℓ∞ box of the same ε, so it is refused, naming the attack."""
    raw = changed(defense={"name": defense}, attack=attack,
                  eval={"attacks": [{"name": "p", "attack": "pgd", "eps": 0.1, "steps": 2}]})
    err = errors_of(tmp_path, raw)
    assert_problem(err, "attack.name", f"defense '{defense}'", f"attack '{attack['name']}' ('{norm}')", "'linf'")
    assert len(err.problems) == 1   # not repeated as a `defense:` problem


@pytest.mark.parametrize("defense", ["trades", "specnorm", "faal", "pgd_at", "syfar"])
def test_linf_attacks_validate_for_every_defense(defense):
    for attack in ({"name": "pgd", "eps": 0.1, "steps": 2}, {"name": "fgsm", "eps": 0.1},
                   {"name": "cw_linf", "eps": 0.1}, {"name": "square", "eps": 0.1}):
        cfg = validate(changed(defense={"name": defense}, attack=attack), "cfg.yaml")
        assert cfg["attack"]["name"] == attack["name"]


def test_defenses_calling_the_attack_as_is_keep_any_threat_model():
    for defense in ("faal", "pgd_at", "syfar"):
        cfg = validate(changed(defense={"name": defense}, attack={"name": "pgd_l2", "eps": 0.5}), "cfg.yaml")
        assert cfg["attack"]["name"] == "pgd_l2"


def test_cli_refuses_trades_with_pgd_l2_with_exit_2_and_starts_nothing(tmp_path, monkeypatch, capsys):
    from distfair import cli

    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, changed(defense={"name": "trades"}, attack={"name": "pgd_l2", "eps": 0.5}))
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: attack.name: defense 'trades'" in err and "'pgd_l2' ('l2')" in err
    assert "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "distfair_runs").exists()


def test_missing_data_root_is_a_config_error(tmp_path):
    err = errors_of(tmp_path, changed(dataset={"name": "cifar10", "root": str(tmp_path / "none")},
                                      model={"name": "mlp"}))
    assert_problem(err, "dataset", "download")


def test_all_problems_reported_at_once(tmp_path):
    """All at once, in two passes (``distfair.config.validate``): every structural problem (keys,
    fixed fields, registry names) together, without importing PyTorch; then, once the structure
    is right, every problem of the registry entries' options together."""
    raw = changed(foo=1, seeds=[], model=...)
    raw["train"] = {"lr": "fast", "epochs": 1.5, "lrr": 1}
    raw["defense"] = {"name": "syfar", "lambda_foo": 2}
    raw["eval"] = {"summaries": {"auc_ac": {}}}
    err = errors_of(tmp_path, raw)
    expected = {"foo", "seeds", "model", "train.lr", "train.epochs", "train.lrr", "eval.summaries.auc_ac"}
    assert expected == {k for k, _ in err.problems}       # the options wait for the second pass
    lines = str(err).splitlines()
    assert len(lines) == len(err.problems) >= len(expected)
    assert all(line.startswith(f"{err.source}: ") for line in lines)
    assert isinstance(err, ValueError)

    raw = with_option("defense", lambda_foo=2)           # structure right: every option problem
    raw["model"] = {"name": "mlp", "hidden": "wide"}
    raw["attack"] = {"name": "pgd", "eps": 0.1, "stepz": 2}
    raw["dataset"] = {"name": "synthetic", "num_samplez": 60}
    err = errors_of(tmp_path, raw)
    assert {"defense.lambda_foo", "model.hidden", "attack.stepz", "dataset.num_samplez"} == {k for k, _ in err.problems}


@pytest.mark.parametrize("text,reason", [("", "empty file"), ("a: [1,\n", "invalid YAML"),
                                         ("- 1\n- 2\n", "must be a mapping")])
def test_unreadable_documents(tmp_path, text, reason):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=reason) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_file(tmp_path):
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_problem(info.value, "(file)", "cannot read")


def test_override_into_null_block(tmp_path):
    cfg = load_config(write(tmp_path, changed(defense="standard", attack=None)), ["attack.name=pgd", "attack.eps=0.2"])
    assert cfg["attack"]["name"] == "pgd" and cfg["attack"]["eps"] == 0.2


def test_resources_per_seed_is_split_over_the_workers(tmp_path):
    raw = changed(scaling={"num_workers": 2, "use_gpu": True, "resources_per_seed": {"CPU": 2, "GPU": 0.5}})
    cfg = load_config(write(tmp_path, raw))
    assert cfg["scaling"]["resources_per_worker"] == {"CPU": 1.0, "GPU": 0.25}     # 2/2 CPU, 0.5/2 GPU
    from distfair.distributed.layout import concurrent_groups
    assert concurrent_groups(cfg["scaling"], {"CPU": 16.0, "GPU": 1.0}) == 2         # 1 GPU / (2 x 0.25)


def test_resources_per_seed_and_per_worker_are_exclusive(tmp_path):
    raw = changed(scaling={"resources_per_worker": {"CPU": 1}, "resources_per_seed": {"CPU": 2}})
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, raw))
    assert "scaling.resources_per_seed: give either resources_per_seed or resources_per_worker" in str(info.value)


def test_eval_targets_and_subgroups_resolve(tmp_path):
    cfg = load_config(write(tmp_path, changed(eval={
        "attacks": [{"name": "every", "attack": "fgsm", "target": "every"},
                    {"name": "to2", "attack": "pgd", "target": 2}, {"name": "rand", "attack": "pgd", "target": "random"}],
        "subgroups": {"half": {0: "a", "1": "a", 2: "b"}}})))
    assert [e.get("target") for e in cfg["eval"]["attacks"]] == ["every", 2, "random"]
    assert all(e["eps"] == 0.1 for e in cfg["eval"]["attacks"])        # inherited from the training attack
    assert cfg["eval"]["subgroups"] == {"half": {0: "a", "1": "a", 2: "b"}}
    assert flatten(cfg)["eval.subgroups.half.2"] == "b"
