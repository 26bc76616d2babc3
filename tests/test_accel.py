"""The fast training path (distfair/engine/accel.py) on the CPU: bf16 autocast over the training
step only, channels_last, torch.compile, fused optimisers and the device-resident loader, each
switch off by default and each leaving the reported numbers' meaning unchanged."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

from distfair.config import ConfigError, validate
from distfair.engine import accel
from distfair.engine.steps import run_steps
from distfair.engine.train import _train_loader, build_optimizer, build_seed_training, run_seed, train_epoch
from distfair.evaluation import confusion_counts
from conftest import TINY  # tests/ is on sys.path under pytest (no __init__.py)


def resolved(**train) -> dict:
    raw = copy.deepcopy(TINY)
    raw["train"].update(train)
    return validate(raw, "tiny.yaml")


def conv_cfg(**train) -> dict:
    raw = copy.deepcopy(TINY)
    raw.update(dataset={"name": "digits"}, model={"name": "digits_cnn", "width": 4},
               defense={"name": "pgd_at"}, attack={"name": "pgd", "eps": 0.1, "steps": 1},
               eval={"attacks": [{"name": "fgsm", "attack": "fgsm"}]})
    raw["train"].update(epochs=1, batch_size=128, **train)
    return validate(raw, "conv.yaml")


# ------------------------------------------------------------------------------- config
def test_switches_default_to_the_plain_path():
    train = resolved()["train"]
    assert {k: train[k] for k in accel.DEFAULTS} == accel.DEFAULTS
    assert accel.describe(train) == ""


def test_switches_are_validated():
    with pytest.raises(ConfigError) as info:
        resolved(precision="fp16", compile="yes")
    text = str(info.value)
    assert "train.precision: must be one of fp32, bf16, got 'fp16'" in text
    assert "train.compile" in text


def test_a_train_block_without_the_switches_reads_their_defaults():
    assert accel.option({"lr": 0.1}, "precision") == "fp32"
    assert accel.option({"precision": "bf16"}, "precision") == "bf16"


# ---------------------------------------------------------------------------- precision
def _step_dtypes(run) -> list[torch.dtype]:
    """The dtypes of the last layer's outputs during one training step of ``run``, run the way
    the engine's epoch runs its steps (``distfair.engine.steps.run_steps`` with the run's
    ``train.precision``)."""
    seen: list[torch.dtype] = []
    last = [m for m in run.model.modules() if isinstance(m, nn.Linear)][-1]
    handle = last.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    try:
        batch = next(iter(run.loader))
        run_steps(run.defense, run.train_model, [batch], run.optimizer, epoch=0, device=run.device,
                  generator=torch.Generator().manual_seed(0),
                  precision=accel.option(run.cfg["train"], "precision"))
    finally:
        handle.remove()
    return seen


def test_bf16_runs_the_whole_training_step_attack_included_under_autocast(tmp_path):
    run = build_seed_training(resolved(precision="bf16"), 0, workdir=tmp_path, device=torch.device("cpu"),
                              rank=0, world=1, log=print)
    assert "train_step" not in vars(run.defense)          # the epoch wraps the step; the defense is as built
    seen = _step_dtypes(run)
    # syfar with a 2-step PGD: 2 attack forwards + the outer forward(s), all in bf16
    assert len(seen) >= 3 and set(seen) == {torch.bfloat16}
    # the parameters and the optimiser stay fp32
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}
    assert all(s["momentum_buffer"].dtype == torch.float32 for s in run.optimizer.state.values())


def test_fp32_leaves_the_step_alone(tmp_path):
    run = build_seed_training(resolved(), 0, workdir=tmp_path, device=torch.device("cpu"), rank=0, world=1,
                              log=print)
    assert "train_step" not in vars(run.defense)          # the class's own method, never wrapped
    assert set(_step_dtypes(run)) == {torch.float32}


def test_evaluation_stays_fp32_after_bf16_training(tmp_path):
    """The reported robust accuracy must not depend on the training precision: in a bf16
    epoch only the training steps (batches of 16) run in bf16; the epoch's validation counts,
    clean and attacked (batches of 7 and fewer), run outside the step, in fp32."""
    cfg = resolved(precision="bf16", eval_batch_size=7)
    run = build_seed_training(cfg, 0, workdir=tmp_path, device=torch.device("cpu"), rank=0, world=1, log=print)
    seen: list[tuple[int, torch.dtype]] = []
    last = [m for m in run.model.modules() if isinstance(m, nn.Linear)][-1]
    last.register_forward_hook(lambda mod, inp, out: seen.append((out.shape[0], out.dtype)))
    row = train_epoch(run, 0)
    assert "val_robust_acc" in row
    assert {dtype for n, dtype in seen if n == 16} == {torch.bfloat16}
    assert {dtype for n, dtype in seen if n <= 7} == {torch.float32}
    assert {n for n, _ in seen} <= {16, 7, 6, 5, 4, 3, 2, 1}
    # and a later evaluation call (the test-set evaluation's kind) is fp32 too
    seen.clear()
    confusion_counts(run.model, run.data.val, run.data.num_classes, device=torch.device("cpu"), batch_size=64,
                     attack=run.attack, generator=torch.Generator().manual_seed(0))
    assert seen and {dtype for _, dtype in seen} == {torch.float32}


def test_bf16_training_learns_a_separable_problem(tmp_path):
    """Same seed, fp32 and bf16: both learn the blobs (clean accuracy well above chance 1/3)
    and end close to each other."""
    accs = {}
    for precision in ("fp32", "bf16"):
        cfg = resolved(precision=precision, epochs=3)
        cfg["eval"]["attacks"] = cfg["eval"]["attacks"][:1]
        result = run_seed(cfg, 0, workdir=tmp_path / precision)
        accs[precision] = result.metrics["clean_acc"]
        assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    assert accs["bf16"] >= 0.9, accs
    assert abs(accs["bf16"] - accs["fp32"]) <= 0.1, accs


def test_a_bad_precision_is_refused_by_the_engine_too():
    with pytest.raises(ValueError, match="train.precision must be one of fp32, bf16"):
        accel.autocast("fp16", "cpu")


# ------------------------------------------------------------------------ channels_last
def test_channels_last_converts_conv_models_and_trains_like_the_default(tmp_path):
    rows = {}
    for on in (False, True):
        run = build_seed_training(conv_cfg(channels_last=on), 0, workdir=tmp_path / str(on),
                                  device=torch.device("cpu"), rank=0, world=1, log=print)
        # (a 1-channel input's weight is contiguous in both layouts: look at a later layer)
        conv = next(m for m in run.model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is on
        # the optimiser holds the converted parameters themselves
        assert any(p is conv.weight for g in run.optimizer.param_groups for p in g["params"])
        rows[on] = train_epoch(run, 0)
    assert rows[True]["train_loss"] == pytest.approx(rows[False]["train_loss"], rel=1e-4)
    assert rows[True]["val_clean_acc"] == pytest.approx(rows[False]["val_clean_acc"], abs=0.02)


def test_channels_last_leaves_a_model_without_convolutions_and_says_so():
    model, said = nn.Sequential(nn.Linear(4, 3)), []
    accel.prepare_model(model, {"channels_last": True}, said.append)
    assert said == ["train.channels_last: the model has no 2-D convolution; its layout is left as it is"]
    assert model[0].weight.is_contiguous()


# ---------------------------------------------------------------------------- optimiser
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_optimizer_switch(name):
    base = resolved(optimizer=name)["train"]
    params = list(nn.Linear(4, 3).parameters())
    plain = build_optimizer(params, base)
    assert not plain.defaults.get("fused") and not plain.defaults.get("foreach")    # PyTorch's own default
    fast = build_optimizer(params, {**base, "fused_optimizer": True})
    # this PyTorch has fused kernels for the CPU; CUDA always has them for SGD/Adam/AdamW
    assert fast.defaults["fused"] is True


def test_fused_optimizer_trains_like_the_default():
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    losses = {}
    for fused in (False, True):
        torch.manual_seed(1)
        model = nn.Linear(4, 3)
        opt = build_optimizer(model.parameters(), {**resolved()["train"], "fused_optimizer": fused})
        for _ in range(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        losses[fused] = loss.item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


# ------------------------------------------------------------------------------ compile
def test_compile_trains_through_the_compiled_model_and_keeps_the_plain_one(tmp_path):
    """torch.compile runs on the CPU here (inductor and the system C++ compiler). One plain
    step only: each new graph (the attack's eval mode, its input gradient, a ragged last batch)
    costs another compilation of 10-20 s on 2 cores, a whole PGD epoch minutes."""
    raw = copy.deepcopy(TINY)
    raw.update(defense={"name": "standard"}, attack=None, eval={"attacks": []})
    losses, params = {}, {}
    for on in (False, True):
        raw["train"]["compile"] = on
        run = build_seed_training(validate(raw, "tiny.yaml"), 0, workdir=tmp_path / str(on),
                                  device=torch.device("cpu"), rank=0, world=1, log=print)
        assert (run.train_model is not run.model) is on
        assert isinstance(run.train_model, torch._dynamo.eval_frame.OptimizedModule) is on
        run.train_model.train()
        parts = run.defense.train_step(run.train_model, next(iter(run.loader)), run.optimizer)
        losses[on], params[on] = float(parts["loss"]), [p.detach().clone() for p in run.model.parameters()]
        assert not any(k.startswith("_orig_mod") for k in run.model.state_dict())   # checkpoints unchanged
    torch._dynamo.reset()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    # the step through the compiled wrapper updated the plain module's own parameters
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params[True], params[False]))


# ------------------------------------------------------------------ device-resident data
def _dataloader_batches(dataset, batch_size, seed, rank, world, epoch):
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    drop_last = len(sampler) > batch_size
    return list(DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last))


@pytest.mark.parametrize("subset", [False, True])
def test_device_loader_yields_the_dataloaders_batches_in_the_same_order(subset):
    g = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.rand(53, 2, 3, generator=g), torch.randint(0, 4, (53,), generator=g))
    if subset:                           # a split of a split, as the datasets' train parts are
        dataset = Subset(Subset(dataset, list(range(50, 2, -1))), list(range(0, 45, 1)))
    firsts = {}
    for seed in (0, 7):
        for world in (1, 2):
            for rank in range(world):
                sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
                loader = accel.DeviceLoader(dataset, sampler=sampler, batch_size=8,
                                            drop_last=len(sampler) > 8, device="cpu")
                for epoch in (0, 1):
                    sampler.set_epoch(epoch)
                    torch.manual_seed(3)
                    ours = list(loader)
                    after_ours = torch.get_rng_state()
                    torch.manual_seed(3)
                    theirs = _dataloader_batches(dataset, 8, seed, rank, world, epoch)
                    assert torch.equal(after_ours, torch.get_rng_state())     # same global RNG draws
                    assert len(ours) == len(theirs) == len(loader)
                    for a, b in zip(ours, theirs):
                        assert type(a) is type(b)
                        assert all(torch.equal(u, v) and u.dtype == v.dtype for u, v in zip(a, b))
                    firsts[epoch] = ours[0][0]
                assert not torch.equal(firsts[0], firsts[1])                      # reshuffled per epoch


def test_device_loader_gives_the_same_run_as_the_dataloader(tmp_path):
    results = {on: run_seed(resolved(data_on_device=on, epochs=2), 0, workdir=tmp_path / str(on))
               for on in (False, True)}
    def untimed(metrics):
        return {k: v for k, v in metrics.items() if not k.endswith("_time_s")}

    assert untimed(results[True].metrics) == untimed(results[False].metrics)
    assert results[True].history[-1]["train_loss"] == results[False].history[-1]["train_loss"]


def test_device_loader_is_used_for_tensor_sets_and_refused_for_others():
    from distfair.data import build_dataset

    data = build_dataset("synthetic", num_samples=60, num_classes=3, dim=4)
    said: list[str] = []
    _, loader = _train_loader(data, 8, 0, 0, 1, device=torch.device("cpu"), log=said.append)
    assert isinstance(loader, accel.DeviceLoader) and not said

    class Computed(torch.utils.data.Dataset):            # items computed per access (augmentation)
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return torch.rand(3), i % 2

    data = dataclasses.replace(data, train=Computed())
    _, loader = _train_loader(data, 8, 0, 0, 1, device=torch.device("cpu"), log=said.append)
    assert isinstance(loader, DataLoader)
    assert said == ["train.data_on_device: Computed is not a tensor dataset; training batches come from the DataLoader"]


# ----------------------------------------------------------------- CUDA (scripts/gpu_check.sh)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_fast_path_trains_and_evaluates_in_fp32(tmp_path):
    cfg = resolved(precision="bf16", fused_optimizer=True, data_on_device=True, channels_last=True, epochs=2)
    cuda = torch.device("cuda", torch.cuda.current_device())
    run = build_seed_training(cfg, 0, workdir=tmp_path / "build", device=cuda, rank=0, world=1, log=print)
    assert isinstance(run.loader, accel.DeviceLoader) and run.optimizer.defaults["fused"] is True
    assert set(_step_dtypes(run)) == {torch.bfloat16}
    result = run_seed(cfg, 0, workdir=tmp_path / "run", device=cuda)
    assert result.metrics["clean_acc"] >= 0.9
    assert all(v is None or v == v for v in result.metrics.values())          # no NaN


@needs_cuda
def test_cuda_device_loader_matches_the_dataloader():
    g = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.rand(40, 3, 4, 4, generator=g), torch.randint(0, 3, (40,), generator=g))
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=3)
    sampler.set_epoch(1)
    ours = list(accel.DeviceLoader(dataset, sampler=sampler, batch_size=6, drop_last=True, device="cuda"))
    theirs = _dataloader_batches(dataset, 6, 3, 1, 2, 1)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a[0].is_cuda and all(torch.equal(u.cpu(), v) for u, v in zip(a, b))


@needs_cuda
def test_cuda_compile_of_a_conv_step_under_bf16(tmp_path):
    run = build_seed_training(conv_cfg(compile=True, precision="bf16", channels_last=True), 0, workdir=tmp_path,
                              device=torch.device("cuda"), rank=0, world=1, log=print)
    row = train_epoch(run, 0)
    torch._dynamo.reset()
    assert row["train_loss"] == row["train_loss"] and row["val_clean_acc"] > 0.3
