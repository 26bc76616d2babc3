"""The warnings of ``distfair cluster validate`` about GPU nodes and how nodes install distfair.

distfair pins the CUDA 13 build of torch (PyPI's Linux x86_64 torch 2.15.0 is ``+cu132``), which
runs only on an NVIDIA driver >= 580 (:data:`MIN_DRIVER`); the driver is the node's, not the
container's. From a launcher config alone some nodes can be told to miss it, and some installs
to skip the lock file:

- an AWS GPU node type (``resources.GPU`` > 0, or a p*/g* GPU instance type) without an
  ``ImageId``: Ray then starts it from its default AMI (``ray/autoscaler/_private/aws/config.py``
  ``DEFAULT_AMI``: Deep Learning AMI (Ubuntu 18.04) V71.0, CUDA 11.2), whose driver is too old;
- a GCP node with accelerators whose ``sourceImage`` names a driver below 580
  (``...-nvidia-570``) or, naming none, a CUDA 11/12 Deep Learning VM family (``common-cu124``
  carries driver 550);
- a setup command that installs distfair without ``requirements.lock`` (or after it without
  ``--no-deps``): pip then resolves the dependencies anew on each node;
- a node type's own ``worker_setup_commands`` that lacks one of ``setup_commands`` (or of the
  global ``worker_setup_commands``): Ray runs that list *instead of* both on the node type
  (``ray/autoscaler/ray-schema.json``; ``StandardAutoscaler._get_node_type_specific_fields``).

Warnings never change the exit code. Each is ``(path, reason)`` with ``path`` a list of keys
(``distfair.deploy.validate`` turns it into ``a.b[0]``). Nothing of distfair is imported here.
"""
from __future__ import annotations

import re
import shlex

MIN_DRIVER = 580
LOCK_FILE = "requirements.lock"
LOCKED_INSTALL = ("pip install --no-cache-dir -r ~/distfair/requirements.lock && "
                  "pip install --no-cache-dir --no-deps -e ~/distfair")
_NEEDS = (f"the CUDA 13 build of torch that distfair pins needs NVIDIA driver >= {MIN_DRIVER} "
          f"(docs/operations/gpu-nodes.md)")
#: AWS instance families with NVIDIA GPUs (p2..p6, g3..g6e, gr6; g4ad has AMD GPUs)
_AWS_GPU_TYPE = re.compile(r"^(?!g4ad\.)(p\d+[a-z]*(-[a-z0-9]+)?|gr?\d+[a-z]*)\.", re.I)
_GCP_DRIVER = re.compile(r"nvidia-(\d{3})\b")
_GCP_CUDA = re.compile(r"\bcu(1[12])(\d)\b")
#: pip options that take a value (so that the value is not read as what is installed)
_PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i", "--index-url",
                      "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix", "--root", "--src",
                      "--cache-dir", "--log", "--timeout", "--retries", "--python-version", "--platform"}
_SHELL_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}


def _positive(value) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def _commands(node: dict, key: str, path: list) -> list[tuple[list, str]]:
    value = node.get(key)
    return [(path + [key, i], c) for i, c in enumerate(value) if isinstance(c, str)] if isinstance(value, list) else []


def launcher_warnings(doc: dict) -> list[tuple[list, str]]:
    """Every warning for a Ray cluster launcher config (parts of the wrong type are skipped)."""
    provider = doc.get("provider") if isinstance(doc.get("provider"), dict) else {}
    node_types = doc.get("available_node_types") if isinstance(doc.get("available_node_types"), dict) else {}
    found: list[tuple[list, str]] = []
    for name, spec in node_types.items():
        if not isinstance(spec, dict):
            continue
        path = ["available_node_types", name, "node_config"]
        config = spec.get("node_config") if isinstance(spec.get("node_config"), dict) else {}
        gpus = isinstance(spec.get("resources"), dict) and _positive(spec["resources"].get("GPU"))
        if provider.get("type") == "aws" and (gpus or _AWS_GPU_TYPE.match(str(config.get("InstanceType", "")))):
            if str(config.get("ImageId") or "").strip().lower() in ("", "latest_dlami"):
                found.append((path + ["ImageId"], (
                    f"warning: a GPU node type without an ImageId starts from Ray's default AMI (Deep Learning AMI "
                    f"V71.0, CUDA 11.2), whose NVIDIA driver is older than {MIN_DRIVER}: {_NEEDS}; pin an AWS Deep "
                    f"Learning Base OSS Nvidia Driver GPU AMI of this region, as cluster/aws.yaml does")))
        if provider.get("type") == "gcp" and (gpus or config.get("guestAccelerators")):
            disks = config.get("disks") if isinstance(config.get("disks"), list) else []
            for i, disk in enumerate(disks):
                params = disk.get("initializeParams") if isinstance(disk, dict) else None
                image = params.get("sourceImage") if isinstance(params, dict) else None
                reason = _gcp_image_reason(image) if isinstance(image, str) else None
                if reason:
                    found.append((path + ["disks", i, "initializeParams", "sourceImage"], reason))
    found += _install_warnings(doc, node_types)
    return found


def _gcp_image_reason(image: str) -> str | None:
    name = image.rsplit("/", 1)[-1]
    driver, cuda = _GCP_DRIVER.search(name), _GCP_CUDA.search(name)
    if driver and int(driver.group(1)) < MIN_DRIVER:
        what = f"NVIDIA driver {driver.group(1)}"
    elif not driver and cuda:
        what = f"the NVIDIA driver of a CUDA {cuda.group(1)}.{cuda.group(2)} image, older than {MIN_DRIVER}"
    else:
        return None
    return (f"warning: a node with GPUs on {name} gets {what}: {_NEEDS}; use a Deep Learning VM family with "
            f"driver >= {MIN_DRIVER}, e.g. common-cu129-ubuntu-2204-nvidia-580")


def _pip_installs(command: str) -> list[tuple[list[str], set[str], bool]]:
    """Each ``pip install`` in a shell command: (requirement files, what it installs, --no-deps)."""
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return []
    simple, current = [], []
    for token in tokens + [";"]:
        if token in _SHELL_SEPARATORS:
            simple, current = simple + [current], []
        else:
            current.append(token)
    found = []
    for words in simple:
        at = next((i for i, w in enumerate(words[:-1]) if w.rsplit("/", 1)[-1] in ("pip", "pip3")
                   or (w == "-m" and words[i + 1] == "pip")), None)
        if at is None or "install" not in words[at:]:
            continue
        args = words[words.index("install", at) + 1:]
        files, targets, no_deps, i = [], set(), False, 0
        while i < len(args):
            word, value = args[i], None
            option, _, inline = word.partition("=")
            if word.startswith("-r") and word != "-r" and not word.startswith("--"):
                option, inline = "-r", word[2:]
            if option in _PIP_VALUE_OPTIONS:
                value = inline or (args[i + 1] if i + 1 < len(args) else "")
                i += 0 if inline else 1
            if option in ("-r", "--requirement"):
                files.append(value)
            elif option in ("-e", "--editable") or not word.startswith("-"):
                targets.add(value if value is not None else word)
            no_deps = no_deps or word == "--no-deps"
            i += 1
        found.append((files, targets, no_deps))
    return found


def _installs_distfair(targets: set[str]) -> bool:
    return any(t.rstrip("/").rsplit("/", 1)[-1] == "distfair" or re.match(r"^distfair(\[|[=<>!~ ]|$)", t)
               for t in targets)


def _install_warnings(doc: dict, node_types: dict) -> list[tuple[list, str]]:
    """distfair installed without the lock file, on each list of setup commands a node runs."""
    common = _commands(doc, "setup_commands", [])
    runs = [common + _commands(doc, "head_setup_commands", []), common + _commands(doc, "worker_setup_commands", [])]
    found: list[tuple[list, str]] = []
    for name, spec in node_types.items():
        if isinstance(spec, dict) and isinstance(spec.get("worker_setup_commands"), list):
            path = ["available_node_types", name]
            own = _commands(spec, "worker_setup_commands", path)
            runs.append(own)
            missing = [f"{key}[{i}]" for (key, i), c in runs[1] if c not in {text for _, text in own}]
            if missing:
                found.append((path + ["worker_setup_commands"], (
                    f"warning: Ray runs this list on the node type instead of setup_commands and "
                    f"worker_setup_commands, and it lacks {', '.join(missing)}: repeat them here (a YAML "
                    f"alias, *name, keeps both the same)")))
    for commands in runs:
        locked = False
        for path, command in commands:
            for files, targets, no_deps in _pip_installs(command):
                locked = locked or any(f.rsplit("/", 1)[-1] == LOCK_FILE for f in files)
                if not _installs_distfair(targets):
                    continue
                if not locked:
                    reason = (f"warning: installs distfair without {LOCK_FILE}: pip resolves its dependencies anew "
                              f"on each node (the newest matches, no hashes); install the lock first: `{LOCKED_INSTALL}`")
                elif not no_deps:
                    reason = (f"warning: installs distfair after {LOCK_FILE} without --no-deps: pip may still change "
                              f"the locked dependencies; `{LOCKED_INSTALL}`")
                else:
                    continue
                if (path, reason) not in found:
                    found.append((path, reason))
    return found
