"""Sy-FAR on digits: why the symmetry regulariser can raise asymmetry (README "Sy-FAR on digits").

Single process, no Ray, no MLflow: a plain loop over :func:`distfair.engine.run_seed`.

    python scripts/syfar_diagnostics.py pretrain              # PGD-AT per seed (stability_digits.yaml)
    python scripts/syfar_diagnostics.py finetune ARM [ARM...]  # fine-tune each seed's model
    python scripts/syfar_diagnostics.py noise                 # per-batch estimate vs whole-set C_soft
    python scripts/syfar_diagnostics.py compare A B [--val-only]  # table; Welch's t-test of two arms
    python scripts/syfar_diagnostics.py history ARM...        # per-epoch means over seeds
    python scripts/syfar_diagnostics.py mass ARM... [--split val]  # whole-split pair masses
    python scripts/syfar_diagnostics.py steps                 # symmetry-term-only steps: batch vs whole set
    python scripts/syfar_diagnostics.py floor --split val --error-scale 1.9  # sym_loss noise floor
    python scripts/syfar_diagnostics.py cost                  # step cost of grad_norms / ema

Arms (``ARMS``) are fine-tuning settings; every arm's per-epoch history (``val_sym``,
``val_soft_sym``, ``train_sym``, gradient norms) and final test metrics go to
``OUT/<arm>/seed<k>.json``. Selection uses the validation columns only.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from distfair.config import read_document, validate
from distfair.engine import train as train_mod
from distfair.models import load_checkpoint   # torch.load(weights_only=True): the epoch checkpoints hold plain data

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "tune_spaces" / "stability_digits.yaml"
PAPER = {"name": "syfar", "lambda_clean": 0.1, "lambda_adv": 1.0, "lambda_sym": 10.0}
FT = {"epochs": 4, "lr": 0.001, "schedule": "none"}
#: arm -> (defense block, train overrides)
ARMS = {
    "pgd_at": ({"name": "pgd_at"}, FT),
    "syfar": ({**PAPER, "grad_norms": True}, FT),
    "syfar_ema": ({**PAPER, "sym_estimate": "ema", "sym_momentum": 0.9}, FT),
    "syfar_ema95": ({**PAPER, "sym_estimate": "ema", "sym_momentum": 0.95}, FT),
    "syfar_sym1": ({**PAPER, "lambda_sym": 1.0}, FT),
    "syfar_sym0": ({**PAPER, "lambda_sym": 0.0}, FT),   # same CE weights, no symmetry term
    "syfar_ema_sym1": ({**PAPER, "lambda_sym": 1.0, "sym_estimate": "ema"}, FT),
    "syfar_sym03": ({**PAPER, "lambda_sym": 0.3}, FT),
    "syfar_sym3": ({**PAPER, "lambda_sym": 3.0}, FT),
    "syfar_ema_sym03": ({**PAPER, "lambda_sym": 0.3, "sym_estimate": "ema"}, FT),
    "syfar_ema_sym3": ({**PAPER, "lambda_sym": 3.0, "sym_estimate": "ema"}, FT),
    # the reference code's regime (methods.md "Sy-FAR"): batch 16, lr 1e-3, StepLR(7, 0.1), 10 epochs
    "pgd_at_ref": ({"name": "pgd_at"}, {"epochs": 10, "lr": 0.001, "schedule": "step", "step_size": 7,
                                        "gamma": 0.1, "batch_size": 16}),
    "syfar_ref": (dict(PAPER), {"epochs": 10, "lr": 0.001, "schedule": "step", "step_size": 7,
                                "gamma": 0.1, "batch_size": 16}),
    "syfar_ref_sym1": ({**PAPER, "lambda_sym": 1.0}, {"epochs": 10, "lr": 0.001, "schedule": "step",
                                                      "step_size": 7, "gamma": 0.1, "batch_size": 16}),
    "syfar_ref_sym3": ({**PAPER, "lambda_sym": 3.0}, {"epochs": 10, "lr": 0.001, "schedule": "step",
                                                      "step_size": 7, "gamma": 0.1, "batch_size": 16}),
    "syfar_ref_ema": ({**PAPER, "sym_estimate": "ema", "sym_momentum": 0.97},
                      {"epochs": 10, "lr": 0.001, "schedule": "step", "step_size": 7, "gamma": 0.1,
                       "batch_size": 16}),
}
KEYS = ("robust_acc", "worst_class_acc", "acc_gap", "max_asym_gap", "sym_loss", "clean_acc")
VAL_KEYS = ("val_robust_acc", "val_sym", "val_soft_sym", "val_asym_gap")


def pretrain_cfg() -> dict:
    return validate(read_document(PRETRAIN), str(PRETRAIN))


def run(cfg: dict, seed: int, workdir: Path, init_from: Path | None) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    res = train_mod.run_seed(cfg, seed, workdir=workdir, init_from=init_from)
    return {"seed": seed, "metrics": res.metrics, "history": res.history}


def cmd_pretrain(args) -> None:
    cfg = pretrain_cfg()
    for seed in args.seeds:
        out = args.out / "pretrain" / f"seed{seed}.json"
        if out.exists():
            continue
        t0 = time.time()
        rec = run(cfg, seed, args.out / "pretrain" / f"seed{seed}", None)
        out.write_text(json.dumps(rec))
        print(f"pretrain seed {seed}: robust {rec['metrics']['robust_acc']:.3f} ({time.time() - t0:.0f}s)", flush=True)


def cmd_finetune(args) -> None:
    for arm in args.arms:
        defense, train = ARMS[arm]
        raw = read_document(PRETRAIN)
        raw["defense"] = copy.deepcopy(defense)
        raw["train"].update(train)
        cfg = validate(raw, f"{PRETRAIN} ({arm})")
        (args.out / arm).mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            out = args.out / arm / f"seed{seed}.json"
            if out.exists() and not args.force:
                continue
            t0 = time.time()
            rec = run(cfg, seed, args.out / arm / f"work{seed}", args.out / "pretrain" / f"seed{seed}" / "last.pt")
            out.write_text(json.dumps(rec))
            h = rec["history"]
            print(f"{arm} seed {seed} ({time.time() - t0:.0f}s): train_sym "
                  + " ".join(f"{r.get('train_sym', math.nan):.3f}" for r in h) + " | val_soft_sym "
                  + " ".join(f"{r['val_soft_sym']:.3f}" for r in h) + " | val_sym "
                  + " ".join(f"{r['val_sym']:.3f}" for r in h), flush=True)


def load(out: Path, arm: str) -> list[dict]:
    recs = [json.loads(p.read_text()) for p in sorted((out / arm).glob("seed*.json"))]
    for rec in recs:                       # records written before the per-epoch key was renamed
        for row in rec["history"]:
            if "val_max_asym_gap" in row:
                row["val_asym_gap"] = row.pop("val_max_asym_gap")
    return recs


def summary(args) -> None:
    from scipy.stats import ttest_ind
    arms = args.arms
    recs = {a: load(args.out, a) for a in arms}
    keys_test = () if args.val_only else KEYS
    print(f"{'arm':<16}{'n':>3}" + "".join(f"{k:>22}" for k in VAL_KEYS + keys_test))
    for a, rs in recs.items():
        vals = [[r["history"][-1].get(k, math.nan) for r in rs] for k in VAL_KEYS] + \
               [[r["metrics"][k] for r in rs] for k in keys_test]
        print(f"{a:<16}{len(rs):>3}" + "".join(f"{np.mean(v):>13.4f} ± {np.std(v, ddof=1):.4f}" for v in vals))
    if len(arms) == 2:
        a, b = arms
        for k in VAL_KEYS + keys_test:
            get = (lambda r, k=k: r["history"][-1][k]) if k.startswith("val_") else (lambda r, k=k: r["metrics"][k])
            x, y = [get(r) for r in recs[a]], [get(r) for r in recs[b]]
            t = ttest_ind(x, y, equal_var=False)
            print(f"{k:<20} {a} {np.mean(x):.4f} ± {np.std(x, ddof=1):.4f}  {b} {np.mean(y):.4f} ± "
                  f"{np.std(y, ddof=1):.4f}  Welch p = {t.pvalue:.3g}")


def cmd_history(args) -> None:
    for arm in args.arms:
        rs = load(args.out, arm)
        keys = [k for k in rs[0]["history"][0] if k.startswith(("train_", "val_"))]
        print(f"== {arm} (mean over {len(rs)} seeds per epoch)")
        for k in keys:
            cols = [np.mean([r["history"][e][k] for r in rs]) for e in range(len(rs[0]["history"]))]
            print(f"  {k:<24}" + " ".join(f"{c:8.4f}" for c in cols))


def cmd_noise(args) -> None:
    """Per-batch C_soft vs whole-set C_soft on the training set's adversarial examples, at the
    pretrained model: the upward bias of L_sym(batch estimate), and how far the per-batch
    gradient (w.r.t. C and w.r.t. θ) points from the whole-set one."""
    from distfair.attacks import build_attack
    from distfair.data import build_dataset
    from distfair.metrics import soft_confusion_matrix, symmetry_loss
    from distfair.models import build_model
    data = build_dataset("digits", split_seed=0)
    attack = build_attack("pgd", bounds=data.bounds, eps=0.1, steps=5)
    K = data.num_classes
    x_all, y_all = data.train.tensors
    rows = []
    for seed in args.seeds:
        model = build_model("digits_cnn", num_classes=K, in_shape=data.in_shape)
        state = load_checkpoint(args.out / (args.model_dir or "pretrain") / f"seed{seed}" / "last.pt"
                                if not args.model_dir else args.out / args.model_dir / f"work{seed}" / "last.pt")
        model.load_state_dict(state["model"])
        model.eval()   # BN in eval mode: the same function for every batch, so only sampling differs
        g = torch.Generator().manual_seed(seed)
        x_adv = attack(model, x_all, y_all, generator=g)
        params = [p for p in model.parameters()]

        def grad_of(idx):
            probs = model(x_adv[idx]).softmax(1)
            C = soft_confusion_matrix(probs, y_all[idx], K)
            L = symmetry_loss(C)
            gt = torch.autograd.grad(L, params)
            return L.item(), torch.cat([t.flatten() for t in gt]), C.detach()

        full = torch.arange(len(y_all))
        L_pop, g_pop, C_pop = grad_of(full)
        for bs in args.batch_sizes:
            perm_gen = torch.Generator().manual_seed(1000 + seed)
            Ls, gs = [], []
            for _ in range(args.draws):
                idx = torch.randperm(len(y_all), generator=perm_gen)[:bs]
                L, gt, _ = grad_of(idx)
                Ls.append(L)
                gs.append(gt)
            G = torch.stack(gs)
            g_mean = G.mean(0)
            cos_single = torch.nn.functional.cosine_similarity(G, g_pop.unsqueeze(0)).mean()
            cos_mean = torch.nn.functional.cosine_similarity(g_mean, g_pop, dim=0)
            rows.append({"seed": seed, "batch": bs, "L_pop": L_pop, "L_batch_mean": float(np.mean(Ls)),
                         "L_batch_std": float(np.std(Ls)), "gnorm_pop": float(g_pop.norm()),
                         "gnorm_batch_mean": float(G.norm(dim=1).mean()), "gnorm_of_mean": float(g_mean.norm()),
                         "cos_batch_vs_pop": float(cos_single), "cos_meanbatch_vs_pop": float(cos_mean)})
            print(json.dumps(rows[-1]), flush=True)
        # mass decomposition of the whole-set matrix: sum over pairs of max and min
        a = C_pop.triu(1)
        b = C_pop.T.triu(1)
        print(json.dumps({"seed": seed, "pairs_sum_max": float(torch.maximum(a, b).sum()),
                          "pairs_sum_min": float(torch.minimum(a, b).sum()),
                          "offdiag_mass": float(C_pop.sum() - C_pop.trace())}), flush=True)
    (args.out / f"noise_{args.model_dir or 'pretrain'}.json").write_text(json.dumps(rows))


def _load_model(path: Path, K: int, in_shape):
    from distfair.models import build_model
    model = build_model("digits_cnn", num_classes=K, in_shape=in_shape)
    model.load_state_dict(load_checkpoint(path)["model"])
    return model.eval()


def _pair_mass(C: torch.Tensor) -> dict:
    a, b = C.triu(1), C.T.triu(1)
    return {"L_soft": float(symmetry_loss_(C)), "sum_max": float(torch.maximum(a, b).sum()),
            "sum_min": float(torch.minimum(a, b).sum()), "offdiag": float(C.sum() - C.trace())}


def symmetry_loss_(C):
    from distfair.metrics import symmetry_loss
    return symmetry_loss(C)


def cmd_mass(args) -> None:
    """Whole-split soft confusion of each arm's final models (training attack, eval mode):
    L_sym, the sums over pairs of the larger and the smaller confusion, off-diagonal mass.
    Shows whether a fine-tuning lowered the larger confusions or raised the smaller ones."""
    from distfair.attacks import build_attack
    from distfair.data import build_dataset
    from distfair.metrics import soft_confusion_matrix
    data = build_dataset("digits", split_seed=0)
    attack = build_attack("pgd", bounds=data.bounds, eps=0.1, steps=5)
    K = data.num_classes
    split = getattr(data, args.split)
    x_all, y_all = split.tensors
    for arm in args.arms:
        rows = []
        for seed in args.seeds:
            path = (args.out / "pretrain" / f"seed{seed}" / "last.pt" if arm == "pretrain"
                    else args.out / arm / f"work{seed}" / "last.pt")
            model = _load_model(path, K, data.in_shape)
            x_adv = attack(model, x_all, y_all, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                C = soft_confusion_matrix(model(x_adv).softmax(1), y_all, K)
            rows.append(_pair_mass(C))
        print(f"{arm:<16} " + "  ".join(f"{k} {np.mean([r[k] for r in rows]):.4f} ± "
                                         f"{np.std([r[k] for r in rows], ddof=1):.4f}" for k in rows[0]), flush=True)


def cmd_steps(args) -> None:
    """Symmetry term alone (λ_sym 10, SGD lr 1e-3, momentum 0.9, eval-mode model, adversarial
    training set fixed at the pretrained model): steps on per-batch estimates (B = 64) vs
    steps on the whole training set's C_soft. Reports the whole-set L_sym and pair masses."""
    from distfair.attacks import build_attack
    from distfair.data import build_dataset
    from distfair.metrics import soft_confusion_matrix
    data = build_dataset("digits", split_seed=0)
    attack = build_attack("pgd", bounds=data.bounds, eps=0.1, steps=5)
    K = data.num_classes
    x_all, y_all = data.train.tensors
    for seed in args.seeds:
        base = _load_model(args.out / "pretrain" / f"seed{seed}" / "last.pt", K, data.in_shape)
        x_adv = attack(base, x_all, y_all, generator=torch.Generator().manual_seed(seed))
        for mode in ("batch64", "whole"):
            model = copy.deepcopy(base)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            perm_gen = torch.Generator().manual_seed(seed)
            trace = []
            for step in range(args.n_steps + 1):
                with torch.no_grad():
                    C = soft_confusion_matrix(model(x_adv).softmax(1), y_all, K)
                    acc = float((model(x_adv).argmax(1) == y_all).float().mean())
                if step % max(args.n_steps // 4, 1) == 0:
                    trace.append({"step": step, "robust_train_acc": acc, **_pair_mass(C)})
                idx = (torch.randperm(len(y_all), generator=perm_gen)[:64] if mode == "batch64"
                       else torch.arange(len(y_all)))
                Cb = soft_confusion_matrix(model(x_adv[idx]).softmax(1), y_all[idx], K)
                loss = 10.0 * symmetry_loss_(Cb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            print(json.dumps({"seed": seed, "mode": mode, "trace": trace}), flush=True)


def cmd_floor(args) -> None:
    """Noise floor of the hard ``sym_loss`` metric: for each pretrained model, symmetrise its
    hard robust confusion rates on ``--split`` (off-diagonal (R + R^T)/2, diagonal
    refilled), draw test-sized confusion matrices (the test set's per-class counts) from that
    perfectly symmetric truth, and report the mean ``sym_loss`` / ``max_asym_gap`` they show."""
    from distfair.attacks import build_attack
    from distfair.data import build_dataset
    from distfair.metrics import confusion_matrix, fairness_metrics
    data = build_dataset("digits", split_seed=0)
    attack = build_attack("pgd", bounds=data.bounds, eps=0.1, steps=5)
    K = data.num_classes
    x_all, y_all = getattr(data, args.split).tensors
    n_test = torch.bincount(data.test.tensors[1], minlength=K).numpy()
    rng = np.random.default_rng(0)
    out = []
    for seed in args.seeds:
        model = _load_model(args.out / "pretrain" / f"seed{seed}" / "last.pt", K, data.in_shape)
        x_adv = attack(model, x_all, y_all, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            R = confusion_matrix(y_all, model(x_adv).argmax(1), K).double()
        R = (R / R.sum(1, keepdim=True)).numpy()
        off = (R + R.T) / 2
        np.fill_diagonal(off, 0)
        off = off * args.error_scale              # e.g. to the error level of another split
        P = off + np.diag(1 - off.sum(1))
        sims = [fairness_metrics(np.stack([rng.multinomial(n_test[i], P[i]) for i in range(K)]))
                for _ in range(args.draws)]
        out.append({k: float(np.mean([m[k] for m in sims])) for k in ("sym_loss", "max_asym_gap", "acc")})
        print(json.dumps({"seed": seed, "n_per_class": n_test.tolist(), **out[-1]}), flush=True)
    print("mean over seeds: " + json.dumps({k: float(np.mean([o[k] for o in out])) for k in out[0]}))


def cmd_cost(args) -> None:
    """Per-step cost of ``grad_norms`` (and ``sym_estimate: ema``): digits CNN, batch 64,
    PGD-ℓ∞ 5 steps, interleaved repetitions, median ms."""
    from distfair.attacks import build_attack
    from distfair.data import build_dataset
    from distfair.defenses.syfar import SyFAR
    from distfair.models import build_model
    data = build_dataset("digits", split_seed=0)
    attack = build_attack("pgd", bounds=data.bounds, eps=0.1, steps=5)
    x, y = data.train.tensors[0][:64], data.train.tensors[1][:64]
    model = build_model("digits_cnn", num_classes=10, in_shape=data.in_shape).train()
    variants = {"batch": SyFAR(attack=attack, num_classes=10),
                "batch+grad_norms": SyFAR(attack=attack, num_classes=10, grad_norms=True),
                "ema": SyFAR(attack=attack, num_classes=10, sym_estimate="ema")}
    times = {k: [] for k in variants}
    for rep in range(args.draws):
        for key, d in variants.items():
            t0 = time.perf_counter()
            loss, _ = d.loss(model, x, y, generator=torch.Generator().manual_seed(rep))
            model.zero_grad()
            loss.backward()
            times[key].append(1000 * (time.perf_counter() - t0))
    base = np.median(times["batch"])
    for key, t in times.items():
        print(f"{key:<20} median {np.median(t):7.2f} ms  IQR {np.percentile(t, 25):.2f}-{np.percentile(t, 75):.2f}"
              f"  x batch {np.median(t) / base:.2f}")


def main() -> int:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["pretrain", "finetune", "compare", "history", "noise", "mass", "steps",
                                       "floor", "cost"])
    p.add_argument("arms", nargs="*")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=Path("/tmp/syfar_diag"))
    p.add_argument("--force", action="store_true")
    p.add_argument("--val-only", action="store_true", help="compare: validation columns only (for selection)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--draws", type=int, default=50)
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--n-steps", type=int, default=40)
    p.add_argument("--error-scale", type=float, default=1.0, help="floor: scale the symmetric error rates")
    p.add_argument("--model-dir", default=None, help="noise: an arm's fine-tuned models instead of pretrain")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    {"pretrain": cmd_pretrain, "finetune": cmd_finetune, "compare": summary, "history": cmd_history,
     "noise": cmd_noise, "mass": cmd_mass, "steps": cmd_steps, "floor": cmd_floor, "cost": cmd_cost}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
