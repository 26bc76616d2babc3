"""scripts/bench_gpu.py runs on the CPU with tiny shapes and prints its numbers and ratios
(the GPU numbers themselves come from scripts/gpu_check.sh on a lent GPU)."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_gpu.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_prints_samples_per_second_and_the_ratios():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--packs", "1,2"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert re.search(r"^device: CPU", text, re.M)
    assert re.search(r"^torch \S+, \d{4}-\d\d-\d\d \d\d:\d\d UTC$", text, re.M)
    number = r"\d+\.\d+"
    assert re.search(rf"^plain fp32 loop: +{number} samples/s$", text, re.M)
    assert re.search(rf"^distfair \(bf16, channels_last, fused, data on device\): +{number} samples/s$", text, re.M)
    assert re.search(rf"^ratio distfair/plain: {number}$", text, re.M)
    assert re.search(rf"^ratio \(bf16 step, fp32 attack\)/plain: {number}$", text, re.M)
    assert re.search(rf"sign agreement of the input gradient {number}; PGD loss fp32 {number} bf16 {number}", text)
    assert re.search(rf"^packed 2 seed run\(s\) \(layout with resources_per_seed GPU 0.5: 2 at once\): +{number} "
                     rf"samples/s aggregate$", text, re.M)
    assert re.search(rf"^ratio packed\(2\)/single: {number}$", text, re.M)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_fractional_gpu_per_seed_packs_that_many_seed_runs_on_one_gpu(k):
    """The packing the benchmark measures is what distfair's layout plans for
    ``scaling.resources_per_seed: {GPU: 1/k}`` on a one-GPU cluster."""
    assert _bench_module().layout_groups(k) == k


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_requested_without_a_gpu_is_refused_in_one_line():
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "bench_gpu: no CUDA device here; run with --device cpu --tiny"
