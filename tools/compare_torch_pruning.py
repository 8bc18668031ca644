"""onnxprune against Torch-Pruning on the same reference models and the same MACs.

    python tools/compare_torch_pruning.py --models resnet20 --keep 0.5 0.3

Torch-Pruning (pip `torch-pruning`, the `tools` extra) prunes the PyTorch reference model
(weights cached by tools/train_reference.py) with its dependency graph and L1 magnitude
importance to the same fraction of MACs as onnxprune's REAP; its model is evaluated
without fine-tuning and after `--finetune-epochs` epochs of fine-tuning (SGD, cosine).
onnxprune prunes the exported ONNX model with no fine-tuning at all. Writes
docs/TORCH_PRUNING.md with the command that produced it.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_reference import (DEFAULT_DATA_DIR, augment, evaluate, load_fmnist, load_trained,  # noqa: E402
                             seed_everything)


def macs_of(model: nn.Module) -> int:
    example = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs)


def classifier(model: nn.Module) -> nn.Module:
    """The last Linear layer: its outputs are the classes, never pruned."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def torch_prune(model: nn.Module, keep: float) -> nn.Module:
    """Torch-Pruning, L1 magnitude, uniform ratio bisected so that MACs <= keep * original."""
    example = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    base = macs_of(model)
    lo, hi, best = 0.0, 0.99, None
    for _ in range(12):
        ratio = (lo + hi) / 2
        trial = copy.deepcopy(model)
        pruner = tp.pruner.MagnitudePruner(trial, example, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=[classifier(trial)])
        pruner.step()
        if macs_of(trial) <= keep * base:
            hi, best = ratio, trial
        else:
            lo = ratio
    return best


def finetune(model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int, seed: int = 0) -> float:
    gen = seed_everything(seed)
    x, y = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
    steps = epochs * (len(x) // 128)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - 127, 128):
            idx = order[i:i + 128]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(augment(x[idx], gen)), y[idx])
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return time.perf_counter() - start


def onnxprune_reap(name: str, keep: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pruned.onnx"
        model = ROOT / "models" / f"{name}_fmnist.onnx"
        prune = subprocess.run([sys.executable, "-m", "onnxprune", "prune", str(model), "-o", str(out), "--method",
                                "reap", "--calib", str(ROOT / "models" / "fmnist_calib.npz"), "--keep-flops",
                                str(keep), "--no-pro", "--json", "-q"], capture_output=True, text=True, check=True)
        report = json.loads(prune.stdout)
        ev = subprocess.run([sys.executable, "-m", "onnxprune", "eval", str(out), "--data",
                             str(ROOT / "models" / "fmnist_test.npz"), "--json"], capture_output=True, text=True,
                            check=True)
        return {"macs_kept": report["macs_after"] / report["macs_before"], "accuracy": json.loads(ev.stdout)["accuracy"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20"])
    p.add_argument("--keep", nargs="+", type=float, default=[0.5, 0.3])
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--cache", default="/work/cache", help="where train_reference.py saved the state_dicts")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "TORCH_PRUNING.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x_train, y_train = load_fmnist(args.data_dir, "train")
    x_test, y_test = load_fmnist(args.data_dir, "test")
    xt, yt = torch.from_numpy(x_test), torch.from_numpy(y_test.astype(np.int64))
    rows = []
    for name in args.models:
        original = load_trained(name, args.cache)
        base_acc = evaluate(original, xt, yt)
        base_macs = macs_of(original)
        for keep in args.keep:
            pruned = torch_prune(original, keep)
            kept = macs_of(pruned) / base_macs
            no_ft = evaluate(pruned, xt, yt)
            seconds = finetune(pruned, x_train, y_train, args.finetune_epochs)
            ft = evaluate(pruned, xt, yt)
            ours = onnxprune_reap(name, keep)
            row = {"model": name, "keep": keep, "original": base_acc, "tp_macs_kept": kept, "tp_no_finetune": no_ft,
                   "tp_finetuned": ft, "finetune_s": seconds, "reap_macs_kept": ours["macs_kept"],
                   "reap": ours["accuracy"]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    command = "python tools/compare_torch_pruning.py " + " ".join(sys.argv[1:])
    lines = ["# onnxprune vs Torch-Pruning", "", f"Produced by `{command.strip()}` on {time.strftime('%Y-%m-%d')}.",
             f"Torch-Pruning {tp.__version__}: MagnitudePruner, L1 importance, dependency graph, uniform ratio; "
             f"fine-tuning: {args.finetune_epochs} epoch(s) of SGD (lr 0.01, cosine, augmentation as in training).",
             "onnxprune: `--method reap --keep-flops F` on the exported ONNX model, 1024 calibration images, "
             "no fine-tuning. Accuracy: full Fashion-MNIST test set.", "",
             "| model | kept MACs | original | Torch-Pruning, no fine-tuning | Torch-Pruning, fine-tuned "
             "| onnxprune REAP, no fine-tuning |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['keep']} (TP {r['tp_macs_kept']:.3f}, REAP {r['reap_macs_kept']:.3f}) "
                     f"| {100 * r['original']:.2f}% | {100 * r['tp_no_finetune']:.2f}% "
                     f"| {100 * r['tp_finetuned']:.2f}% ({r['finetune_s']:.0f} s) | {100 * r['reap']:.2f}% |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
