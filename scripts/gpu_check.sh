#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (the GPU path): distfair's fast path
# benchmark at full size and the CUDA-only tests. Expected runtime on one H100/H200: about
# 5-6 minutes (benchmark without compile ~3 min, CUDA tests ~1 min, benchmark with
# train.compile ~2 min); each part has its own time limit so the whole stays under 9 minutes.
#
#   bash scripts/gpu_check.sh            # from the repository root; logs under $OUT (or ./gpu_check_logs)
#
# Needs only PyTorch (+ numpy, scipy, scikit-learn, PyYAML, pytest): the benchmark and the
# tests below import no Ray and no MLflow, so the GPU image's python3 runs them as they are.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS="${OUT:-gpu_check_logs}"
mkdir -p "$LOGS"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

echo "== $(date -u '+%Y-%m-%d %H:%M UTC')"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
# The GPU image brings its own torch trio; say so when it is not the one requirements.lock pins
"$PY" - <<'PY'
import re
from importlib.metadata import version
lock = open("requirements.lock").read()
for name in ("torch", "torchvision", "torchaudio"):
    pinned = re.search(rf"^{name}==([^\s;]+)", lock, re.M).group(1)
    try:
        have = version(name)
    except Exception:
        have = "not installed"
    if have.split("+")[0] != pinned:
        print(f"NOTE: this machine's {name} is {have}, requirements.lock pins {pinned}: these numbers are for {name} {have}")
PY

echo "== bench_gpu.py (fp32 plain loop, distfair fast path, attack precision, packing 1/2/4)"
timeout 240 "$PY" scripts/bench_gpu.py --device cuda 2>&1 | tee "$LOGS/bench_gpu.txt" || status=1

echo "== CUDA tests"
timeout 150 "$PY" -m pytest -q -rs -p no:cacheprovider -k "cuda or normalize_buffers_move_with_model" \
    tests/test_accel.py tests/test_attacks.py tests/test_models.py 2>&1 | tee "$LOGS/cuda_tests.txt" || status=1

echo "== bench_gpu.py --compile --packs 1 (train.compile on top of the fast path)"
timeout 150 "$PY" scripts/bench_gpu.py --device cuda --compile --packs 1 2>&1 | tee "$LOGS/bench_gpu_compile.txt" || status=1

echo "== done (status $status)"
exit $status
