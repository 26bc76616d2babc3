"""`distfair cluster validate`'s rules on cloud identities and network (distfair/deploy/cloud.py):
the shipped aws.yaml and gcp.yaml pass them, and each broken variant (one defect each) fails with
`file: key.path: reason` naming the key, exit 2. Offline: Ray is never started."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from distfair.deploy import cloud
from test_cluster import load, validate  # noqa: F401 - the same CLI wiring as the other cluster tests

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"


AWS_HEAD, AWS_WORKER = "ray.head.cpu", "ray.worker.gpu"
GCP_HEAD, GCP_WORKER = "ray_head_cpu", "ray_worker_gpu"


def _node(doc, name):
    return doc["available_node_types"][name]["node_config"]


def _rules(doc):
    return doc["provider"].setdefault("security_group", {"GroupName": "x", "IpPermissions": []})["IpPermissions"]


def _aws_key(name, *rest):
    return ".".join([f"available_node_types[{name}].node_config", *rest])


def _gcp_key(name, *rest):
    return ".".join([f"available_node_types.{name}.node_config", *rest])


# ------------------------------------------------------------------------------ the shipped files
def test_the_shipped_cloud_files_pass_the_cloud_rules():
    for name in ("aws.yaml", "gcp.yaml", "onprem.yaml"):
        assert cloud.cloud_problems(load(name)) == [], name


def test_aws_nodes_have_own_profiles_imdsv2_and_a_named_group():
    doc = load("aws.yaml")
    assert "security_group" not in doc["provider"]                   # Ray would ignore it anyway
    head, worker = _node(doc, AWS_HEAD), _node(doc, AWS_WORKER)
    assert head["IamInstanceProfile"]["Arn"].endswith(":instance-profile/distfair-ray-head")
    assert worker["IamInstanceProfile"]["Arn"].endswith(":instance-profile/distfair-ray-worker")
    for node in (head, worker):
        assert node["MetadataOptions"] == {"HttpEndpoint": "enabled", "HttpTokens": "required",
                                           "HttpPutResponseHopLimit": 1}
        assert node["SecurityGroupIds"] == ["sg-REPLACE-with-distfair-ray-group"]


def test_gcp_nodes_run_as_their_own_accounts_on_a_named_network():
    doc = load("gcp.yaml")
    head, worker = _node(doc, GCP_HEAD), _node(doc, GCP_WORKER)
    assert head["serviceAccounts"][0]["email"].startswith("distfair-ray-head@")
    assert worker["serviceAccounts"][0]["email"].startswith("distfair-ray-worker@")
    every_scope = head["serviceAccounts"][0]["scopes"] + worker["serviceAccounts"][0]["scopes"]
    assert cloud.CLOUD_PLATFORM not in every_scope
    assert worker["serviceAccounts"][0]["scopes"] == ["https://www.googleapis.com/auth/devstorage.read_write"]
    assert head["networkInterfaces"] == worker["networkInterfaces"]
    assert head["networkInterfaces"][0]["subnetwork"].endswith("/subnetworks/distfair")
    assert worker["scheduling"] == {"onHostMaintenance": "TERMINATE"}


def _statements(name):
    return json.loads((CLUSTER / "aws-iam" / name).read_text())["Statement"]


def test_the_aws_policies_are_least_privilege():
    head, worker = _statements("head-policy.json"), _statements("worker-policy.json")
    actions = lambda statements: {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str)
                                                                  else s["Action"])}
    # workers: S3 on the storage prefix only
    assert {a.split(":")[0] for a in actions(worker)} == {"s3"}
    assert all(s["Resource"] in ("arn:aws:s3:::BUCKET", "arn:aws:s3:::BUCKET/PREFIX/*") for s in worker)
    # the head: no wildcard action; EC2 writes only on this cluster's tag; PassRole on the worker role only
    assert not any("*" in a for a in actions(head))
    assert all(s["Effect"] == "Allow" for s in head + worker)
    for statement in head:
        writes = [a for a in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
                  if not a.startswith(("ec2:Describe", "s3:"))]
        if statement["Resource"] == "*":
            assert not writes, statement                                 # only Describe* on every resource
        if "ec2:TerminateInstances" in writes:
            assert statement["Condition"] == {"StringEquals": {"aws:ResourceTag/ray-cluster-name": "CLUSTER_NAME"}}
        if writes == ["iam:PassRole"]:
            assert statement["Resource"].endswith(":role/distfair-ray-worker")
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:DescribeInstances", "iam:PassRole"} <= actions(head)
    trust = json.loads((CLUSTER / "aws-iam" / "ec2-trust.json").read_text())["Statement"]
    assert trust == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]


def test_the_readme_creates_what_the_files_name():
    readme = (CLUSTER / "README.md").read_text()
    section = readme.split("## Cloud identities and network")[1].split("\n## ")[0]
    for needed in ("distfair-ray-head", "distfair-ray-worker", "cluster/aws-iam/", "head-policy.json",
                   "worker-policy.json", "ec2-trust.json", "ADMIN_CIDR", "--source-group", "HttpTokens",
                   "distfair-ray-head@", "--target-service-accounts", "roles/compute.instanceAdmin.v1"):
        assert needed in section, needed
    assert "--cidr \"$ADMIN_CIDR\"" in section and "--source-ranges $ADMIN_CIDR" in section


# ------------------------------------------------------------------------------ broken variants
BROKEN = {
    # name: (shipped file, mutation, expected key path, reason fragment)
    "aws_head_without_profile": ("aws.yaml", lambda d: _node(d, AWS_HEAD).pop("IamInstanceProfile"),
                                 _aws_key(AWS_HEAD, "IamInstanceProfile"), "AmazonEC2FullAccess"),
    "aws_worker_without_profile": ("aws.yaml", lambda d: _node(d, AWS_WORKER).pop("IamInstanceProfile"),
                                   _aws_key(AWS_WORKER, "IamInstanceProfile"), "its own instance profile"),
    "aws_worker_with_head_profile": ("aws.yaml", lambda d: _node(d, AWS_WORKER).update(
        IamInstanceProfile=copy.deepcopy(_node(d, AWS_HEAD)["IamInstanceProfile"])),
        _aws_key(AWS_WORKER, "IamInstanceProfile"), "the head's instance profile"),
    "aws_head_without_metadata_options": ("aws.yaml", lambda d: _node(d, AWS_HEAD).pop("MetadataOptions"),
                                          _aws_key(AWS_HEAD, "MetadataOptions", "HttpTokens"),
                                          "IMDSv2 is not required"),
    "aws_worker_imdsv1_optional": ("aws.yaml", lambda d: _node(d, AWS_WORKER).update(
        MetadataOptions={"HttpTokens": "optional", "HttpPutResponseHopLimit": 1}),
        _aws_key(AWS_WORKER, "MetadataOptions", "HttpTokens"), "must be 'required'"),
    "aws_hop_limit_too_high": ("aws.yaml", lambda d: _node(d, AWS_HEAD).update(
        MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 3}),
        _aws_key(AWS_HEAD, "MetadataOptions", "HttpPutResponseHopLimit"), "got 3"),
    "aws_worker_without_security_group": ("aws.yaml", lambda d: _node(d, AWS_WORKER).pop("SecurityGroupIds"),
                                          _aws_key(AWS_WORKER, "SecurityGroupIds"), "opens SSH (22) to 0.0.0.0/0"),
    "aws_head_empty_security_groups": ("aws.yaml", lambda d: _node(d, AWS_HEAD).update(SecurityGroupIds=[]),
                                       _aws_key(AWS_HEAD, "SecurityGroupIds"), "no security group named"),
    "aws_ignored_provider_security_group": ("aws.yaml", lambda d: _rules(d),
                                            "provider.security_group", "ignored by Ray"),
    "aws_ssh_open_to_world": ("aws.yaml", lambda d: _rules(d).append(
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}),
        "provider.security_group.IpPermissions[0]", "opens SSH (22) to 0.0.0.0/0"),
    "aws_dashboard_open_to_vpc_cidr": ("aws.yaml", lambda d: _rules(d).append(
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "172.31.0.0/16"}]}),
        "provider.security_group.IpPermissions[0]", "admits port 8265 (dashboard) from the address range 172.31.0.0/16"),
    "aws_dashboard_open_to_world": ("aws.yaml", lambda d: _rules(d).append(
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}),
        "provider.security_group.IpPermissions[0]", "opens port 8265 (dashboard) to 0.0.0.0/0"),
    "aws_gcs_range_open_to_vpc": ("aws.yaml", lambda d: _rules(d).append(
        {"IpProtocol": "tcp", "FromPort": 6000, "ToPort": 7000, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}),
        "provider.security_group.IpPermissions[0]", "6379 (GCS)"),
    "gcp_head_without_service_account": ("gcp.yaml", lambda d: _node(d, GCP_HEAD).pop("serviceAccounts"),
                                         _gcp_key(GCP_HEAD, "serviceAccounts"), "roles/compute.admin"),
    "gcp_worker_without_service_account": ("gcp.yaml", lambda d: _node(d, GCP_WORKER).pop("serviceAccounts"),
                                           _gcp_key(GCP_WORKER, "serviceAccounts"), "Compute Engine default"),
    "gcp_worker_cloud_platform_scope": ("gcp.yaml", lambda d: _node(d, GCP_WORKER)["serviceAccounts"][0].update(
        scopes=[cloud.CLOUD_PLATFORM]), _gcp_key(GCP_WORKER, "serviceAccounts[0]", "scopes"), "cloud-platform scope"),
    "gcp_worker_as_head_account": ("gcp.yaml", lambda d: _node(d, GCP_WORKER)["serviceAccounts"][0].update(
        email=_node(d, GCP_HEAD)["serviceAccounts"][0]["email"]),
        _gcp_key(GCP_WORKER, "serviceAccounts[0]", "email"), "the head's service account"),
    "gcp_default_compute_account": ("gcp.yaml", lambda d: _node(d, GCP_WORKER)["serviceAccounts"][0].update(
        email="123456789-compute@developer.gserviceaccount.com"),
        _gcp_key(GCP_WORKER, "serviceAccounts[0]", "email"), "Compute Engine default service account"),
    "gcp_rays_default_account": ("gcp.yaml", lambda d: _node(d, GCP_HEAD)["serviceAccounts"][0].update(
        email="ray-autoscaler-sa-v1@my-gcp-project.iam.gserviceaccount.com"),
        _gcp_key(GCP_HEAD, "serviceAccounts[0]", "email"), "Ray's default account"),
    "gcp_without_network": ("gcp.yaml", lambda d: _node(d, GCP_WORKER).pop("networkInterfaces"),
                            _gcp_key(GCP_WORKER, "networkInterfaces"), "default-allow-ssh"),
    "gcp_scheduling_as_list": ("gcp.yaml", lambda d: _node(d, GCP_WORKER).update(
        scheduling=[{"onHostMaintenance": "TERMINATE"}]), _gcp_key(GCP_WORKER, "scheduling"), "must be a mapping"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_cloud_file_names_the_key_and_exits_2(capsys, tmp_path, name):
    source, mutate, key, fragment = BROKEN[name]
    doc = copy.deepcopy(load(source))
    mutate(doc)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = validate(capsys, str(path))
    assert (code, out) == (2, "")
    problems = err.splitlines()[:-1]
    assert err.splitlines()[-1].startswith("error: ")
    assert all(re.match(rf"^{re.escape(str(path))}: \S+.*: \S", line) for line in problems), err
    matching = [line for line in problems if line.startswith(f"{path}: {key}: ")]
    assert matching, f"no problem at {key}:\n{err}"
    assert any(fragment in line for line in matching), err


@pytest.mark.parametrize("options", [
    {"HttpEndpoint": "disabled"},                                     # no metadata service at all
    {"HttpTokens": "required"},                                       # AWS's default hop limit (1)
    {"HttpTokens": "required", "HttpPutResponseHopLimit": 2},         # containers on a bridge network
])
def test_imds_settings_that_pass(options):
    doc = load("aws.yaml")
    _node(doc, AWS_WORKER)["MetadataOptions"] = options
    assert cloud.cloud_problems(doc) == []


def test_groups_through_network_interfaces_count_and_group_rules_pass():
    doc = load("aws.yaml")
    worker = _node(doc, AWS_WORKER)
    worker.pop("SecurityGroupIds")
    worker["NetworkInterfaces"] = [{"DeviceIndex": 0, "SubnetId": "subnet-1", "Groups": ["sg-1"]}]
    assert cloud.cloud_problems(doc) == []
    assert cloud.rule_exposure({"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-1"}]}) == []
    assert cloud.rule_exposure({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                                "IpRanges": [{"CidrIp": "203.0.113.0/24"}]}) == []
