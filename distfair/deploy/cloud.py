"""Cloud identities and network of a launcher config (``distfair cluster validate``): what the
nodes may do in the cloud account, and who reaches them.

What Ray 2.60's launcher does when a file says nothing (read in ``ray/autoscaler/_private/``):

- AWS (``aws/config.py``): ``_configure_iam_role`` gives a head without ``IamInstanceProfile``
  the profile ``ray-autoscaler-v1``, whose role has ``AmazonEC2FullAccess`` and
  ``AmazonS3FullAccess``; ``_configure_security_group`` gives every node type without
  ``SecurityGroupIds`` a group it creates with SSH (22) open to ``0.0.0.0/0``
  (``_create_default_ssh_inbound_rules``) plus the rules of ``provider.security_group``; a
  node type that names its groups gets no rule added, and ``provider.security_group`` is then
  not used at all. Nothing sets ``MetadataOptions``, so IMDSv1 (no session token) stays on.
- GCP (``gcp/config.py``): ``_configure_iam_role`` gives the head the service account
  ``ray-autoscaler-sa-v1`` with ``roles/compute.admin``, ``roles/storage.objectAdmin``,
  ``roles/iam.serviceAccountUser`` and the ``cloud-platform`` scope, unless the head's
  ``node_config`` names ``serviceAccounts`` (it overrides, ``commands.py`` merges the node
  type's ``node_config`` last); workers without ``serviceAccounts`` run as the project's
  Compute Engine default account. ``_configure_subnet`` puts node types without
  ``networkInterfaces`` on the project's first subnetwork (usually ``default``, whose
  ``default-allow-ssh`` rule admits 0.0.0.0/0).

The rules (each a problem, ``(key path, reason)``):

- AWS: every node type names an ``IamInstanceProfile`` (``Arn`` or ``Name``), the workers'
  not the head's; ``MetadataOptions.HttpTokens: required`` (IMDSv2) with a hop limit of at
  most 2, or the endpoint disabled; ``SecurityGroupIds`` (or ``NetworkInterfaces[].Groups``)
  on every node type; no ``provider.security_group`` (Ray ignores it once every node type
  names its groups); where one is given anyway, no SSH from ``0.0.0.0/0``/``::/0`` and no
  Ray port (8265, 6379, 10001) admitted from an address range at all, a VPC CIDR included:
  the cluster's own security group admits them (``UserIdGroupPairs``).
- GCP: every node type names ``serviceAccounts`` with an ``email`` that is neither the
  Compute Engine default account nor Ray's ``ray-autoscaler-sa-*``; the workers' is not the
  head's and has no ``cloud-platform`` scope; every node type names ``networkInterfaces``;
  ``scheduling`` is a mapping (GCE's ``Scheduling`` object), not a list.

Nothing of distfair but the problem helpers is imported; nothing reaches a network.
"""
from __future__ import annotations

import ipaddress

from distfair.deploy.problems import Problem, key_path

#: Ray's ports reached only from the cluster's own nodes (or through the SSH tunnel)
RAY_PORTS = {8265: "dashboard", 6379: "GCS", 10001: "Ray client"}
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
MAX_HOP_LIMIT = 2
_AWS_DOC = "cluster/README.md, \"Cloud identities and network\""


def cloud_problems(doc: dict) -> list[Problem]:
    """The identity and network problems of a launcher config (AWS and GCP; other providers
    have none). Parts of the wrong type are skipped: the schema reports those."""
    provider = doc.get("provider") if isinstance(doc.get("provider"), dict) else {}
    node_types = doc.get("available_node_types") if isinstance(doc.get("available_node_types"), dict) else {}
    head = doc.get("head_node_type")
    if provider.get("type") == "aws":
        return _aws_problems(provider, node_types, head)
    if provider.get("type") == "gcp":
        return _gcp_problems(node_types, head)
    return []


def _node_configs(node_types: dict):
    for name, spec in node_types.items():
        if isinstance(spec, dict):
            config = spec.get("node_config")
            yield name, config if isinstance(config, dict) else {}


# ----------------------------------------------------------------------------------------- AWS
def _profile(config: dict) -> str | None:
    value = config.get("IamInstanceProfile")
    if isinstance(value, dict):
        value = value.get("Arn") or value.get("Name")
    return value.strip() if isinstance(value, str) and value.strip() else None


def _aws_problems(provider: dict, node_types: dict, head) -> list[Problem]:
    problems: list[Problem] = []
    head_profile = _profile(node_types[head].get("node_config") or {}) \
        if isinstance(node_types.get(head), dict) and isinstance(node_types[head].get("node_config"), dict) else None
    every_type_has_groups = bool(node_types)
    for name, config in _node_configs(node_types):
        where = ["available_node_types", name, "node_config"]
        profile = _profile(config)
        if profile is None:
            reason = ("the head needs its own least-privilege instance profile: without one Ray's AWS bootstrap "
                      "gives it ray-autoscaler-v1, with AmazonEC2FullAccess and AmazonS3FullAccess "
                      "(ray/autoscaler/_private/aws/config.py _configure_iam_role)" if name == head else
                      "a worker needs its own instance profile (S3 on the storage prefix only), named here so "
                      "that what the nodes may do is written in the file")
            problems.append((key_path(where + ["IamInstanceProfile"]), f"{reason}; see {_AWS_DOC}"))
        elif name != head and profile == head_profile:
            problems.append((key_path(where + ["IamInstanceProfile"]),
                             "a worker has the head's instance profile, with the autoscaler's EC2 rights: give "
                             f"workers their own (S3 on the storage prefix only); see {_AWS_DOC}"))
        problems += _metadata_problems(config, where)
        if not _has_groups(config):
            every_type_has_groups = False
            problems.append((key_path(where + ["SecurityGroupIds"]),
                             "no security group named: Ray's AWS bootstrap then creates one that opens SSH (22) to "
                             "0.0.0.0/0 (aws/config.py _create_default_ssh_inbound_rules). Name a group of this "
                             "cluster's that admits SSH from your admin CIDR only and every port from itself"))
    group = provider.get("security_group")
    if group is not None and every_type_has_groups:
        problems.append(("provider.security_group",
                         "ignored by Ray when every node type names SecurityGroupIds (no rule of it is applied): "
                         "put the rules in the named group and remove this key"))
    if isinstance(group, dict) and isinstance(group.get("IpPermissions"), list):
        for i, rule in enumerate(group["IpPermissions"]):
            if isinstance(rule, dict):
                for reason in rule_exposure(rule):
                    problems.append((key_path(["provider", "security_group", "IpPermissions", i]), reason))
    return problems


def _metadata_problems(config: dict, where: list) -> list[Problem]:
    options = config.get("MetadataOptions")
    path = key_path(where + ["MetadataOptions"])
    if not isinstance(options, dict):
        return [(path + ".HttpTokens", "IMDSv2 is not required: set MetadataOptions: {HttpTokens: required, "
                                       "HttpPutResponseHopLimit: 1}, so that a request forged through a node "
                                       "(SSRF) cannot read the instance profile's credentials")]
    if str(options.get("HttpEndpoint", "enabled")).lower() == "disabled":
        return []
    problems = []
    if str(options.get("HttpTokens", "")).lower() != "required":
        problems.append((path + ".HttpTokens", f"must be 'required' (IMDSv2), got {options.get('HttpTokens')!r}"))
    hops = options.get("HttpPutResponseHopLimit")
    if hops is not None and (not isinstance(hops, int) or isinstance(hops, bool) or not 1 <= hops <= MAX_HOP_LIMIT):
        problems.append((path + ".HttpPutResponseHopLimit",
                         f"must be 1 (Ray's containers share the host's network, --net=host) or at most "
                         f"{MAX_HOP_LIMIT} (containers on a bridge network); got {hops!r}: a larger limit lets "
                         f"tokens travel further than the node"))
    return problems


def _has_groups(config: dict) -> bool:
    groups = config.get("SecurityGroupIds")
    if isinstance(groups, list) and any(isinstance(g, str) and g.strip() for g in groups):
        return True
    interfaces = config.get("NetworkInterfaces")
    return isinstance(interfaces, list) and bool(interfaces) and all(
        isinstance(i, dict) and isinstance(i.get("Groups"), list) and i["Groups"] for i in interfaces)


def rule_exposure(rule: dict) -> list[str]:
    """What an AWS ``IpPermissions`` rule opens too widely: SSH to the whole internet, or a Ray
    port to any address range (a VPC CIDR admits every host of the VPC; the cluster's own
    security group, ``UserIdGroupPairs``, admits its nodes only)."""
    protocol = str(rule.get("IpProtocol", "")).lower()
    low, high = rule.get("FromPort"), rule.get("ToPort")
    every = protocol in ("-1", "all") or low in (None, -1)
    if not every and isinstance(low, int) and not isinstance(high, int):
        high = low

    def covers(port):
        return every or (isinstance(low, int) and isinstance(high, int) and low <= port <= high)

    ranges = [r.get("CidrIp") for r in rule.get("IpRanges") or [] if isinstance(r, dict)]
    ranges += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges") or [] if isinstance(r, dict)]
    out = []
    for cidr in (c for c in ranges if isinstance(c, str)):
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue                                   # launcher._port_exposure reports it
        if covers(22) and network.prefixlen == 0:
            out.append(f"opens SSH (22) to {cidr}: admit SSH from your admin CIDR only")
        ports = [p for p in RAY_PORTS if covers(p)]
        if ports and network.prefixlen > 0 and network.is_private:     # wider ones: launcher._port_exposure
            names = ", ".join(f"{p} ({RAY_PORTS[p]})" for p in ports)
            out.append(f"admits port {names} from the address range {cidr}: Ray's ports are for the cluster's own "
                       f"nodes (a rule with UserIdGroupPairs naming the cluster's security group) and the SSH "
                       f"tunnel of `ray dashboard`, not a VPC CIDR or any other range")
    return out


# ----------------------------------------------------------------------------------------- GCP
def _accounts(config: dict) -> list:
    accounts = config.get("serviceAccounts")
    return accounts if isinstance(accounts, list) else []


def _gcp_problems(node_types: dict, head) -> list[Problem]:
    problems: list[Problem] = []
    head_emails = {a.get("email") for a in _accounts((node_types.get(head) or {}).get("node_config") or {})
                   if isinstance(a, dict)} if isinstance(node_types.get(head), dict) else set()
    for name, config in _node_configs(node_types):
        where = ["available_node_types", name, "node_config"]
        accounts = _accounts(config)
        emails = [a.get("email") for a in accounts if isinstance(a, dict)]
        if not accounts or not all(isinstance(e, str) and "@" in e for e in emails):
            reason = ("the head needs its own service account: without one Ray's GCP bootstrap gives it "
                      "ray-autoscaler-sa-v1 with roles/compute.admin and roles/storage.objectAdmin and the "
                      "cloud-platform scope (ray/autoscaler/_private/gcp/config.py _configure_iam_role)"
                      if name == head else
                      "a worker needs its own service account: without one it runs as the project's Compute "
                      "Engine default account (often an Editor)")
            problems.append((key_path(where + ["serviceAccounts"]),
                             f"{reason}; give serviceAccounts: [{{email: ..., scopes: [...]}}] (cluster/README.md)"))
            continue
        for i, account in enumerate(accounts):
            email = account.get("email", "") if isinstance(account, dict) else ""
            path = key_path(where + ["serviceAccounts", i, "email"])
            if email.endswith("-compute@developer.gserviceaccount.com"):
                problems.append((path, "the Compute Engine default service account (often an Editor): use a "
                                       "dedicated account for this role"))
            elif email.startswith("ray-autoscaler-sa-"):
                problems.append((path, "Ray's default account, which its bootstrap binds roles/compute.admin and "
                                       "roles/storage.objectAdmin: use a dedicated least-privilege account"))
            elif name != head and email in head_emails:
                problems.append((path, "a worker runs as the head's service account, with the autoscaler's "
                                       "compute rights: give workers their own"))
            scopes = account.get("scopes") if isinstance(account, dict) else None
            if name != head and isinstance(scopes, list) and any(str(s).rstrip("/") == CLOUD_PLATFORM
                                                                 for s in scopes):
                problems.append((key_path(where + ["serviceAccounts", i, "scopes"]),
                                 "the cloud-platform scope on a worker opens every Google API its account's roles "
                                 "allow: give the scopes it needs (devstorage.read_write for the storage bucket)"))
        if not isinstance(config.get("networkInterfaces"), list) or not config["networkInterfaces"]:
            problems.append((key_path(where + ["networkInterfaces"]),
                             "no network named: Ray puts the node on the project's first subnetwork (usually "
                             "`default`, whose default-allow-ssh rule admits 0.0.0.0/0); name the subnetwork of "
                             "this cluster's network, whose firewall admits SSH from your admin CIDR only"))
        if "scheduling" in config and not isinstance(config["scheduling"], dict):
            problems.append((key_path(where + ["scheduling"]),
                             "must be a mapping (GCE's Scheduling object, e.g. {onHostMaintenance: TERMINATE}), "
                             "not a list: the Compute API refuses the instance otherwise"))
    return problems
