"""What a configuration run and its seed runs record about themselves (issues 13 and 14):
the seed-stability figure and the Markdown summary on the configuration run, distinct names
for repeated runs, the experiment's model-training type, reproducibility metadata and the
configuration's identity on seed runs. A real SQLite MLflow store, no Ray: the run layer is
called where every seed already finished (nothing to train) or with no seed at all."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from distfair import tracking
from distfair import plotting as plots
from distfair.experiment import run
from distfair.config import load_config
from distfair.metrics import aggregate_seed_metrics, summarize

PNG = b"\x89PNG\r\n\x1a\n"
#: values planted in the environment that must never reach the store
SECRETS = {"MLFLOW_TRACKING_PASSWORD": "pw-9f1c2e", "MLFLOW_TRACKING_TOKEN": "tok-5a7d31",
           "AWS_ACCESS_KEY_ID": "AKIA7QX2EXAMPLE", "AWS_SECRET_ACCESS_KEY": "sk-3b8e0d-example"}


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one costs seconds); each test its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/m.db"


@pytest.fixture
def cfg(tmp_path, write_config, tiny_cfg_dict):
    tiny_cfg_dict["description"] = "Sy-FAR on the tiny set."
    tiny_cfg_dict["eval"]["subgroups"] = {"half": {0: "a", 1: "a", 2: "b"}}
    return load_config(write_config(tiny_cfg_dict))


def _finished_configuration(uri: str, cfg: dict, seeds_metrics: dict[int, dict], *, lookup: dict,
                            experiment: str) -> str:
    """A configuration run found again by ``lookup`` whose seed runs all FINISHED with these
    metrics: the run layer then trains nothing (no Ray) and only summarises."""
    exp = tracking.prepare_experiment(uri, experiment)
    parent = tracking.start_parent_run(uri, exp, {}, run_name="trial-1 lr=0.1", lookup=lookup,
                                       description=run.run_description(cfg))
    client = MlflowClient(uri)
    for seed, metrics in seeds_metrics.items():
        child = tracking.get_or_create_seed_run(uri, exp, parent, seed)
        for name, value in metrics.items():
            client.log_metric(child, name, value)
        client.set_terminated(child, "FINISHED")
    return parent


def _summarise(uri: str, cfg: dict, path: Path, lookup: dict, experiment: str) -> run.RunReport:
    return run.run_configuration_with_tracking(cfg, config_path=str(path), experiment=experiment, tracking_uri=uri,
                                               storage_path=path.parent / "store", log=lambda _: None,
                                               lookup=lookup, init_paths={}, references={})


SEEDS = {0: {"clean_acc": 0.91, "robust_acc": 0.52, "worst_class_acc": 0.31, "acc_gap": 0.40, "nsd": 0.12,
             "group_gap/half": 0.05, "train_loss": 0.7},
         1: {"clean_acc": 0.88, "robust_acc": 0.49, "worst_class_acc": 0.35, "acc_gap": 0.33, "nsd": 0.10,
             "group_gap/half": 0.07, "train_loss": 0.6},
         2: {"clean_acc": 0.90, "robust_acc": 0.55, "worst_class_acc": 0.28, "acc_gap": 0.45, "nsd": 0.15,
             "group_gap/half": 0.02, "train_loss": 0.8}}


def test_configuration_run_gets_figure_and_summary_in_its_description(uri, tmp_path, cfg):
    cfg["seeds"] = [0, 1, 2]
    lookup = {"distfair.sweep_run": "s1", "distfair.trial_id": "t1"}
    parent = _finished_configuration(uri, cfg, SEEDS, lookup=lookup, experiment="summary")
    report = _summarise(uri, cfg, tmp_path / "tiny.yaml", lookup, "summary")
    assert report.parent_run_id == parent and report.seeds == [0, 1, 2] and not report.errors

    client = MlflowClient(uri)
    figures = {a.path for a in client.list_artifacts(parent, "plots")}
    assert figures == {tracking.SEED_STABILITY_FIGURE}
    local = client.download_artifacts(parent, tracking.SEED_STABILITY_FIGURE, str(tmp_path))
    assert Path(local).read_bytes()[:8] == PNG

    note = client.get_run(parent).data.tags[tracking.TAG_DESCRIPTION]
    assert note.startswith(run.SUMMARY_HEADING)                       # the summary first: where the UI page opens
    assert note.endswith("\n\nSy-FAR on the tiny set.")                  # the text it was created with, below it
    assert tracking.SEED_STABILITY_FIGURE in note
    rows = {line.split("|")[1].strip(): line for line in note.splitlines() if line.startswith("| ")}
    # the main metrics only, in their order (train_loss is no headline)
    assert list(rows)[1:] == ["clean_acc", "robust_acc", "worst_class_acc", "acc_gap", "nsd", "group_gap/half"]
    values = np.array([SEEDS[s]["worst_class_acc"] for s in SEEDS])
    s = summarize(list(values))
    assert rows["worst_class_acc"] == (f"| worst_class_acc | {values.mean():.4f} ± {values.std(ddof=1):.4f} | 3 | "
                                       f"[{s['ci95_low']:.4f}, {s['ci95_high']:.4f}] |")
    assert "Failed seeds" not in note

    # summarised again (a resumed sweep): the summary is replaced, not appended twice
    _summarise(uri, cfg, tmp_path / "tiny.yaml", lookup, "summary")
    again = client.get_run(parent).data.tags[tracking.TAG_DESCRIPTION]
    assert again.count(run.SUMMARY_HEADING) == 1 and again == note


def test_dataset_notice_stays_in_the_description(uri, tmp_path, cfg):
    from distfair.data import DATASET_NOTICES

    exp = tracking.prepare_experiment(uri, "notice")
    notice = DATASET_NOTICES["spoken_words"]
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p", description=f"words\n\n{notice}")
    summary = aggregate_seed_metrics([SEEDS[0], SEEDS[1]])
    section = run.summary_markdown(summary, ["clean_acc"], seeds=[0, 1], planned=[0, 1], errors={}, figure=None)
    tracking.log_parent_summary(uri, parent, summary, n_seeds=2, description=section)
    note = MlflowClient(uri).get_run(parent).data.tags[tracking.TAG_DESCRIPTION]
    assert note.startswith(run.SUMMARY_HEADING) and note.endswith(f"\n\nwords\n\n{notice}")


def test_summary_markdown_lists_failed_seeds_and_one_seed_has_no_spread():
    summary = aggregate_seed_metrics([{"clean_acc": 0.9}])
    text = run.summary_markdown(summary, ["clean_acc"], seeds=[0], planned=[0, 1, 2],
                                errors={1: "worker died | OOM\nafter epoch 2", 2: "no finished MLflow run"},
                                figure=tracking.SEED_STABILITY_FIGURE)
    assert "1 of 3 seeds finished (0)" in text
    assert "| clean_acc | 0.9000 | 1 | n/a |" in text                    # no std, no interval with one seed
    assert "- seed 1: worker died \\| OOM after epoch 2" in text          # one line, the pipe escaped
    assert "- seed 2: no finished MLflow run" in text


def test_main_metrics_are_bounded_and_ordered():
    names = ["train_loss", "nsd", "clean_acc", "robust_acc", "acc_gap", "worst_class_acc", "clean_worst_class_acc",
             "max_asym_gap", *[f"group_gap/attr{i}" for i in range(9)], "auc_acc", "defense_parity/accent"]
    shown = run.main_metrics(names)
    assert shown[:7] == ["clean_acc", "robust_acc", "clean_worst_class_acc", "worst_class_acc", "acc_gap", "nsd",
                         "max_asym_gap"]
    assert len(shown) == run.MAX_MAIN_METRICS and shown[7] == "group_gap/attr0" and "train_loss" not in shown


def test_seed_stability_figure_draws_every_seed_and_the_intervals(tmp_path):
    values = {"clean_acc": {0: 0.9, 1: 0.8, 7: 0.85}, "acc_gap": {0: 0.3, 1: 0.4, 7: 0.2}}
    stats = {m: summarize(list(v.values())) for m, v in values.items()}
    path = plots.seed_stability(values, stats, "t", tmp_path / "s.png")
    assert path.read_bytes()[:8] == PNG
    one = plots.seed_stability({"clean_acc": {3: 0.9}}, {"clean_acc": summarize([0.9])}, "t", tmp_path / "one.png")
    assert one.is_file()                                                 # one seed: no spread, still a figure
    with pytest.raises(ValueError, match="stats: no statistics for acc_gap"):
        plots.seed_stability(values, {"clean_acc": stats["clean_acc"]}, "t", tmp_path / "x.png")
    with pytest.raises(ValueError, match="values: need at least one metric"):
        plots.seed_stability({}, {}, "t", tmp_path / "x.png")


def test_experiments_are_model_training_experiments(uri, tmp_path):
    client = MlflowClient(uri)
    new = tracking.prepare_experiment(uri, "new")
    assert client.get_experiment(new).tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"
    old = client.create_experiment("recorded_before")                   # an older distfair's experiment
    assert tracking.TAG_EXPERIMENT_KIND not in client.get_experiment(old).tags
    assert tracking.prepare_experiment(uri, "recorded_before") == old
    assert client.get_experiment(old).tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"
    chosen = client.create_experiment("chosen", tags={tracking.TAG_EXPERIMENT_KIND: "genai_development"})
    tracking.prepare_experiment(uri, "chosen")                           # someone's own choice is kept
    assert client.get_experiment(chosen).tags[tracking.TAG_EXPERIMENT_KIND] == "genai_development"


def test_next_run_name_numbers_repeats_of_one_configuration(uri, tmp_path):
    exp = tracking.prepare_experiment(uri, "names")

    def start(name: str, digest: str = "abc") -> str:
        return tracking.start_parent_run(uri, exp, {}, run_name=name, tags={"distfair.config_hash": digest})

    assert tracking.next_run_name(uri, exp, "tiny-abc", "abc") == "tiny-abc"
    start("tiny-abc")
    start("other-abc")                            # same configuration, another file name: its own count
    start("tiny-abc", digest="def")               # same name, other configuration: not counted
    assert tracking.next_run_name(uri, exp, "tiny-abc", "abc") == "tiny-abc #2"
    second = start("tiny-abc #2")
    start("tiny-abc #3")
    MlflowClient(uri).delete_run(second)          # a deleted number is never given again
    assert tracking.next_run_name(uri, exp, "tiny-abc", "abc") == "tiny-abc #4"


def test_repeated_run_of_one_configuration_gets_a_new_name(uri, tmp_path, cfg, monkeypatch):
    """Through the run layer (no seed: nothing to train): the second configuration run of
    the same file and configuration is "#2"; both record their resolved config and metadata.
    Credentials in the environment appear nowhere in the record."""
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    cfg["seeds"] = []
    path = tmp_path / "tiny.yaml"
    first = run.run_configuration_with_tracking(cfg, config_path=str(path), experiment="repeat", tracking_uri=uri,
                                                storage_path=tmp_path / "store", log=lambda _: None,
                                                init_paths={}, references={})
    second = run.run_configuration_with_tracking(cfg, config_path=str(path), experiment="repeat", tracking_uri=uri,
                                                 storage_path=tmp_path / "store", log=lambda _: None,
                                                 init_paths={}, references={},
                                                 parent_run_name=f"tiny-named-{run.config_hash(cfg)[:8]}",
                                                 extra_tags={"distfair.configuration": "named"})
    third = run.run_configuration_with_tracking(cfg, config_path=str(path), experiment="repeat", tracking_uri=uri,
                                                storage_path=tmp_path / "store", log=lambda _: None,
                                                init_paths={}, references={})
    client = MlflowClient(uri)
    names = [client.get_run(r.parent_run_id).info.run_name for r in (first, second, third)]
    base = f"tiny-{run.config_hash(cfg)[:8]}"
    assert names == [base, f"tiny-named-{run.config_hash(cfg)[:8]}", f"{base} #2"]

    parent = client.get_run(first.parent_run_id)
    tags = parent.data.tags
    assert tags["distfair.config_file"] == str(path) and tags["distfair.version.mlflow"]
    versions = {f"distfair.version.{p}" for p in run.VERSIONED_PACKAGES} | {"distfair.version", "distfair.python"}
    assert versions <= set(tags)
    assert tags.get("distfair.git_commit") == tags.get("mlflow.source.git.commit") == run.git_state()[0]
    assert "Sy-FAR on the tiny set." in tags[tracking.TAG_DESCRIPTION]
    config = yaml.safe_load(open(client.download_artifacts(first.parent_run_id, run.CONFIG_ARTIFACT, str(tmp_path))))
    assert config == cfg                          # the resolved configuration, read back as it was

    _assert_no_secret(client, [r.parent_run_id for r in (first, second, third)], tmp_path / "dl")


def _assert_no_secret(client: MlflowClient, run_ids: list[str], dest: Path) -> None:
    for run_id in run_ids:
        data = client.get_run(run_id).data
        text = json.dumps([data.params, data.tags])
        dest.mkdir(exist_ok=True)
        local = Path(client.download_artifacts(run_id, "", str(dest / run_id)))
        text += "".join(p.read_bytes().decode("latin-1") for p in local.rglob("*") if p.is_file())
        for key, value in SECRETS.items():
            assert value not in text, (run_id, key)


def test_seed_runs_carry_the_configuration_identity_and_metadata(uri, tmp_path, cfg, monkeypatch):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    exp = tracking.prepare_experiment(uri, "seeds")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p")
    configuration_tags = {"distfair.config_hash": "abc123", "distfair.config_file": "tiny.yaml",
                          "distfair.configuration": "named", "distfair.sweep_run": "s1", "distfair.trial_id": "t7",
                          "distfair.trial_params": json.dumps({"train.lr": 0.05}),
                          "mlflow.parentRunId": "the-sweep", "unrelated": "x"}
    children = run.open_seed_runs(uri, exp, parent, cfg, [0, 3], configuration_tags=configuration_tags)
    assert run.open_seed_runs(uri, exp, parent, cfg, [3], configuration_tags=configuration_tags) == {3: children[3]}
    client = MlflowClient(uri)
    for seed, run_id in children.items():
        child = client.get_run(run_id)
        tags, params = child.data.tags, child.data.params
        assert tags["mlflow.parentRunId"] == parent and tags["distfair.seed"] == str(seed)   # its own parent
        for key in ("distfair.config_hash", "distfair.config_file", "distfair.configuration", "distfair.sweep_run",
                    "distfair.trial_id", "distfair.trial_params"):
            assert tags[key] == configuration_tags[key]
        assert "unrelated" not in tags and tags["distfair.version"] and tags["distfair.version.torch"]
        # the resolved values as params: the searched ones (train.lr) filter seeds by configuration
        assert params["seed"] == str(seed) and params["train.lr"] == "0.05" and "seeds" not in params
        config = yaml.safe_load(open(client.download_artifacts(run_id, run.CONFIG_ARTIFACT, str(tmp_path / run_id))))
        assert config["seeds"] == [seed] and config["defense"] == cfg["defense"]      # reruns exactly this seed
    _assert_no_secret(client, list(children.values()), tmp_path / "dl")


def test_git_state_by_default_is_this_checkouts_commit():
    """Without an argument it looks at the checkout holding the installed package (here, this
    repository): the module's own folder moved once and the tag silently went missing."""
    root = Path(run.__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert run.git_state()[0] == head


def test_git_state_of_a_checkout_and_of_no_checkout(tmp_path, monkeypatch):
    package = tmp_path / "repo" / "distfair"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    assert run.git_state(package) == (None, None)                        # not a checkout
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = package.parent
    env = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    subprocess.run(["git", "-C", str(repo), *env, "commit", "-qm", "x"], check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert run.git_state(package) == (head, False)
    (repo / "mlflow.db").write_text("")                                  # untracked: still clean
    assert run.git_state(package) == (head, False)
    (package / "__init__.py").write_text("x = 1\n")
    assert run.git_state(package) == (head, True)
    # a package inside some other repository (a venv in a project) is not that repository's commit
    nested = repo / "venv" / "site" / "distfair"
    nested.mkdir(parents=True)
    assert run.git_state(nested) == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))                # git missing: no failure
    assert run.git_state(package) == (None, None)
