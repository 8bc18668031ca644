"""onnxprune against Torch-Pruning on the same reference models and the same MACs.

    python tools/compare_torch_pruning.py --models resnet20 --keep 0.5 0.3

Torch-Pruning (pip `torch-pruning`, the `tools` extra) prunes the PyTorch reference model
(weights cached by tools/train_reference.py, or tools/train_vit.py for `vit`) with its
dependency graph and L1 magnitude importance to the same fraction of MACs as onnxprune's REAP;
its model is evaluated without fine-tuning and after `--finetune-epochs` epochs of fine-tuning
(cosine schedule; SGD for the CNNs, AdamW for the ViT, each as it was trained).
On the ViT, Torch-Pruning removes whole heads (the same number from every block, in proportion
to the MACs removed, rounded down) and FFN neurons (uniform ratio, bisected), and the hidden width
stays, as in onnxprune; its MACs are onnxprune's count of the pruned model's ONNX export, because
Torch-Pruning's own counter skips the attention MatMuls that removing a head shrinks too.
onnxprune prunes the exported ONNX model with no fine-tuning at all. Writes
docs/TORCH_PRUNING.md with the command that produced it.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
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

from train_reference import (DEFAULT_DATA_DIR, OPSET, augment, evaluate, load_fmnist, load_trained,  # noqa: E402
                             seed_everything)
from train_vit import ViT, decay_groups  # noqa: E402
from train_vit import load_trained as load_trained_vit  # noqa: E402


def load_model(name: str, cache: str) -> nn.Module:
    return load_trained_vit(cache) if name == "vit" else load_trained(name, cache)


def macs_of(model: nn.Module) -> int:
    """MACs of one image: Torch-Pruning's count for a CNN; onnxprune's count of the ONNX export for
    the ViT, whose attention MatMuls (torch.matmul, no module) Torch-Pruning does not count."""
    if isinstance(model, ViT):
        return onnx_macs(model)
    example = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs)


def onnx_macs(model: nn.Module) -> int:
    """onnxprune's MACs of the model exported as tools/train_vit.py exports it, at batch 1."""
    import onnx
    from onnxprune import cost_of, normalize

    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(2, 1, 28, 28, dtype=torch.uint8),), buffer, dynamo=False,
                      opset_version=OPSET, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    normalized, _ = normalize(onnx.load_from_string(buffer.getvalue()))
    return cost_of(normalized, {"image": (1, 1, 28, 28)}).macs


def classifier(model: nn.Module) -> nn.Module:
    """The last Linear layer: its outputs are the classes, never pruned."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def magnitude_prune(model: nn.Module, ratio: float, head_ratio: float = 0.0) -> None:
    """Remove ``ratio`` of every group's channels in place (Torch-Pruning, L1 magnitude); from the
    ViT, ``ratio`` of every FFN's neurons and ``head_ratio`` of every block's heads, whole."""
    example = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    importance = tp.importance.MagnitudeImportance(p=1)
    if not isinstance(model, ViT):
        tp.pruner.MagnitudePruner(model, example, importance=importance, pruning_ratio=ratio,
                                  ignored_layers=[classifier(model)]).step()
        return
    attention = [block.attention for block in model.blocks]
    heads = {linear: a.heads for a in attention for linear in (a.query, a.key, a.value)}
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=importance, pruning_ratio=ratio, num_heads=heads, prune_num_heads=True,
        prune_head_dims=False, head_pruning_ratio=head_ratio, unwrapped_parameters=[(model.position, 2)],
        # the patch embedding's outputs are the residual stream: the hidden width stays, as in onnxprune
        ignored_layers=[model.head, model.patch_embed])
    pruner.step()
    for a in attention:  # the head count forward() reshapes by (Torch-Pruning issues 101, 340, 410)
        a.heads = pruner.num_heads[a.query]


def head_ratio_for(model: nn.Module, keep: float) -> float:
    """The fraction of each block's heads removed at ``keep`` of the MACs: floor((1 - keep) * heads)
    / heads, whole heads in proportion to the MACs removed (the FFN neurons make up the rest)."""
    if not isinstance(model, ViT):
        return 0.0
    heads = model.blocks[0].attention.heads
    return math.floor((1 - keep) * heads + 1e-9) / heads


def structure(model: nn.Module) -> str:
    """What the ViT kept, per block: heads and FFN neurons, "3h/192" (empty for a CNN)."""
    if not isinstance(model, ViT):
        return ""
    kept = [f"{b.attention.heads}h/{b.fc1.out_features}" for b in model.blocks]
    return f"{kept[0]} in every block" if len(set(kept)) == 1 else ", ".join(kept)


def torch_prune(model: nn.Module, keep: float) -> nn.Module:
    """Torch-Pruning, L1 magnitude, uniform ratio bisected so that MACs <= keep * original (the ViT's
    heads: see head_ratio_for)."""
    base = macs_of(model)
    lo, hi, best = 0.0, 0.99, None
    for _ in range(12):
        ratio = (lo + hi) / 2
        trial = copy.deepcopy(model)
        magnitude_prune(trial, ratio, head_ratio_for(model, keep))
        if macs_of(trial) <= keep * base:
            hi, best = ratio, trial
        else:
            lo = ratio
    return best


def finetune_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """SGD for a CNN; for the ViT AdamW as tools/train_vit.py trains it (no decay on biases,
    LayerNorms and the position embedding) at a quarter of its peak learning rate."""
    if not isinstance(model, ViT):
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return torch.optim.AdamW(decay_groups(model, 0.05), lr=5e-4)


def finetune(model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int, seed: int = 0) -> float:
    gen = seed_everything(seed)
    x, y = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
    steps = epochs * (len(x) // 128)
    opt = finetune_optimizer(model)
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
        original = load_model(name, args.cache)
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
             f"Torch-Pruning {tp.__version__}: MagnitudePruner, L1 importance, dependency graph, uniform ratio "
             "(the ViT: whole heads in proportion to the MACs removed, and FFN neurons); "
             f"fine-tuning: {args.finetune_epochs} epoch(s) of SGD (lr 0.01) for the CNNs, AdamW (lr 5e-4) for the "
             "ViT, cosine, augmentation as in training.",
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
