"""`distfair cluster validate`: every shipped cluster definition passes; broken ones (generated
from the shipped files, one defect each) give `file: key.path: reason` and exit 2. Fast: Ray is
imported for its packaged launcher schema and offline checks, never started."""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import re
from pathlib import Path

import pytest
import yaml

from distfair import deploy as cluster
from distfair.deploy import common as cluster_common
from distfair.deploy import gpu as cluster_gpu
from distfair.deploy import kuberay as cluster_kuberay
from distfair.deploy import launcher as cluster_launcher
from distfair.deploy import problems as cluster_problems

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
SHIPPED = sorted({*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")})


def validate(capsys, *files: str) -> tuple[int, str, str]:
    """Run the `cluster validate` handler exactly as the CLI wires it (through add_subparser)."""
    parser = argparse.ArgumentParser(prog="distfair")
    cluster.add_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cluster", "validate", *files])
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def write(tmp_path: Path, name: str, doc) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False) if not isinstance(doc, str) else doc)
    return str(path)


# ------------------------------------------------------------------------- shipped files
def test_the_shipped_definitions_are_there():
    names = {str(p.relative_to(CLUSTER)) for p in SHIPPED}
    assert {"aws.yaml", "gcp.yaml", "onprem.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"} <= names


def test_every_shipped_file_validates(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, err = validate(capsys)                     # default: every YAML under cluster/
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(p.relative_to(ROOT)) for p in SHIPPED]
    assert all(": ok: " in line for line in lines), out
    assert "Ray 2.60.0's schema" in out and "KubeRay v1.7.0 CRD schema (strict)" in out


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_each_shipped_file_validates_by_name(capsys, path):
    code, out, err = validate(capsys, str(path))
    assert (code, err) == (0, ""), err
    assert out.startswith(f"{path}: ok: ")


def test_shipped_launcher_configs_keep_the_safe_defaults():
    """What the rules check, spelled out on the shipped files themselves."""
    for name in ("aws.yaml", "gcp.yaml"):
        doc = load(name)
        head = doc["available_node_types"][doc["head_node_type"]]
        assert head["resources"][cluster_common.TRIAL_RESOURCE] >= 1
        workers = [t for n, t in doc["available_node_types"].items() if n != doc["head_node_type"]]
        assert workers and all(t["resources"].get("GPU", 0) >= 1 and t["resources"]["CPU"] >= 1 for t in workers)
        assert all(0 <= t["min_workers"] <= t["max_workers"] for t in workers)
    onprem = load("onprem.yaml")
    assert onprem["provider"]["type"] == "local" and onprem["provider"]["head_ip"] and onprem["provider"]["worker_ips"]
    for name in ("aws.yaml", "gcp.yaml", "onprem.yaml"):
        text = (CLUSTER / name).read_text()
        assert "0.0.0.0/0" not in text.split("\ncluster_name")[1]        # only the comments may name it
        assert "/mnt/distfair" in text and "pip install" in text and "RAY_AUTH_MODE=token" in text


def test_kuberay_credentials_come_from_secrets():
    for name in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        doc = load(name)
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
        for group in groups:
            container = group["template"]["spec"]["containers"][0]
            env = {e["name"]: e for e in container["env"]}
            assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(env)
            assert all("value" not in e and e["valueFrom"]["secretKeyRef"]["name"] for e in env.values())
            assert any(v.get("persistentVolumeClaim") for v in group["template"]["spec"]["volumes"])
        worker = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
        assert worker["limits"]["nvidia.com/gpu"] == worker["requests"]["nvidia.com/gpu"] == "1"
        assert spec["authOptions"]["mode"] == "token" and spec["headGroupSpec"]["serviceType"] == "ClusterIP"


# ------------------------------------------------------------------------- broken corpus
def _aws_worker(doc):
    return doc["available_node_types"]["ray.worker.gpu"]


def _rules(doc):
    """The IpPermissions of ``provider.security_group``, made if the file has none (the shipped
    aws.yaml names its own group instead): one rule, SSH from an admin range."""
    group = doc["provider"].setdefault("security_group", {"GroupName": "ray-autoscaler-distfair", "IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.0/24"}]}]})
    return group["IpPermissions"]


def _rc_worker(doc):
    return doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


def _rj_worker(doc):
    return doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


BROKEN = {
    # name: (shipped file, mutation, expected key path, reason fragment)
    "typo_top_level_key": ("aws.yaml", lambda d: d.update(max_worker=d.pop("max_workers")),
                           "max_worker", "unknown key (did you mean 'max_workers'?)"),
    "typo_node_type_key": ("aws.yaml", lambda d: _aws_worker(d).update(min_worker=_aws_worker(d).pop("min_workers")),
                           "available_node_types[ray.worker.gpu].min_worker", "did you mean 'min_workers'?"),
    "typo_provider_key": ("aws.yaml", lambda d: d["provider"].update(use_internal_ip=True), "provider.use_internal_ip",
                          "unknown key for provider aws (did you mean 'use_internal_ips'?)"),
    "typo_docker_key": ("gcp.yaml", lambda d: d["docker"].update(imagee="x"),
                        "docker.imagee", "unknown key (did you mean 'image'?)"),
    "wrong_type_max_workers": ("aws.yaml", lambda d: d.update(max_workers="four"),
                               "max_workers", "expected integer, got string 'four'"),
    "wrong_type_commands": ("gcp.yaml", lambda d: d.update(setup_commands="pip install -e ~/distfair"),
                            "setup_commands", "expected array, got string"),
    "wrong_type_resources": ("aws.yaml", lambda d: _aws_worker(d)["resources"].update(GPU="one"),
                             "available_node_types[ray.worker.gpu].resources.GPU", "expected integer"),
    "worker_type_without_resources": ("aws.yaml", lambda d: _aws_worker(d).update(resources={}),
                                      "available_node_types[ray.worker.gpu].resources",
                                      "a worker type without resources"),
    "worker_type_resources_missing": ("gcp.yaml",
                                      lambda d: d["available_node_types"]["ray_worker_gpu"].pop("resources"),
                                      "available_node_types.ray_worker_gpu.resources", "required key missing"),
    "open_dashboard_port": ("aws.yaml", lambda d: _rules(d).append(
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}),
        "provider.security_group.IpPermissions[1]", "opens port 8265 (dashboard) to 0.0.0.0/0 (the whole internet)"),
    "open_range_covering_gcs": ("aws.yaml", lambda d: _rules(d).append(
        {"IpProtocol": "tcp", "FromPort": 6000, "ToPort": 7000, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}),
        "provider.security_group.IpPermissions[1]", "opens port 6379 (GCS) to ::/0"),
    "open_all_traffic": ("aws.yaml", lambda d: _rules(d).append(
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}),
        "provider.security_group.IpPermissions[1]", "8265 (dashboard), 6379 (GCS), 10001 (Ray client)"),
    "dashboard_open_to_public_range": ("aws.yaml", lambda d: _rules(d)[0].update(
        FromPort=8265, ToPort=8265, IpRanges=[{"CidrIp": "52.94.76.0/24"}]),
        "provider.security_group.IpPermissions[0]", "outside the private network"),
    "head_without_trial_resource": ("gcp.yaml", lambda d: d["available_node_types"]["ray_head_cpu"]["resources"].pop(
                                        "distfair_trial"),
                                    "available_node_types.ray_head_cpu.resources.distfair_trial",
                                    "the head must declare the `distfair_trial` resource"),
    "onprem_head_without_trial_resource": ("onprem.yaml", lambda d: d.update(head_start_ray_commands=[
        c.replace("--resources='{\"distfair_trial\": 1000}'", "") for c in d["head_start_ray_commands"]]),
        "head_start_ray_commands", "must declare the `distfair_trial` resource"),
    "no_token_auth_on_workers": ("gcp.yaml", lambda d: d.update(
        setup_commands=[c for c in d["setup_commands"] if "RAY_AUTH_MODE" not in c],
        worker_start_ray_commands=[c.replace("export RAY_AUTH_MODE=token", "export X=1")
                                   for c in d["worker_start_ray_commands"]]),
        "worker_start_ray_commands", "token auth is not on for the worker's `ray start`"),
    "token_auth_disabled": ("aws.yaml",
                            lambda d: d["head_start_ray_commands"].insert(0, "export RAY_AUTH_MODE=disabled"),
                            "head_start_ray_commands[0]", "RAY_AUTH_MODE=disabled turns Ray's token auth off"),
    "launcher_literal_credential": ("onprem.yaml", lambda d: d["setup_commands"].append(
        "echo 'export MLFLOW_TRACKING_PASSWORD=hunter2' >> ~/.bashrc"),
        f"setup_commands[{len(load('onprem.yaml')['setup_commands'])}]", "MLFLOW_TRACKING_PASSWORD is written literally"),
    # the Ray token: the cluster's own, and private (issue 28 §8)
    "token_folder_shared_by_every_cluster": ("aws.yaml", lambda d: d["file_mounts"].update(
        {"~/.distfair-cluster": "~/.distfair-cluster"}),
        "file_mounts[~/.distfair-cluster]", "comes from ~/.distfair-cluster, a folder that does not name this cluster"),
    "ray_default_token_mounted": ("gcp.yaml", lambda d: d["file_mounts"].update({"~/.ray": "~/.ray"}),
                                  "file_mounts[~/.ray]", "the Ray token ~/.ray/auth_token comes from ~/.ray"),
    "token_generated_world_readable": ("onprem.yaml", lambda d: d["setup_commands"].append(
        "ray get-auth-token --generate > ~/.distfair-cluster/auth_token"),
        f"setup_commands[{len(load('onprem.yaml')['setup_commands'])}]",
        "writes a Ray token file without restricting its mode"),
    "token_teed_on_a_node_type": ("aws.yaml", lambda d: _aws_worker(d)["worker_setup_commands"].append(
        'echo "$RAY_TOKEN" | tee ~/.ray/auth_token'),
        f"available_node_types[ray.worker.gpu].worker_setup_commands"
        f"[{len(load('aws.yaml')['available_node_types']['ray.worker.gpu']['worker_setup_commands'])}]",
        "writes a Ray token file without restricting its mode"),
    "image_with_another_ray": ("aws.yaml", lambda d: d["docker"].update(image="rayproject/ray:2.50.0-py311-gpu"),
                               "docker.image", "the image has Ray 2.50.0, but distfair pins ray 2.60.0"),
    # Ray's own prepare_config / validate_config
    "ray_head_type_not_a_node_type": ("aws.yaml", lambda d: d.update(head_node_type="ray.head.gpu"),
                                      "head_node_type", "must be one of `available_node_types`"),
    "ray_min_workers_over_max": ("aws.yaml", lambda d: _aws_worker(d).update(min_workers=9, max_workers=9),
                                 "max_workers", "smaller than the sum of `min_workers`"),
    "ray_onprem_without_head_ip": ("onprem.yaml", lambda d: d["provider"].pop("head_ip"),
                                   "provider.head_ip", "Please supply a `head_ip`"),
    # KubeRay manifests
    "kuberay_unknown_key": ("kuberay/raycluster.yaml",
                            lambda d: d["spec"]["headGroupSpec"].update(serviceTyp="ClusterIP"),
                            "spec.headGroupSpec.serviceTyp", "unknown key (did you mean 'serviceType'?)"),
    "kuberay_unknown_key_in_pod": ("kuberay/raycluster.yaml", lambda d: _rc_worker(d).update(volumeMount=[]),
                                   "spec.workerGroupSpecs[0].template.spec.containers[0].volumeMount",
                                   "unknown key (did you mean 'volumeMounts'?)"),
    "kuberay_unknown_key_in_metadata": ("kuberay/rayjob.yaml", lambda d: d["metadata"].update(lables={"a": "b"}),
                                        "metadata.lables", "unknown key (did you mean 'labels'?)"),
    "kuberay_unknown_key_in_job": ("kuberay/rayjob.yaml", lambda d: d["spec"].update(entrypiont="x"),
                                   "spec.entrypiont", "did you mean 'entrypoint'?"),
    "kuberay_wrong_type": ("kuberay/raycluster.yaml",
                           lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplicas="4"),
                           "spec.workerGroupSpecs[0].maxReplicas", "expected integer, got string '4'"),
    "kuberay_wrong_enum": ("kuberay/raycluster.yaml", lambda d: d["spec"]["authOptions"].update(mode="on"),
                           "spec.authOptions.mode", "must be one of disabled, token"),
    "kuberay_literal_credential": ("kuberay/raycluster.yaml", lambda d: _rc_worker(d)["env"].append(
        {"name": "MLFLOW_TRACKING_PASSWORD", "value": "hunter2"}),
        "spec.workerGroupSpecs[0].template.spec.containers[0].env[3].value",
        "MLFLOW_TRACKING_PASSWORD is a credential written literally: take it from a Secret"),
    "kuberay_password_in_uri": ("kuberay/rayjob.yaml", lambda d: _rj_worker(d)["env"].__setitem__(
        0, {"name": "MLFLOW_TRACKING_URI", "value": "http://user:pw@mlflow:5000"}),
        "spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].env[0].value",
        "holds a password in its URI"),
    "kuberay_literal_credential_in_runtime_env": ("kuberay/rayjob.yaml", lambda d: d["spec"].update(
        runtimeEnvYAML="env_vars:\n  MLFLOW_TRACKING_TOKEN: abc123\n"),
        "spec.runtimeEnvYAML.env_vars.MLFLOW_TRACKING_TOKEN", "a credential written literally"),
    "kuberay_worker_group_without_resources": ("kuberay/raycluster.yaml", lambda d: _rc_worker(d).pop("resources"),
                                               "spec.workerGroupSpecs[0].template.spec.containers[0].resources.limits",
                                               "a worker group without resources"),
    "kuberay_dashboard_exposed": ("kuberay/rayjob.yaml", lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].update(
                                      serviceType="LoadBalancer"),
                                  "spec.rayClusterSpec.headGroupSpec.serviceType",
                                  "LoadBalancer exposes the dashboard"),
    "kuberay_no_token_auth": ("kuberay/raycluster.yaml", lambda d: d["spec"].pop("authOptions"),
                              "spec.authOptions.mode", "token auth is not on"),
    "kuberay_head_without_trial_resource": ("kuberay/raycluster.yaml",
                                            lambda d: d["spec"]["headGroupSpec"]["resources"].pop("distfair_trial"),
                                            "spec.headGroupSpec.resources.distfair_trial",
                                            "must declare the `distfair_trial` resource"),
    "kuberay_other_ray_version": ("kuberay/rayjob.yaml",
                                  lambda d: d["spec"]["rayClusterSpec"].update(rayVersion="2.55.0"),
                                  "spec.rayClusterSpec.rayVersion", "'2.55.0', but distfair pins ray 2.60.0"),
    "kuberay_min_over_max_replicas": ("kuberay/raycluster.yaml",
                                      lambda d: d["spec"]["workerGroupSpecs"][0].update(minReplicas=5),
                                      "spec.workerGroupSpecs[0].minReplicas", "5 is greater than maxReplicas 4"),
    "kuberay_wrong_api_version": ("kuberay/raycluster.yaml", lambda d: d.update(apiVersion="ray.io/v1alpha1"),
                                  "apiVersion", "RayCluster must be ray.io/v1"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_file_gives_file_key_reason_and_exit_2(capsys, tmp_path, name):
    source, mutate, key, fragment = BROKEN[name]
    doc = copy.deepcopy(load(source))
    mutate(doc)
    path = write(tmp_path, name, doc)
    code, out, err = validate(capsys, path)
    assert code == 2
    assert out == ""
    problems = err.splitlines()[:-1]
    assert err.splitlines()[-1].startswith("error: ")
    assert all(re.match(rf"^{re.escape(path)}: \S+.*: \S", line) for line in problems), err
    matching = [line for line in problems if line.startswith(f"{path}: {key}: ")]
    assert matching, f"no problem at {key}:\n{err}"
    assert any(fragment in line for line in matching), err


@pytest.mark.parametrize("command", [
    "(umask 077 && ray get-auth-token --generate > ~/.distfair-cluster/auth_token)",
    "umask 0077; echo \"$RAY_TOKEN\" | tee ~/.ray/auth_token >/dev/null",
    "cp /mnt/secrets/token ~/.ray/auth_token && chmod 600 ~/.ray/auth_token",
    "echo 'export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/.distfair-cluster/auth_token' >> ~/.bashrc",
])
def test_a_token_written_private_or_only_named_passes(command):
    doc = load("onprem.yaml")
    doc["setup_commands"].append(command)
    assert [p for p in cluster_launcher.launcher_rules(doc) if "token" in p[1]] == []


LAUNCHERS = ("aws.yaml", "gcp.yaml", "onprem.yaml")


def test_each_launcher_config_has_its_own_token_folder():
    names = [load(f)["cluster_name"] for f in LAUNCHERS]
    assert len(set(names)) == len(names)
    for name, file in zip(names, LAUNCHERS):
        assert load(file)["file_mounts"]["~/.distfair-cluster"] == f"~/.distfair-cluster/{name}"


def _recipe(text: str) -> str:
    """The shell recipe in a file's header comment that makes the cluster's token folder."""
    lines = [line.removeprefix("#").strip() for line in text.splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("(umask 077"))
    end = next(i for i in range(start, len(lines)) if lines[i].endswith("mlflow.env)"))
    return "\n".join(lines[start:end + 1])


def test_the_token_recipes_write_a_private_token_per_cluster(tmp_path):
    """Each launcher config's recipe, run as written (HOME a temporary folder, the shell's umask
    022): a folder per cluster, 0700, with a token of Ray's form and the MLflow file, both 0600;
    no two clusters share a token; nothing written to ~/.ray. No recipe, here or in
    cluster/README.md, uses `ray get-auth-token --generate` to write the file any more."""
    import subprocess

    home = tmp_path / "home"
    home.mkdir()
    tokens = {}
    for file in LAUNCHERS:
        text = (CLUSTER / file).read_text()
        assert "get-auth-token --generate >" not in text
        name = load(file)["cluster_name"]
        subprocess.run(["bash", "-c", "umask 022\n" + _recipe(text)], check=True, env={"HOME": str(home),
                       "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
        folder = home / ".distfair-cluster" / name
        assert (folder.stat().st_mode & 0o777, (folder / "auth_token").stat().st_mode & 0o777,
                (folder / "mlflow.env").stat().st_mode & 0o777) == (0o700, 0o600, 0o600), file
        tokens[name] = (folder / "auth_token").read_text()
        assert re.fullmatch(r"[0-9a-f]{64}", tokens[name]), tokens[name]
        assert f"RAY_AUTH_TOKEN_PATH=~/.distfair-cluster/{name}/auth_token" in text
    assert len(set(tokens.values())) == len(LAUNCHERS)
    assert not (home / ".ray").exists()
    assert "get-auth-token --generate >" not in (CLUSTER / "README.md").read_text()


def test_the_broken_corpus_covers_what_the_issue_names():
    reasons = " ".join(fragment for *_, fragment in BROKEN.values())
    for what in ("unknown key", "expected integer", "a worker type without resources", "opens port 8265",
                 "unknown key (did you mean 'serviceType'?)", "written literally"):
        assert what in reasons


def test_every_problem_is_reported_at_once_across_files(capsys, tmp_path):
    doc = load("aws.yaml")
    doc["max_worker"] = doc.pop("max_workers")
    _aws_worker(doc)["resources"] = {}
    _rules(doc).append(
        {"IpProtocol": "tcp", "FromPort": 10001, "ToPort": 10001, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]})
    bad_aws = write(tmp_path, "aws", doc)
    manifest = load("kuberay/raycluster.yaml")
    manifest["spec"]["headGroupSpec"]["serviceTyp"] = "ClusterIP"
    manifest["spec"]["workerGroupSpecs"][0]["replicas"] = "1"
    bad_rc = write(tmp_path, "rc", manifest)
    good = str(CLUSTER / "gcp.yaml")
    code, out, err = validate(capsys, bad_aws, good, bad_rc)
    assert code == 2
    assert out == f"{good}: ok: Ray cluster launcher config (provider gcp): Ray 2.60.0's schema and " \
                  f"prepare_config/validate_config, distfair's rules\n"
    lines = err.splitlines()
    assert [line.split(": ")[1] for line in lines[:-1]] == [
        "max_worker", "available_node_types[ray.worker.gpu].resources", "provider.security_group.IpPermissions[1]",
        "provider.security_group", "spec.headGroupSpec.serviceTyp", "spec.workerGroupSpecs[0].replicas"]
    assert lines[-1] == "error: 6 problem(s) in 2 of 3 file(s)"


# ------------------------------------------- warnings: GPU nodes' driver, the locked install
UNLOCKED = "pip install --no-cache-dir -e ~/distfair"


def _gcp_worker(doc):
    return doc["available_node_types"]["ray_worker_gpu"]


def _gcp_image(doc, family, node="ray_worker_gpu"):
    disk = doc["available_node_types"][node]["node_config"]["disks"][0]
    disk["initializeParams"]["sourceImage"] = f"projects/deeplearning-platform-release/global/images/family/{family}"


def _unlock_aws(doc):
    doc["setup_commands"][0] = UNLOCKED
    _aws_worker(doc)["worker_setup_commands"][0] = UNLOCKED


WARNED = {
    # name: (shipped file, mutation, [(expected key path, reason fragment), ...] -- exactly these)
    "aws_gpu_without_image_id": ("aws.yaml", lambda d: _aws_worker(d)["node_config"].pop("ImageId"), [
        ("available_node_types[ray.worker.gpu].node_config.ImageId",
         "a GPU node type without an ImageId starts from Ray's default AMI (Deep Learning AMI V71.0, CUDA 11.2)")]),
    "aws_gpu_latest_dlami": ("aws.yaml", lambda d: _aws_worker(d)["node_config"].update(ImageId="latest_dlami"), [
        ("available_node_types[ray.worker.gpu].node_config.ImageId", "needs NVIDIA driver >= 580")]),
    "aws_gpu_instance_type_only": ("aws.yaml", lambda d: (_aws_worker(d)["node_config"].pop("ImageId"),
                                                          _aws_worker(d)["resources"].pop("GPU")), [
        ("available_node_types[ray.worker.gpu].node_config.ImageId", "a GPU node type without an ImageId")]),
    "gcp_cu124_family_on_gpu_node": ("gcp.yaml", lambda d: _gcp_image(d, "common-cu124"), [
        ("available_node_types.ray_worker_gpu.node_config.disks[0].initializeParams.sourceImage",
         "a node with GPUs on common-cu124 gets the NVIDIA driver of a CUDA 12.4 image, older than 580: the CUDA 13 "
         "build of torch that distfair pins needs NVIDIA driver >= 580")]),
    "gcp_driver_570_family": ("gcp.yaml", lambda d: _gcp_image(d, "common-cu128-ubuntu-2204-nvidia-570"), [
        ("available_node_types.ray_worker_gpu.node_config.disks[0].initializeParams.sourceImage",
         "gets NVIDIA driver 570: the CUDA 13 build of torch that distfair pins needs NVIDIA driver >= 580")]),
    "gcp_cu118_by_resources_only": ("gcp.yaml", lambda d: (_gcp_image(d, "common-cu118"),
                                                           _gcp_worker(d)["node_config"].pop("guestAccelerators")), [
        ("available_node_types.ray_worker_gpu.node_config.disks[0].initializeParams.sourceImage", "CUDA 11.8")]),
    "onprem_install_without_lock": ("onprem.yaml", lambda d: d["setup_commands"].__setitem__(
        2, "~/distfair-venv/bin/pip install --no-cache-dir -e ~/distfair"), [
        ("setup_commands[2]", "installs distfair without requirements.lock: pip resolves its dependencies anew")]),
    "aws_install_without_lock": ("aws.yaml", _unlock_aws, [
        ("setup_commands[0]", "installs distfair without requirements.lock"),
        ("available_node_types[ray.worker.gpu].worker_setup_commands[0]",
         "installs distfair without requirements.lock")]),
    "gcp_lock_without_no_deps": ("gcp.yaml", lambda d: d["head_setup_commands"].append(
        "pip install -e ~/distfair"), [
        ("head_setup_commands[1]", "installs distfair after requirements.lock without --no-deps")]),
    "lock_installed_after_distfair": ("onprem.yaml", lambda d: d["setup_commands"].__setitem__(
        2, "pip install --no-deps -e ~/distfair && pip install -r ~/distfair/requirements.lock"), [
        ("setup_commands[2]", "installs distfair without requirements.lock")]),
    "gpu_type_commands_skip_the_install": ("gcp.yaml", lambda d: _gcp_worker(d)["worker_setup_commands"].pop(0), [
        ("available_node_types.ray_worker_gpu.worker_setup_commands",
         "Ray runs this list on the node type instead of setup_commands and worker_setup_commands, and it lacks "
         "setup_commands[0]")]),
}


@pytest.mark.parametrize("name", sorted(WARNED))
def test_a_warning_is_file_key_reason_and_keeps_exit_0(capsys, tmp_path, name):
    source, mutate, expected = WARNED[name]
    doc = copy.deepcopy(load(source))
    mutate(doc)
    path = write(tmp_path, name, doc)
    code, out, err = validate(capsys, path)
    assert code == 0, err
    assert out.startswith(f"{path}: ok: ")
    lines = err.splitlines()
    assert len(lines) == len(expected), err                  # exactly these warnings, nothing else
    for line, (key, fragment) in zip(lines, expected):
        assert line.startswith(f"{path}: {key}: warning: "), err
        assert fragment in line, err


def test_the_shipped_launcher_configs_have_no_warning():
    for name in ("aws.yaml", "gcp.yaml", "onprem.yaml"):
        assert cluster_gpu.launcher_warnings(load(name)) == [], name


def test_no_warning_where_no_gpu_or_nothing_can_be_told(capsys, tmp_path):
    doc = load("gcp.yaml")
    _gcp_image(doc, "common-cu124", node="ray_head_cpu")               # a CPU node: the driver does not matter
    _gcp_image(doc, "my-own-image")                                   # nothing to tell from the name
    aws = load("aws.yaml")
    aws["available_node_types"]["ray.head.cpu"]["node_config"].pop("ImageId", None)   # the CPU head: Ray's AMI
    _aws_worker(aws)["node_config"]["ImageId"] = "ami-0123456789abcdef0"
    code, out, err = validate(capsys, write(tmp_path, "gcp", doc), write(tmp_path, "aws", aws))
    assert (code, err) == (0, ""), err
    assert out.count(": ok: ") == 2


def test_warnings_do_not_count_as_problems(capsys, tmp_path):
    doc = load("aws.yaml")
    _aws_worker(doc)["node_config"].pop("ImageId")
    doc["max_worker"] = doc.pop("max_workers")
    path = write(tmp_path, "aws", doc)
    code, out, err = validate(capsys, path)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert [line.split(": ")[1] for line in lines[:-1]] == [
        "max_worker", "available_node_types[ray.worker.gpu].node_config.ImageId"]
    assert ": warning: " in lines[1]
    assert lines[-1] == "error: 1 problem(s) in 1 of 1 file(s)"


def test_the_warning_rules_take_any_shape_of_node_config():
    """node_config is open in Ray's schema: the warning rules skip what they cannot read."""
    odd = {"provider": {"type": "gcp"}, "setup_commands": "pip install -e ~/distfair", "available_node_types": {
        "a": {"resources": {"GPU": 1}, "node_config": {"disks": 5}},
        "b": {"resources": "x", "node_config": {"guestAccelerators": [1], "disks": [
            {"initializeParams": "x"}, "y", {"initializeParams": {"sourceImage": 7}}]}},
        "c": "z", "d": {"node_config": [], "worker_setup_commands": "pip"}}}
    assert cluster_gpu.launcher_warnings(odd) == []
    aws = {"provider": {"type": "aws"}, "head_setup_commands": {}, "setup_commands": [1, None, "pip install -e"],
           "available_node_types": {"a": {"resources": {"GPU": "x"}, "node_config": {"InstanceType": 5, "ImageId": {}}}}}
    assert cluster_gpu.launcher_warnings(aws) == []


@pytest.mark.parametrize("command, installs", [
    ("pip install --no-cache-dir -e ~/distfair", [([], {"~/distfair"}, False)]),
    ("pip install --no-cache-dir -r ~/distfair/requirements.lock && pip install --no-cache-dir --no-deps -e ~/distfair",
     [(["~/distfair/requirements.lock"], set(), False), ([], {"~/distfair"}, True)]),
    ("~/venv/bin/pip install --requirement=req.lock --editable=/home/ray/distfair/ --no-deps",
     [(["req.lock"], {"/home/ray/distfair/"}, True)]),
    ("python -m pip install 'distfair[dev]' -c c.txt; echo done", [([], {"distfair[dev]"}, False)]),
    ("pip install 'boto3>=1.4.8'", [([], {"boto3>=1.4.8"}, False)]),
    ("python -c \"import pip; print('pip install -e ~/distfair')\"", []),
    ("echo 'unbalanced", []),
])
def test_pip_installs_are_read_like_the_shell(command, installs):
    assert cluster_gpu._pip_installs(command) == installs


def test_gpu_node_types_check_their_gpu_after_the_full_setup():
    """Ray runs a node type's own worker_setup_commands instead of setup_commands: the GPU types
    repeat every setup command (the same strings, through YAML aliases), then check torch's GPU."""
    for name, gpu_type in (("aws.yaml", "ray.worker.gpu"), ("gcp.yaml", "ray_worker_gpu")):
        doc = load(name)
        own = doc["available_node_types"][gpu_type]["worker_setup_commands"]
        assert own[:-1] == doc["setup_commands"] and doc["worker_setup_commands"] == []
        assert "torch.cuda.is_available()" in own[-1] and "needs NVIDIA driver >= 580" in own[-1]
        assert "requirements.lock" in own[0] and "--no-deps -e ~/distfair" in own[0]
        head = doc["available_node_types"][doc["head_node_type"]]
        assert "worker_setup_commands" not in head and "GPU" not in head["resources"]


@pytest.mark.parametrize("name", ["aws.yaml", "onprem.yaml"])
def test_the_gpu_check_fails_the_setup_with_one_line(tmp_path, name):
    """The check itself, run by bash as Ray runs it, on a GPU node whose torch sees no GPU:
    a fake nvidia-smi reports an old driver, and CUDA_VISIBLE_DEVICES hides any real GPU."""
    import os
    import subprocess
    import sys

    doc = load(name)
    if name == "aws.yaml":
        command = _aws_worker(doc)["worker_setup_commands"][-1]
    else:
        command = next(c for c in doc["setup_commands"] if "torch.cuda.is_available()" in c)
        command = command.replace("~/distfair-venv/bin/python", "python")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')   # this venv's python
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    if name == "onprem.yaml":                     # no nvidia-smi: a CPU host, nothing checked
        done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 550.54.15\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    torch = importlib.metadata.version("torch")                  # 2.15.0 (torch.__version__ adds +cu132)
    assert done.returncode == 1 and done.stdout == ""
    assert re.fullmatch(rf"distfair: GPU node setup( on \S+)?: torch {re.escape(torch)}\S* cannot use the "
                        rf"GPU \(NVIDIA driver 550\.54\.15\); needs NVIDIA driver >= 580\n", done.stderr), done.stderr


@pytest.mark.parametrize("text, key, fragment", [
    ("provider: [\n", "line 2", "invalid YAML"),      # the line where the parser gave up
    ("", "(file)", "empty file"),
    ("just: a mapping\n", "(top level)", "neither a Ray cluster launcher config"),
    ("apiVersion: v1\nkind: Secret\nmetadata: {name: distfair-mlflow}\nstringData: {password: hunter2}\n",
     "stringData", "credentials in a manifest"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "metadata.name", "required key missing"),
])
def test_files_that_are_not_valid_definitions(capsys, tmp_path, text, key, fragment):
    path = write(tmp_path, "odd", text)
    code, _, err = validate(capsys, path)
    assert code == 2
    assert f"{path}: {key}: " in err and fragment in err


def test_a_missing_file(capsys, tmp_path):
    path = str(tmp_path / "nope.yaml")
    code, _, err = validate(capsys, path)
    assert code == 2 and f"{path}: (file): cannot read: No such file or directory" in err


def test_discovery_skips_yaml_that_is_no_cluster_definition(capsys, tmp_path, monkeypatch):
    (tmp_path / "cluster" / "mlflow").mkdir(parents=True)
    (tmp_path / "cluster" / "mlflow" / "compose.yaml").write_text("services: {mlflow: {image: x}}\n")
    (tmp_path / "cluster" / "aws.yaml").write_text((CLUSTER / "aws.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    code, out, err = validate(capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "cluster/aws.yaml: ok: Ray cluster launcher config (provider aws): Ray 2.60.0's schema and "
        "prepare_config/validate_config, distfair's rules",
        "cluster/mlflow/compose.yaml: skipped: neither a Ray cluster launcher config nor a Kubernetes manifest"]


def test_help_says_what_is_checked(capsys):
    parser = argparse.ArgumentParser(prog="distfair")
    cluster.add_subparser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["cluster", "validate", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for what in ("ray-schema.json", "distfair/deploy/schemas/kuberay", "distfair_trial", "8265", "exit codes"):
        assert what in text
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["cluster"])                   # a subcommand is required
    assert exit_.value.code == 2


# ---------------------------------------------------------------------------- machinery
def test_validation_never_starts_ray(capsys):
    import ray

    if ray.is_initialized():             # the suite's shared instance (tests/conftest.py)
        pytest.skip("a Ray instance is already up in this process")
    validate(capsys, *map(str, SHIPPED))
    assert not ray.is_initialized()


def test_the_trial_resource_is_the_one_sweeps_take():
    source = (ROOT / "distfair" / "distributed" / "sweep.py").read_text()
    assert re.search(r'^TRIAL_RESOURCE = "([^"]+)"', source, re.M).group(1) == cluster_common.TRIAL_RESOURCE


def test_the_kuberay_schemas_say_where_they_come_from():
    for kind, file in cluster_kuberay.KUBERAY_SCHEMAS.items():
        raw = json.loads((cluster_kuberay.SCHEMA_DIR / file).read_text())
        source = raw["_source"]
        assert source["repository"] == "ray-project/kuberay" and source["kind"] == kind
        assert re.fullmatch(r"v\d+\.\d+\.\d+", source["release"]) and source["version"] == "v1"
        assert source["file"].startswith("ray-operator/config/crd/bases/ray.io_")
        assert "spec" in raw["properties"]


def test_closing_object_schemas_is_strict_but_leaves_values_and_open_objects_alone():
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "string", "enum": ["x"]}}},
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"c": {}}},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
        "list": {"type": "array", "items": {"properties": {"d": {}}}},
        "default": {"default": {"properties": {"e": 1}}}}}
    closed = cluster_problems.close_object_schemas(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["open"]
    assert closed["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert closed["properties"]["list"]["items"]["additionalProperties"] is False
    assert closed["properties"]["default"]["default"] == {"properties": {"e": 1}}
    assert "additionalProperties" not in schema                    # the input is not changed
    problems = cluster_problems.schema_problems(closed, {"a": {"b": "x", "bb": 1}, "open": {"z": 1},
                                                         "map": {"k": "v"}, "list": [{"d": 1, "dd": 2}]})
    assert problems == [("a.bb", "unknown key (did you mean 'b'?)"), ("list[0].dd", "unknown key (did you mean 'd'?)")]


@pytest.mark.parametrize("rule, exposed", [
    ({"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}, False),
    ({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, False),
    ({"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, True),
    ({"IpProtocol": "-1", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, True),
    ({"IpProtocol": "tcp", "FromPort": 10001, "ToPort": 10001, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}, True),
    ({"IpProtocol": "tcp", "FromPort": 6379, "ToPort": 6379, "IpRanges": [{"CidrIp": "18.130.0.7/32"}]}, True),
    ({"IpProtocol": "tcp", "FromPort": 6379, "ToPort": 6379, "UserIdGroupPairs": [{"GroupId": "sg-1"}]}, False),
])
def test_which_security_group_rules_expose_rays_ports(rule, exposed):
    assert bool(cluster_launcher._port_exposure(rule)) is exposed


def test_key_paths_read_like_the_file():
    assert cluster_problems.key_path(["available_node_types", "ray.worker.gpu", "resources", "GPU"]) == \
        "available_node_types[ray.worker.gpu].resources.GPU"
    assert cluster_problems.key_path(["spec", "workerGroupSpecs", 0, "template"]) == \
        "spec.workerGroupSpecs[0].template"
    assert cluster_problems.key_path(["limits", "nvidia.com/gpu"]) == "limits[nvidia.com/gpu]"
    assert cluster_problems.key_path([]) == "(top level)"


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_the_shared_storage_is_the_clusters_group_only_never_world_writable(name):
    """Issue 28 §2: Tune's state and trial error files on the storage are unpickled, so the
    launcher files give it to a group of the cluster's own (mode 2770), added to the container."""
    cfg = yaml.safe_load((CLUSTER / name).read_text())
    commands = " ".join(cfg["initialization_commands"])
    assert "chmod 2770 /mnt/distfair" in commands and "chown root:2770 /mnt/distfair" in commands
    assert re.findall(r"chmod \S+", commands) == ["chmod 2770"], commands          # nothing world-writable
    assert "--group-add=2770" in cfg["docker"]["run_options"]
