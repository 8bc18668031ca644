#!/usr/bin/env python3
"""Train onnxprune's reference ViT on Fashion-MNIST and export it to ONNX.

A development tool like tools/train_reference.py (it needs the ``tools`` extra, i.e. torch),
whose data loading, augmentation and ONNX tidying it reuses. The model is written out in plain
torch modules, the way HuggingFace writes BERT: Q, K and V are separate Linears whose outputs are
reshaped to [B, S, heads, head_dim] and transposed, attention is MatMul/Softmax/MatMul, the
heads are merged back by Transpose/Reshape into the output Linear. The exporter then writes
plain MatMul/Add/Reshape/Transpose/Softmax nodes and the Erf form of Gelu, which onnxprune's
transformer groups match (nn.MultiheadAttention would export a fused, packed-QKV pattern).

Subcommands::

    probe   time a few training batches, extrapolate s/epoch
    train   train; save the state_dict and a JSON log to --cache
    export  export the cached model to models/vit_fmnist.onnx and verify it

The exported model takes uint8 pixels ``image`` [N,1,28,28] (dynamic N), normalises them in the
graph like the CNN references, and outputs ``logits`` [N,10].
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_reference import (DEFAULT_DATA_DIR, INPUT_NAME, NUM_CLASSES, OPSET, OUTPUT_NAME,  # noqa: E402
                             Normalize, augment, evaluate, load_fmnist, seed_everything, tidy_onnx)

NAME = "vit"


@dataclass(frozen=True)
class VitSpec:
    """The architecture: ``patch``-pixel patches (28 / patch tokens a side) embedded by a Conv to
    ``hidden`` features, ``blocks`` pre-norm blocks of ``heads``-head attention and an FFN of
    ``ffn`` neurons, a final LayerNorm, mean pooling over the tokens and a Linear classifier."""

    patch: int = 4
    hidden: int = 64
    blocks: int = 4
    heads: int = 4
    ffn: int = 256

    @property
    def tokens(self) -> int:
        return (28 // self.patch) ** 2


class SelfAttention(nn.Module):
    """Multi-head self-attention as HuggingFace's BertSelfAttention + BertSelfOutput's dense."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.output = nn.Linear(hidden, hidden)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, hidden] -> [B, heads, S, head_dim]"""
        return x.view(x.size()[:-1] + (self.heads, self.head_dim)).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        context = torch.matmul(scores.softmax(dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return self.output(context.view(context.size()[:-2] + (self.heads * self.head_dim,)))


class Block(nn.Module):
    def __init__(self, spec: VitSpec):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(spec.hidden), nn.LayerNorm(spec.hidden)
        self.attention = SelfAttention(spec.hidden, spec.heads)
        self.fc1, self.act, self.fc2 = nn.Linear(spec.hidden, spec.ffn), nn.GELU(), nn.Linear(spec.ffn, spec.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, spec: VitSpec = VitSpec()):
        super().__init__()
        self.normalize = Normalize()
        self.patch_embed = nn.Conv2d(1, spec.hidden, spec.patch, stride=spec.patch)
        self.position = nn.Parameter(torch.randn(1, spec.tokens, spec.hidden) * 0.02)
        self.blocks = nn.Sequential(*(Block(spec) for _ in range(spec.blocks)))
        self.norm = nn.LayerNorm(spec.hidden)
        self.head = nn.Linear(spec.hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.normalize(x)).flatten(2).transpose(1, 2) + self.position
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


def load_trained(cache: str | Path) -> nn.Module:
    """The ViT saved by `train` in cache/vit.pt (with its spec from cache/vit.json), in eval mode."""
    log = json.loads((Path(cache) / f"{NAME}.json").read_text())
    model = ViT(VitSpec(**log["spec"]))
    model.load_state_dict(torch.load(Path(cache) / f"{NAME}.pt", map_location="cpu"))
    return model.eval()


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups: weight decay on the weight matrices and kernels only (not on biases,
    LayerNorms and the position embedding)."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and n != "position"]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and n != "position")]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, args, steps_per_epoch: int):
    """AdamW (no weight decay on biases, LayerNorm and position embeddings) with a OneCycle schedule."""
    opt = torch.optim.AdamW(decay_groups(model, args.weight_decay), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=args.warmup, div_factor=10.0, final_div_factor=100.0)
    return opt, sched


def spec_of(args) -> VitSpec:
    return VitSpec(patch=args.patch, hidden=args.hidden, blocks=args.blocks, heads=args.heads, ffn=args.ffn)


def cmd_probe(args) -> None:
    torch.set_num_threads(args.threads)
    gen = seed_everything(args.seed)
    x_train, y_train = (torch.from_numpy(a) for a in load_fmnist(args.data_dir, "train"))
    model = ViT(spec_of(args)).train()
    args.epochs = 1
    opt, sched = make_optimizer(model, args, args.batches + 5)
    crit = nn.CrossEntropyLoss()
    times = []
    for i in range(args.batches + 3):  # 3 warm-up steps
        idx = torch.randint(0, len(x_train), (args.batch_size,), generator=gen)
        t0 = time.perf_counter()
        loss = crit(model(augment(x_train[idx], gen)), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        times.append(time.perf_counter() - t0)
    per_batch = float(np.mean(times[3:]))
    print(f"{spec_of(args)}: {sum(p.numel() for p in model.parameters())} params, "
          f"{per_batch * 1000:.1f} ms/batch, ~{per_batch * len(x_train) // args.batch_size:.0f} s/epoch", flush=True)


def cmd_train(args) -> None:
    torch.set_num_threads(args.threads)
    gen = seed_everything(args.seed)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    x_train, y_train = (torch.from_numpy(a) for a in load_fmnist(args.data_dir, "train"))
    x_test, y_test = (torch.from_numpy(a) for a in load_fmnist(args.data_dir, "test"))
    spec = spec_of(args)
    model = ViT(spec)
    steps = len(x_train) // args.batch_size  # drop the last partial batch
    opt, sched = make_optimizer(model, args, steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    recipe = {k: v for k, v in vars(args).items() if k not in ("func", "cmd", "cache", "out")}
    log = {"model": NAME, "spec": asdict(spec), "params": sum(p.numel() for p in model.parameters()),
           "args": recipe, "torch": torch.__version__, "epochs": [], "total_train_s": 0.0, "total_cpu_s": 0.0}
    print(f"{spec}: {log['params']} parameters, {steps} steps/epoch, {args.epochs} epochs", flush=True)
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0, cpu0 = time.perf_counter(), time.process_time()
        perm = torch.randperm(len(x_train), generator=gen)
        loss_sum, correct = 0.0, 0
        for i in range(steps):
            idx = perm[i * args.batch_size: (i + 1) * args.batch_size]
            out = model(augment(x_train[idx], gen))
            loss = criterion(out, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += loss.item()
            correct += (out.argmax(1) == y_train[idx]).sum().item()
        test_acc = evaluate(model, x_test, y_test)
        epoch_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        log["total_train_s"] = round(log["total_train_s"] + epoch_s, 1)
        log["total_cpu_s"] = round(log["total_cpu_s"] + cpu_s, 1)
        log["final_test_acc"] = test_acc
        log["epochs"].append({"epoch": epoch, "loss": loss_sum / steps, "train_acc": correct / (steps * args.batch_size),
                              "test_acc": test_acc, "epoch_s": round(epoch_s, 1), "cpu_s": round(cpu_s, 1)})
        print(f"epoch {epoch}/{args.epochs}  loss {loss_sum / steps:.4f}  test {test_acc:.4f}  "
              f"({epoch_s:.0f}s wall, {cpu_s:.0f}s CPU; total {log['total_train_s']:.0f}s)", flush=True)
        torch.save(model.state_dict(), cache / f"{NAME}.pt")
        (cache / f"{NAME}.json").write_text(json.dumps(log, indent=1))
    print(f"done: test acc {log['final_test_acc']:.4f}, {log['total_train_s']:.0f}s wall, "
          f"{log['total_cpu_s']:.0f}s CPU, {args.threads} threads", flush=True)


def cmd_export(args) -> None:
    import onnx
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    model = load_trained(args.cache)
    out = Path(args.out) / f"{NAME}_fmnist.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter: plain MatMul/Softmax/Reshape and LayerNormalization at opset 17.
    torch.onnx.export(model, (torch.zeros(2, 1, 28, 28, dtype=torch.uint8),), str(out), dynamo=False,
                      opset_version=OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}}, do_constant_folding=True)
    tidy_onnx(out)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    print(f"{out}: {out.stat().st_size} bytes, opset {proto.opset_import[0].version}")
    print(f"ops: {dict(sorted(ops.items()))}")
    x_test, y_test = load_fmnist(args.data_dir, "test")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test[:256])).numpy()
    max_diff = float(np.abs(ref - sess.run([OUTPUT_NAME], {INPUT_NAME: x_test[:256]})[0]).max())
    print(f"max |torch - onnxruntime| on 256 test images: {max_diff:.2e}")
    if max_diff > 1e-4:
        raise SystemExit("ONNX logits differ from torch logits by more than 1e-4")
    preds = np.concatenate([sess.run([OUTPUT_NAME], {INPUT_NAME: x_test[i: i + 1000]})[0].argmax(1)
                            for i in range(0, len(x_test), 1000)])
    print(f"onnxruntime test accuracy (10000 images): {float((preds == y_test).mean()):.4f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
        sp.add_argument("--threads", type=int, default=2)
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--cache", default="/work/cache", help="where the state_dict and log go")
        sp.add_argument("--out", default="models", help="where the ONNX model goes")

    def recipe(sp):
        sp.add_argument("--patch", type=int, default=VitSpec.patch, choices=(4, 7))
        sp.add_argument("--hidden", type=int, default=VitSpec.hidden)
        sp.add_argument("--blocks", type=int, default=VitSpec.blocks)
        sp.add_argument("--heads", type=int, default=VitSpec.heads)
        sp.add_argument("--ffn", type=int, default=VitSpec.ffn)
        sp.add_argument("--batch-size", type=int, default=128)
        sp.add_argument("--lr", type=float, default=2e-3, help="peak (OneCycle) learning rate")
        sp.add_argument("--weight-decay", type=float, default=0.05)
        sp.add_argument("--warmup", type=float, default=0.15, help="OneCycle pct_start")
        sp.add_argument("--label-smoothing", type=float, default=0.1)

    sp = sub.add_parser("probe", help="time training batches")
    common(sp)
    recipe(sp)
    sp.add_argument("--batches", type=int, default=20)
    sp.set_defaults(func=cmd_probe)

    sp = sub.add_parser("train", help="train the ViT")
    common(sp)
    recipe(sp)
    sp.add_argument("--epochs", type=int, default=5)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("export", help="export the trained ViT to ONNX and verify it")
    common(sp)
    sp.set_defaults(func=cmd_export)

    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
