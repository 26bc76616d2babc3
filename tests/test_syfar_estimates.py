"""Sy-FAR options beyond Alg. 1 (accumulated soft-confusion estimate, per-term gradient
norms) and the per-epoch validation symmetry the engine logs (README "Sy-FAR on digits")."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from distfair.attacks import PGD
from distfair.config import validate
from distfair.defenses.syfar import SyFAR
from distfair.engine import run_seed
from distfair.evaluation import confusion_counts
from distfair.defenses.syfar import validation_symmetry
from distfair.metrics import soft_confusion_matrix, symmetry_loss

K = 3


def model_and_batches(n_batches=3, b=12, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, K)).train()
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.rand(b, 1, 6, 6, generator=g), torch.randint(0, K, (b,), generator=g))
               for _ in range(n_batches)]
    return model, batches


def syfar(**kw):
    return SyFAR(attack=PGD(eps=0.1, steps=2, bounds=(0.0, 1.0)), num_classes=K, **kw)


def test_batch_estimate_is_alg1():
    model, batches = model_and_batches(1)
    d = syfar()
    probs = torch.softmax(torch.randn(12, K), 1)
    y = batches[0][1]
    C, C_batch = d.soft_confusion(probs, y)
    assert C is C_batch
    torch.testing.assert_close(C, soft_confusion_matrix(probs, y, K))


def test_ema_value_is_decayed_per_class_mean_and_gradient_is_the_batch_s():
    m = 0.8
    d = syfar(sym_estimate="ema", sym_momentum=m)
    g = torch.Generator().manual_seed(1)
    ps = [torch.softmax(torch.randn(10, K, generator=g), 1) for _ in range(3)]
    ys = [torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0]), torch.tensor([0] * 5 + [1] * 5),
          torch.tensor([2, 1, 0, 2, 1, 0, 2, 1, 0, 2])]
    for p, y in zip(ps, ys):
        leaf = p.clone().requires_grad_(True)
        C, batch = d.soft_confusion(leaf, y)
    # value: sum_t m^(T-t) sums_t / sum_t m^(T-t) counts_t
    w = [m ** 2, m, 1.0]
    sums = sum(wt * torch.zeros(K, K).index_add(0, y, p) for wt, p, y in zip(w, ps, ys))
    counts = sum(wt * torch.bincount(y, minlength=K).float() for wt, y in zip(w, ys))
    torch.testing.assert_close(C.detach(), sums / counts[:, None])
    torch.testing.assert_close(batch.detach(), soft_confusion_matrix(ps[-1], ys[-1], K))
    # gradient: dL/dC at the accumulated value, through the last batch's C only
    L = symmetry_loss(C)
    (grad,) = torch.autograd.grad(L, leaf)
    C_acc = (sums / counts[:, None]).requires_grad_(True)
    (outer,) = torch.autograd.grad(symmetry_loss(C_acc), C_acc)
    leaf2 = ps[-1].clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((outer * soft_confusion_matrix(leaf2, ys[-1], K)).sum(), leaf2)
    torch.testing.assert_close(grad, expected)
    assert grad.abs().sum() > 0


def test_ema_restarts_every_epoch():
    d = syfar(sym_estimate="ema")
    y = torch.tensor([0, 1, 2, 0])
    first = torch.softmax(torch.randn(4, K), 1)
    d.soft_confusion(first, y)
    d.start_epoch(None, None, epoch=1, batch_size=4, generator=None)
    p = torch.softmax(torch.randn(4, K), 1)
    C, batch = d.soft_confusion(p, y)
    torch.testing.assert_close(C, batch)


def test_ema_differs_from_batch_and_is_smoother_over_batches():
    """Over a stream of noisy batches from one fixed distribution the accumulated estimate
    fluctuates less than the per-batch one (what the option is for)."""
    torch.manual_seed(0)
    d_b, d_e = syfar(), syfar(sym_estimate="ema", sym_momentum=0.9)
    logits = torch.randn(600, K) * 2
    labels = torch.randint(0, K, (600,))
    vb, ve = [], []
    for i in range(0, 600, 12):
        p, y = logits[i:i + 12].softmax(1), labels[i:i + 12]
        vb.append(float(symmetry_loss(d_b.soft_confusion(p, y)[0])))
        ve.append(float(symmetry_loss(d_e.soft_confusion(p, y)[0])))
    vb, ve = torch.tensor(vb[20:]), torch.tensor(ve[20:])
    assert ve.std() < 0.5 * vb.std()
    assert ve.mean() < vb.mean()        # the per-batch value is biased upward by noise


def test_ema_loss_logs_both_values_and_trains():
    model, batches = model_and_batches()
    d = syfar(sym_estimate="ema")
    for x, y in batches:
        loss, parts = d.loss(model, x, y, generator=torch.Generator().manual_seed(0))
        loss.backward()
    assert {"clean_ce", "adv_ce", "sym", "sym_batch"} <= set(parts)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("bad", [{"sym_estimate": "mean"}, {"sym_momentum": 1.0}, {"sym_momentum": -0.1}])
def test_bad_options_raise(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        syfar(**bad)


def test_grad_norms_match_per_term_backward_and_leave_grads_alone():
    model, batches = model_and_batches(1)
    x, y = batches[0]
    weights = {"lambda_clean": 0.1, "lambda_adv": 1.0, "lambda_sym": 10.0}
    d = syfar(grad_norms=True, **weights)
    loss, parts = d.loss(model, x, y, generator=torch.Generator().manual_seed(3))
    assert all(p.grad is None for p in model.parameters())     # autograd.grad only
    plain_loss, plain = syfar(**weights).loss(copy.deepcopy(model), x, y, generator=torch.Generator().manual_seed(3))
    assert loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    for key, lam, part in (("clean", 0.1, "clean_ce"), ("adv", 1.0, "adv_ce"), ("sym", 10.0, "sym")):
        assert part in plain
    # recompute each term's gradient norm by an ordinary backward of that term alone
    for key in ("clean", "adv", "sym"):
        m = copy.deepcopy(model)
        w = {k: (v if k == f"lambda_{key}" else 0.0) for k, v in weights.items()}
        term, _ = syfar(**w).loss(m, x, y, generator=torch.Generator().manual_seed(3))
        term.backward()
        norm = torch.sqrt(sum((p.grad ** 2).sum() for p in m.parameters()))
        assert parts[f"grad_norm_{key}"].item() == pytest.approx(norm.item(), rel=1e-5, abs=1e-8)


# ------------------------------------------------------------------ per-epoch validation symmetry
def test_validation_symmetry_by_hand():
    counts = torch.tensor([[8, 2, 0], [0, 9, 1], [0, 0, 0]])          # class 2 absent
    soft = torch.tensor([[7.0, 2.0, 1.0], [1.0, 8.0, 1.0], [0.0, 0.0, 0.0]])
    out = validation_symmetry(counts, soft)
    eps = 1 / 3
    # present pair (0, 1) only: hard a = 0.2, b = 0.0; soft a = 0.2, b = 0.1
    assert out["val_sym"] == pytest.approx(0.2 / (0.2 + eps) * 0.2)
    assert out["val_soft_sym"] == pytest.approx(0.1 / (0.3 + eps) * 0.3)
    assert out["val_asym_gap"] == pytest.approx(0.2)


def test_confusion_counts_soft_sums_are_the_softmax_of_the_same_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, K))
    x, y = torch.rand(20, 1, 6, 6), torch.arange(20) % K
    ds = torch.utils.data.TensorDataset(x, y)
    plain = confusion_counts(model, ds, K, device=torch.device("cpu"), batch_size=7)
    counts, sums = confusion_counts(model, ds, K, device=torch.device("cpu"), batch_size=7, soft=True)
    assert torch.equal(counts, plain)
    expected = torch.zeros(K, K, dtype=torch.float64).index_add(0, y, model(x).double().softmax(1))
    torch.testing.assert_close(sums, expected.detach())
    torch.testing.assert_close(sums.sum(1), counts.sum(1).double())


def test_engine_logs_validation_symmetry_per_epoch(tiny_cfg_dict, tmp_path):
    cfg = validate(tiny_cfg_dict, "tiny.yaml")
    res = run_seed(cfg, 0, workdir=tmp_path)
    for row in res.history:
        assert {"val_sym", "val_soft_sym", "val_asym_gap"} <= set(row)
        assert row["val_soft_sym"] >= 0 and row["val_sym"] >= 0


def test_engine_logs_gradient_norms_when_asked(tiny_cfg_dict, tmp_path):
    tiny_cfg_dict["defense"].update(grad_norms=True, sym_estimate="ema")
    res = run_seed(validate(tiny_cfg_dict, "tiny.yaml"), 0, workdir=tmp_path)
    for row in res.history:
        assert {"train_grad_norm_clean", "train_grad_norm_adv", "train_grad_norm_sym", "train_sym_batch"} <= set(row)


# ------------------------------------------------------------------ the shipped fine-tuning file
def test_shipped_digits_finetune_config_is_the_validation_choice(tmp_path):
    """tune_spaces/digits_syfar_finetune.yaml: the reference-code regime chosen on validation
    (README "Sy-FAR on digits"), and it cannot silently train from scratch: its init_from is a
    placeholder that fails before training unless overridden."""
    from pathlib import Path

    from distfair.config import load_config
    from distfair.experiment.run import resolve_init_from

    path = Path(__file__).resolve().parents[1] / "tune_spaces" / "digits_syfar_finetune.yaml"
    cfg = load_config(path)
    assert {k: cfg["defense"][k] for k in ("name", "lambda_clean", "lambda_adv", "lambda_sym", "sym_estimate")} == \
        {"name": "syfar", "lambda_clean": 0.1, "lambda_adv": 1.0, "lambda_sym": 10.0, "sym_estimate": "batch"}
    t = cfg["train"]
    assert (t["epochs"], t["batch_size"], t["lr"], t["schedule"], t["step_size"], t["gamma"]) == \
        (10, 16, 0.001, "step", 7, 0.1)
    pre = load_config(path.parent / "stability_digits.yaml")
    for block in ("dataset", "model", "attack", "eval"):
        assert cfg[block] == pre[block], block          # same data, model, threat model as the pretraining
    assert cfg["seeds"] == pre["seeds"]
    with pytest.raises(ValueError, match="REPLACE_WITH_PRETRAINING_RUN_ID"):
        resolve_init_from(cfg, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    ckpt = tmp_path / "last.pt"
    torch.save({"model": {}}, ckpt)          # read (weights_only) before anything starts: a real file
    overridden = load_config(path, [f"train.init_from={ckpt}"])
    assert set(resolve_init_from(overridden, "unused", tmp_path).values()) == {str(ckpt.resolve())}
