"""PGD-10 adversarial training of PreAct-ResNet18 on CIFAR-shaped data: distfair's fast GPU
path against a plain fp32 PyTorch loop, the attack's precision, and seed runs packed on one GPU.

All in one invocation, on synthetic tensors (uniform images in [0, 1], random labels: the
arithmetic is that of CIFAR-10, 3x32x32 and 10 classes; the values do not matter for timing):

1. ``plain fp32``: the loop a user writes (a DataLoader over host tensors, ``.to(device)`` per
   batch, PGD-ℓ∞ 10 steps ε 8/255 α 2/255 in eval mode, cross-entropy, SGD), fp32 throughout.
2. ``distfair``: the engine's own pieces (distfair/engine/accel.py) with the fast switches:
   ``defense.train_step`` of ``pgd_at`` with the ``pgd`` attack under ``train.precision: bf16``,
   ``channels_last``, ``fused_optimizer``, ``data_on_device`` (the DeviceLoader), and
   ``compile`` with ``--compile``.
3. ``bf16 step, fp32 attack``: the plain loop with autocast around the outer loss only, the
   cost of keeping the attack's gradients in fp32; and, on one batch of the trained plain
   model, the attack in fp32 against bf16 from the same random start: how often the signs of
   the first input gradient agree, and the fp32 cross-entropy each attack's x_adv reaches.
4. Packing: k = 1, 2, 4 seed runs at once, each its own process (as Ray runs the seed groups of
   ``scaling.resources_per_seed: {GPU: 1/k}``; distfair's layout plan for that setting is
   printed alongside), timed over the same window (the processes start their timed steps
   together); aggregate samples/s against one run alone.

Prints samples/s for each, the ratios distfair/plain and packed aggregate/single, the device
name, the PyTorch version and the date. Timings are printed, never asserted.

    python scripts/bench_gpu.py                         # full size on the GPU
    python scripts/bench_gpu.py --device cpu --tiny     # tiny shapes, a few steps (tests)
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distfair.attacks import build_attack  # noqa: E402
from distfair.defenses import build_defense  # noqa: E402
from distfair.engine import accel  # noqa: E402
from distfair.engine.train import build_optimizer  # noqa: E402
from distfair.models import build_model  # noqa: E402

def _layout_module():
    """distfair/distributed/layout.py itself (pure Python): importing it through its package
    would import Ray, which a bare GPU machine need not have for this benchmark."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "distfair" / "distributed" / "layout.py"
    spec = importlib.util.spec_from_file_location("distfair_layout", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EPS, ALPHA = 8 / 255, 2 / 255
SHAPE, CLASSES = (3, 32, 32), 10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and a few steps (runs on a CPU in seconds)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning, compilation)")
    p.add_argument("--width", type=int, default=64, help="PreAct-ResNet18 width (64: the standard model)")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--packs", default="1,2,4", help="seed runs at once, comma-separated")
    p.add_argument("--compile", action="store_true", help="also train.compile in distfair's path")
    args = p.parse_args(argv)
    if args.tiny:
        args.batch_size, args.steps, args.warmup, args.width, args.pgd_steps = 4, 2, 1, 2, 2
    args.packs = [int(k) for k in args.packs.split(",")]
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def synthetic(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, *SHAPE, generator=g), torch.randint(0, CLASSES, (n,), generator=g))


def model_for(args, device) -> torch.nn.Module:
    return build_model("preact_resnet18", num_classes=CLASSES, in_shape=SHAPE, width=args.width).to(device)


TRAIN = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}


# ---------------------------------------------------------------------------- plain loop
def pgd(model, x, y, steps: int, attack_autocast) -> torch.Tensor:
    """PGD-ℓ∞ with a random start, as a user writes it (eval mode, sign steps, projection)."""
    model.eval()
    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with attack_autocast():
            loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + ALPHA * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    model.train()
    return x_adv.detach()


def plain_samples_per_s(args, device, *, step_precision: str = "fp32") -> tuple[float, torch.nn.Module]:
    """The plain loop; ``step_precision: bf16`` puts autocast around the outer loss only (the
    attack stays fp32)."""
    torch.manual_seed(0)
    model = model_for(args, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(synthetic(args.batch_size * (args.warmup + args.steps), 1), batch_size=args.batch_size,
                        shuffle=True, drop_last=True, pin_memory=device.type == "cuda")
    fp32 = lambda: torch.autocast(device.type, enabled=False)  # noqa: E731
    outer = (lambda: accel.autocast("bf16", device)) if step_precision == "bf16" else fp32
    model.train()
    for i, (x, y) in enumerate(loader):
        if i == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x_adv = pgd(model, x, y, args.pgd_steps, fp32)
        with outer():
            loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return args.batch_size * args.steps / (time.perf_counter() - t0), model


# -------------------------------------------------------------------------- distfair path
def distfair_run(args, device, seed: int = 0):
    """(steps(n) -> None, model): ``n`` steps of the engine's fast path."""
    torch.manual_seed(seed)
    model = model_for(args, device)
    train = {**TRAIN, "precision": "bf16", "channels_last": True, "fused_optimizer": True,
             "data_on_device": True, "compile": args.compile}
    accel.prepare_model(model, train, print)
    attack = build_attack("pgd", eps=EPS, alpha=ALPHA, steps=args.pgd_steps, bounds=(0.0, 1.0))
    defense = build_defense("pgd_at", attack=attack, num_classes=CLASSES)
    step_precision = accel.autocast("bf16", device)         # as distfair.engine.steps.run_steps wraps each step
    opt = build_optimizer(model.parameters(), train)
    step_model = accel.compiled(model) if args.compile else model
    data = synthetic(args.batch_size * (args.warmup + args.steps), seed + 1)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=seed)
    loader = accel.DeviceLoader(data, sampler=sampler, batch_size=args.batch_size, drop_last=True, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    state = {"epoch": 0, "it": iter(())}

    def steps(n: int) -> None:
        step_model.train()
        for _ in range(n):
            batch = next(state["it"], None)
            if batch is None:
                state["epoch"] += 1
                sampler.set_epoch(state["epoch"])
                state["it"] = iter(loader)
                batch = next(state["it"])
            with step_precision:
                defense.train_step(step_model, batch, opt, generator=gen)
    return steps, model


def distfair_samples_per_s(args, device) -> float:
    steps, _ = distfair_run(args, device)
    steps(args.warmup)
    sync(device)
    t0 = time.perf_counter()
    steps(args.steps)
    sync(device)
    return args.batch_size * args.steps / (time.perf_counter() - t0)


# ------------------------------------------------------------------------ attack precision
def attack_precision(args, device, model) -> dict:
    """The attack on one batch in fp32 and under bf16 autocast, from the same random start."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(args.batch_size, *SHAPE, generator=g).to(device)
    y = torch.randint(0, CLASSES, (args.batch_size,), generator=g).to(device)
    model.eval()
    out = {}
    grads = {}
    for precision in ("fp32", "bf16"):
        x_adv0 = x.clone().requires_grad_(True)
        with accel.autocast(precision, device):
            loss = F.cross_entropy(model(x_adv0), y)
        (grads[precision],) = torch.autograd.grad(loss, x_adv0)
        ctx = (lambda: accel.autocast(precision, device))
        torch.manual_seed(11)
        sync(device)
        t0 = time.perf_counter()
        x_adv = pgd(model, x, y, args.pgd_steps, ctx)
        sync(device)
        out[f"time_{precision}_s"] = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            out[f"loss_{precision}"] = float(F.cross_entropy(model(x_adv), y))      # judged in fp32
            out[f"acc_{precision}"] = float((model(x_adv).argmax(1) == y).float().mean())
    nonzero = grads["fp32"] != 0
    out["sign_agreement"] = float((grads["fp32"].sign() == grads["bf16"].sign())[nonzero].float().mean())
    return out


# ---------------------------------------------------------------------------------- packing
def _pack_worker(args, device_str: str, seed: int, threads: int, barrier, results) -> None:
    torch.set_num_threads(threads)
    device = torch.device(device_str)
    steps, _ = distfair_run(args, device, seed=seed)
    steps(args.warmup)
    sync(device)
    barrier.wait()                  # every run starts its timed steps together
    t0 = time.time()
    steps(args.steps)
    sync(device)
    results.put((seed, t0, time.time()))


def packed_samples_per_s(args, device, k: int) -> float:
    """Aggregate samples/s of ``k`` seed runs, each in its own process, over their common window."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(k), ctx.Queue()
    threads = 1        # the CPU mode is a smoke test: one thread each keeps it cheap and comparable
    procs = [ctx.Process(target=_pack_worker, args=(args, str(device), seed, threads, barrier, results))
             for seed in range(k)]
    for p in procs:
        p.start()
    spans = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a packed seed run exited with {p.exitcode}")
    start, end = min(s[1] for s in spans), max(s[2] for s in spans)
    return k * args.batch_size * args.steps / (end - start)


def layout_groups(k: int) -> int:
    """How many seed runs distfair's layout runs at once on one GPU with
    ``scaling.resources_per_seed: {GPU: 1/k}`` (one worker per seed run)."""
    scaling = {"num_workers": 1, "use_gpu": True, "resources_per_worker": {"CPU": 1.0, "GPU": 1.0 / k},
               "max_concurrent_seeds": None}
    return len(_layout_module().plan_seed_groups(list(range(k)), scaling, {"CPU": 64.0, "GPU": 1.0}))


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; run with --device cpu --tiny", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"device: {device_name(device)}")
    print(f"torch {torch.__version__}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"PGD-{args.pgd_steps} AT, PreAct-ResNet18 width {args.width}, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps")

    plain, plain_model = plain_samples_per_s(args, device)
    print(f"plain fp32 loop:            {plain:10.1f} samples/s")
    fast = distfair_samples_per_s(args, device)
    label = "distfair (bf16, channels_last, fused, data on device" + (", compile)" if args.compile else ")")
    print(f"{label}: {fast:10.1f} samples/s")
    mixed, _ = plain_samples_per_s(args, device, step_precision="bf16")
    print(f"bf16 step, fp32 attack:     {mixed:10.1f} samples/s")
    print(f"ratio distfair/plain: {fast / plain:.2f}")
    print(f"ratio (bf16 step, fp32 attack)/plain: {mixed / plain:.2f}")

    ap = attack_precision(args, device, plain_model)
    print(f"attack precision (one batch, plain-trained model): sign agreement of the input gradient "
          f"{ap['sign_agreement']:.4f}; PGD loss fp32 {ap['loss_fp32']:.4f} bf16 {ap['loss_bf16']:.4f}; "
          f"robust acc fp32 {ap['acc_fp32']:.4f} bf16 {ap['acc_bf16']:.4f}; "
          f"time fp32 {ap['time_fp32_s']:.3f}s bf16 {ap['time_bf16_s']:.3f}s")

    single = None
    for k in args.packs:
        agg = packed_samples_per_s(args, device, k)
        single = agg if k == 1 or single is None else single
        print(f"packed {k} seed run(s) (layout with resources_per_seed GPU {1 / k:g}: {layout_groups(k)} at once): "
              f"{agg:10.1f} samples/s aggregate")
        print(f"ratio packed({k})/single: {agg / single:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
