"""Does every native library distfair uses load, and work, in this environment?

A wheel whose compiled part was built against another release of its host (torchaudio 2.11.1
against a newer torch than 2.11.0, say) installs cleanly and fails only when it is loaded:
``undefined symbol: ...`` in the middle of a run. :func:`check` loads each piece and calls one
real kernel of it, in a child process (a native library that crashes takes the child down, not
the caller), and returns one line per piece that failed, naming the package pair involved:

    torchaudio 2.11.1 with torch 2.11.0: OSError: .../libtorchaudio.so: undefined symbol: ...

``python -m distfair.native`` prints those lines and exits 1 (``./dev`` runs it after every
install); ``tests/test_00_native.py`` runs it first in the suite.
"""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

# (piece, the packages whose builds must agree, code run in the child)
PIECES: list[tuple[str, tuple[str, ...], str]] = [
    ("torch", ("torch",),
     "import torch; assert float((torch.ones(3) * 2).sum()) == 6.0"),
    ("torchvision ops", ("torchvision", "torch"),
     "import torch, torchvision.ops as ops\n"
     "keep = ops.nms(torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]), torch.tensor([0.9, 0.8]), 0.5)\n"
     "assert keep.tolist() == [0]"),
    ("torchaudio resample", ("torchaudio", "torch"),
     "import torch, torchaudio, torchaudio.functional as F\n"
     "y = F.resample(torch.sin(torch.arange(8000.) / 5).unsqueeze(0), orig_freq=8000, new_freq=16000)\n"
     "assert y.shape == (1, 16000) and bool(torch.isfinite(y).all())"),
    ("soundfile (libsndfile)", ("soundfile",),
     "import io, numpy as np, soundfile as sf\n"
     "buf = io.BytesIO(); sf.write(buf, np.zeros(160, dtype='int16'), 16000, format='WAV'); buf.seek(0)\n"
     "data, rate = sf.read(buf, dtype='int16'); assert rate == 16000 and data.shape == (160,)"),
    ("eSpeak NG engine", ("espeakng-loader",),
     "from distfair.data.spoken_words import Engine, Voice\n"
     "samples, rate = Engine.locate(None, None).synthesize(Voice('en-us', 'm1', 175, 50), 'one')\n"
     "assert rate > 0 and samples.size > 0"),
    ("scikit-learn SVM", ("scikit-learn", "numpy"),
     "import numpy as np; from sklearn.svm import SVC\n"
     "svm = SVC(kernel='rbf').fit(np.array([[0.], [1.], [2.], [3.]]), [0, 0, 1, 1]); assert svm.predict([[3.]])[0] == 1"),
    ("scipy", ("scipy", "numpy"),
     "from scipy import stats; assert abs(stats.norm.cdf(0.0) - 0.5) < 1e-12"),
]

_CHILD = """
import json, sys, traceback
for name, code in json.loads(sys.argv[1]):
    print("start", name, flush=True)
    try:
        exec(compile(code, name, "exec"), {})
    except BaseException as err:
        last = str(err).strip().splitlines()
        print("fail", json.dumps([name, f"{type(err).__name__}: {last[-1] if last else ''}".strip()]), flush=True)
    else:
        print("ok", name, flush=True)
"""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _label(packages: tuple[str, ...]) -> str:
    first, *rest = packages
    text = f"{first} {_version(first)}"
    return text + "".join(f" with {p} {_version(p)}" for p in rest)


def check(pieces: list[tuple[str, tuple[str, ...], str]] | None = None, *, timeout: float = 300.0) -> list[str]:
    """One line per piece that does not load or work (empty: everything loads)."""
    pieces = PIECES if pieces is None else pieces
    packages = {name: pkgs for name, pkgs, _ in pieces}
    problems: list[str] = []
    started = None
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([[n, c] for n, _, c in pieces])],
                              capture_output=True, text=True, timeout=timeout)
        output, code = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as err:
        output, code = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or ""), None
    done = set()
    for line in output.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "start":
            started = rest
        elif kind == "ok":
            done.add(rest)
        elif kind == "fail":
            name, why = json.loads(rest)
            done.add(name)
            problems.append(f"{name}: {_label(packages[name])}: {why}")
    if started is not None and started not in done:      # the child died (or hung) inside this piece
        how = "hung" if code is None else f"crashed the process (exit {code})"
        problems.append(f"{started}: {_label(packages[started])}: loading it {how}")
    elif started is None and code not in (0, None):
        problems.append(f"python {sys.version.split()[0]}: the check could not start (exit {code})")
    return problems


def main() -> int:
    problems = check()
    for line in problems:
        print(f"native library check: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
