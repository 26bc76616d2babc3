"""KubeRay hardening rules of `distfair cluster validate`: the shipped files pass; each broken
variant (one defect each) exits 2 naming its key."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "cluster" / "kuberay"


def _validate(*paths):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "distfair.cli", "cluster", "validate", *map(str, paths)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_shipped_kuberay_files_pass():
    r = _validate(KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml", KUBERAY / "networkpolicy.yaml")
    assert r.returncode == 0, r.stdout + r.stderr


BROKEN = [
    ("rayjob.yaml", "  activeDeadlineSeconds: 86400", "", "spec.activeDeadlineSeconds"),
    ("rayjob.yaml", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true",
     "securityContext.allowPrivilegeEscalation"),
    ("raycluster.yaml", r"(\n( *)allowPrivilegeEscalation: false)", r"\1\n\2privileged: true",
     "securityContext.privileged"),
    ("raycluster.yaml", "runAsNonRoot: true", "runAsNonRoot: false", "securityContext.runAsNonRoot"),
    ("raycluster.yaml", "serviceType: ClusterIP", "serviceType: LoadBalancer", "headGroupSpec.serviceType"),
]


@pytest.mark.parametrize("name,old,new,key", BROKEN, ids=[b[3] for b in BROKEN])
def test_broken_variant_names_its_key_and_exits_2(tmp_path, name, old, new, key):
    text = (KUBERAY / name).read_text()
    broken = re.sub(old, new, text, count=1) if old.startswith("(") else text.replace(old, new)
    assert broken != text
    bad = tmp_path / name
    bad.write_text(broken)
    r = _validate(bad)
    assert r.returncode == 2, r.stdout + r.stderr
    assert key in r.stdout + r.stderr
