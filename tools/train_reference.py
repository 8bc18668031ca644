#!/usr/bin/env python3
"""Train onnxprune's reference CNNs on Fashion-MNIST and export them to ONNX.

This is a development tool (it needs the ``tools`` extra, i.e. torch); the
onnxprune package and its tests never import it.  Other tools may import
``build_model`` from here to reload the cached PyTorch weights.

Subcommands::

    data    write models/fmnist_calib.npz and models/fmnist_test.npz
    probe   time a few training batches of each model, extrapolate s/epoch
    train   train one model; save its state_dict and a JSON log to --cache
    export  export a cached model to models/<name>_fmnist.onnx and verify it

Every exported model takes uint8 pixels ``image`` [N,1,28,28] (dynamic N)
and normalises them inside the graph: Cast -> (x/255 - mean)/std.  Its
output is ``logits`` [N,10].
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
MODEL_NAMES = ("resnet20", "resnet56", "vgg16", "mobilenetv2", "densenet")
# Fashion-MNIST training-set pixel statistics (on the [0,1] scale).
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
NUM_CLASSES = 10
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 17
# Models exported with BatchNorm folded into the preceding conv; the others
# keep their BatchNormalization nodes separate in the ONNX graph.
FUSE_BN_ON_EXPORT = {"resnet20": False, "mobilenetv2": False, "vgg16": True, "resnet56": True, "densenet": True}


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_idx(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (data_dir / name).exists():
            return data_dir / name
    raise FileNotFoundError(f"{stem}[.gz] not found in {data_dir}")


def load_fmnist(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N,1,28,28], labels int64 [N]) of 'train' or 'test'."""
    prefix = {"train": "train", "test": "t10k"}[split]
    data_dir = Path(data_dir)
    images = read_idx(find_idx(data_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find_idx(data_dir, f"{prefix}-labels-idx1-ubyte"))
    return images[:, None, :, :].copy(), labels.astype(np.int64)


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of n samples, as evenly spread over the classes as possible."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    picked = [rng.choice(np.flatnonzero(labels == c), k, replace=False)
              for c, k in zip(classes, per_class)]
    return np.sort(np.concatenate(picked))


# --------------------------------------------------------------------------
# Architectures (CIFAR-style, adapted to 28x28 grayscale)
# --------------------------------------------------------------------------
class Normalize(nn.Module):
    """uint8 (or float) pixels in [0,255] -> standardised float32."""

    def __init__(self, mean: float = FMNIST_MEAN, std: float = FMNIST_STD):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) / 255.0 - self.mean) / self.std


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:  # projection shortcut (option B)
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, k=1, stride=stride))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) of He et al. (2016), widths 16/32/64."""

    def __init__(self, blocks_per_stage: int, widths=(16, 32, 64)):
        super().__init__()
        self.normalize = Normalize()
        self.stem = nn.Sequential(*conv_bn(1, widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for stage, w in enumerate(widths):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(cin, w, stride=2 if stage > 0 and i == 0 else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, NUM_CLASSES)

    def forward(self, x):
        x = self.layers(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class VGG16(nn.Module):
    """13 conv3x3+BN+ReLU in stages of 2,2,3,3,3; max-pool after stages 1-3
    (28->14->7->3); Flatten of the 3x3 map -> Linear -> ReLU -> Linear."""

    def __init__(self, widths=(16, 32, 64, 96, 96), hidden: int = 128):
        super().__init__()
        self.normalize = Normalize()
        layers, cin = [], 1
        for stage, (n_convs, w) in enumerate(zip((2, 2, 3, 3, 3), widths)):
            for _ in range(n_convs):
                layers += [*conv_bn(cin, w), nn.ReLU()]
                cin = w
            if stage < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(cin * 3 * 3, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*conv_bn(cin, hidden, k=1), nn.ReLU6()]
        layers += [*conv_bn(hidden, hidden, k=3, stride=stride, groups=hidden), nn.ReLU6()]
        layers += conv_bn(hidden, cout, k=1)  # linear bottleneck
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """A narrow MobileNetV2 (Sandler et al., 2018) for 28x28 inputs."""

    # (expansion t, output channels c, repeats n, first stride s)
    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 3, 1), (6, 96, 2, 2))

    def __init__(self, stem: int = 16, last: int = 256):
        super().__init__()
        self.normalize = Normalize()
        layers: list[nn.Module] = [*conv_bn(1, stem), nn.ReLU6()]
        cin = stem
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [*conv_bn(cin, last, k=1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, NUM_CLASSES)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(self.normalize(x))), 1))


class DenseNet(nn.Module):
    """A small DenseNet with post-activation layers (conv-bn-relu, as in CSP/C2f necks): each
    layer reads the Concat of everything before it in its stage; 1x1 transitions halve the
    channels, then average-pool. Its convolutions read several channel groups at once."""

    def __init__(self, stem: int = 16, growth: int = 16, layers: int = 4, stages: int = 3):
        super().__init__()
        self.normalize = Normalize()
        self.stem = nn.Sequential(*conv_bn(1, stem), nn.ReLU())
        self.stages, self.transitions = nn.ModuleList(), nn.ModuleList()
        width = stem
        for s in range(stages):
            stage = nn.ModuleList()
            for _ in range(layers):
                stage.append(nn.Sequential(*conv_bn(width, growth), nn.ReLU()))
                width += growth
            self.stages.append(stage)
            if s < stages - 1:
                self.transitions.append(nn.Sequential(*conv_bn(width, width // 2, k=1), nn.ReLU(), nn.AvgPool2d(2)))
                width //= 2
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, NUM_CLASSES)

    def forward(self, x):
        x = self.stem(self.normalize(x))
        for s, stage in enumerate(self.stages):
            for layer in stage:
                x = torch.cat([x, layer(x)], 1)
            if s < len(self.transitions):
                x = self.transitions[s](x)
        return self.fc(torch.flatten(self.pool(x), 1))


def build_model(name: str) -> nn.Module:
    """Build one reference architecture (untrained). Input: pixels [N,1,28,28] in [0,255]."""
    if name == "resnet20":
        return ResNetCifar(3)
    if name == "resnet56":
        return ResNetCifar(9)
    if name == "vgg16":
        return VGG16()
    if name == "mobilenetv2":
        return MobileNetV2()
    if name == "densenet":
        return DenseNet()
    raise ValueError(f"unknown model {name!r}; choose from {MODEL_NAMES}")


def load_trained(name: str, cache: str | Path) -> nn.Module:
    """build_model(name) with the weights saved by `train` in cache/<name>.pt, in eval mode."""
    model = build_model(name)
    model.load_state_dict(torch.load(Path(cache) / f"{name}.pt", map_location="cpu"))
    return model.eval()


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------
def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with `pad`-pixel zero padding + random horizontal flip (uint8 batch)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [n,h,1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [n,1,w]
    out = padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        correct += (model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum().item()
    return correct / len(images)


def make_optimizer(model: nn.Module, args, steps_per_epoch: int):
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=args.warmup, div_factor=10.0, final_div_factor=100.0)
    return opt, sched


def train_step(model, opt, sched, criterion, xb, yb) -> tuple[float, int]:
    loss_out = model(xb)
    loss = criterion(loss_out, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.item(), (loss_out.argmax(1) == yb).sum().item()


def cmd_train(args) -> None:
    """Train one model. After every epoch it saves the weights (<cache>/<model>.pt), a
    JSON log (<cache>/<model>.json) and a resumable checkpoint (<cache>/<model>.ckpt);
    `--resume` continues from the checkpoint and gives the same result as an
    uninterrupted run."""
    torch.set_num_threads(args.threads)
    gen = seed_everything(args.seed)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    x_train, y_train = (torch.from_numpy(a) for a in load_fmnist(args.data_dir, "train"))
    x_test, y_test = (torch.from_numpy(a) for a in load_fmnist(args.data_dir, "test"))
    if args.train_subset:  # smoke tests only
        x_train, y_train = x_train[: args.train_subset], y_train[: args.train_subset]

    model = build_model(args.model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps = len(x_train) // args.batch_size  # drop the last partial batch
    opt, sched = make_optimizer(model, args, steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    n_params = sum(p.numel() for p in model.parameters())
    recipe = {k: v for k, v in vars(args).items() if k not in ("func", "cmd", "resume", "cache", "out")}
    log = {"model": args.model, "params": n_params, "args": recipe, "torch": torch.__version__,
           "epochs": [], "total_train_s": 0.0, "total_cpu_s": 0.0}
    ckpt_path = cache / f"{args.model}.ckpt"
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if {k: v for k, v in ckpt["log"]["args"].items() if k not in ("threads", "data_dir")} != \
                {k: v for k, v in recipe.items() if k not in ("threads", "data_dir")}:
            raise SystemExit(f"{ckpt_path} was made with other arguments: {ckpt['log']['args']}")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        gen.set_state(ckpt["gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        log = ckpt["log"]
        print(f"resuming after epoch {len(log['epochs'])}", flush=True)
    print(f"{args.model}: {n_params} parameters, {steps} steps/epoch, {args.epochs} epochs", flush=True)

    for epoch in range(len(log["epochs"]) + 1, args.epochs + 1):
        model.train()
        t0, cpu0 = time.perf_counter(), time.process_time()
        perm = torch.randperm(len(x_train), generator=gen)
        loss_sum, correct = 0.0, 0
        for i in range(steps):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            xb = augment(x_train[idx], gen)
            if args.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss, c = train_step(model, opt, sched, criterion, xb, y_train[idx])
            loss_sum += loss
            correct += c
        test_acc = evaluate(model, x_test, y_test)
        epoch_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        log["total_train_s"] = round(log["total_train_s"] + epoch_s, 1)
        log["total_cpu_s"] = round(log["total_cpu_s"] + cpu_s, 1)  # all threads: robust to a busy machine
        log["final_test_acc"] = test_acc
        rec = {"epoch": epoch, "loss": loss_sum / steps, "train_acc": correct / (steps * args.batch_size),
               "test_acc": test_acc, "epoch_s": round(epoch_s, 1), "cpu_s": round(cpu_s, 1),
               "elapsed_s": log["total_train_s"]}
        log["epochs"].append(rec)
        print(f"epoch {epoch:3d}/{args.epochs}  loss {rec['loss']:.4f}  train {rec['train_acc']:.4f}  "
              f"test {test_acc:.4f}  ({epoch_s:.0f}s wall, {cpu_s:.0f}s CPU; "
              f"total {log['total_train_s']:.0f}s wall)", flush=True)
        torch.save(model.state_dict(), cache / f"{args.model}.pt")
        (cache / f"{args.model}.json").write_text(json.dumps(log, indent=1))
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "log": log}, ckpt_path)
    print(f"done: test acc {log['final_test_acc']:.4f}, total {log['total_train_s']:.0f}s "
          f"({log['total_train_s'] / 60:.1f} min) wall, {log['total_cpu_s']:.0f}s CPU, "
          f"{args.threads} threads", flush=True)


def cmd_probe(args) -> None:
    """Time `--batches` training steps of each model and extrapolate seconds/epoch."""
    torch.set_num_threads(args.threads)
    x_train, y_train = (torch.from_numpy(a) for a in load_fmnist(args.data_dir, "train"))
    steps_per_epoch = len(x_train) // args.batch_size
    for name in args.models:
        gen = seed_everything(0)
        model = build_model(name).train()
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        args.epochs = 1
        opt, sched = make_optimizer(model, args, args.batches + 5)
        crit = nn.CrossEntropyLoss()
        perm = torch.randperm(len(x_train), generator=gen)
        times = []
        for i in range(args.batches + 3):  # 3 warm-up steps
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            t0 = time.perf_counter()
            xb = augment(x_train[idx], gen)
            if args.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            train_step(model, opt, sched, crit, xb, y_train[idx])
            times.append(time.perf_counter() - t0)
        per_batch = float(np.mean(times[3:]))
        print(f"{name:12s} {sum(p.numel() for p in model.parameters()):8d} params  "
              f"{per_batch * 1000:7.1f} ms/batch  ~{per_batch * steps_per_epoch:6.0f} s/epoch "
              f"(batch {args.batch_size}, {args.threads} threads)", flush=True)


# --------------------------------------------------------------------------
# Data files, export and verification
# --------------------------------------------------------------------------
def cmd_data(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_fmnist(args.data_dir, "train")
    x_test, y_test = load_fmnist(args.data_dir, "test")
    idx = balanced_subset(y_train, args.calib_size, args.seed)
    np.savez_compressed(out / "fmnist_calib.npz", **{INPUT_NAME: x_train[idx], "labels": y_train[idx]})
    np.savez_compressed(out / "fmnist_test.npz", **{INPUT_NAME: x_test, "labels": y_test})
    print(f"calib: {len(idx)} training images, per class {np.bincount(y_train[idx]).tolist()}")
    print(f"test: {len(x_test)} images")


def fuse_bn(model: nn.Module) -> nn.Module:
    """Fold every Conv2d -> BatchNorm2d pair (adjacent in a module) into the conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for parent in model.modules():
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = nn.Identity()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise RuntimeError("some BatchNorm2d could not be fused")
    return model


def export_onnx(model: nn.Module, path: Path, exporter: str) -> None:
    dummy = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    if exporter == "dynamo":
        torch.onnx.export(model, (dummy,), str(path), dynamo=True, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes={"x": {0: torch.export.Dim("N")}}, external_data=False,
                          optimize=True, verify=False)
    else:
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                          do_constant_folding=True,
                          # PRESERVE (model is in eval mode): export inference-mode BN
                          # without the exporter's Conv+BN fusion; fuse_bn() decides.
                          training=torch.onnx.TrainingMode.PRESERVE)


def tidy_onnx(path: Path) -> None:
    """Turn Constant nodes into initializers, and Identity nodes over initializers
    (the exporter's de-duplication of equal parameters) into their own copies, so
    that every node owns its parameters."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            inits[tensor.name] = tensor
        elif node.op_type == "Identity" and node.input[0] in inits:
            array = numpy_helper.to_array(inits[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(array.copy(), node.output[0]))
            inits[node.output[0]] = graph.initializer[-1]
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    live = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    onnx.save(proto, str(path))


def cmd_export(args) -> None:
    import onnx
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    model = load_trained(args.model, args.cache)
    fused = FUSE_BN_ON_EXPORT[args.model] if args.fuse_bn is None else args.fuse_bn
    if fused:
        model = fuse_bn(model)
    out = Path(args.out) / f"{args.model}_fmnist.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out, args.exporter)
    tidy_onnx(out)

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    print(f"{out}: {out.stat().st_size} bytes, opset {proto.opset_import[0].version}, "
          f"inputs {[(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in proto.graph.input]}, "
          f"outputs {[o.name for o in proto.graph.output]}")
    print(f"ops: {dict(sorted(ops.items()))}")

    x_test, y_test = load_fmnist(args.data_dir, "test")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test[:256])).numpy()
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x_test[:256]})[0]
    max_diff = float(np.abs(ref - got).max())
    print(f"max |torch - onnxruntime| on 256 test images: {max_diff:.2e}")
    if max_diff > 1e-4:
        raise SystemExit("ONNX logits differ from torch logits by more than 1e-4")
    preds = np.concatenate([sess.run([OUTPUT_NAME], {INPUT_NAME: x_test[i : i + 1000]})[0].argmax(1)
                            for i in range(0, len(x_test), 1000)])
    acc = float((preds == y_test).mean())
    print(f"onnxruntime test accuracy (10000 images): {acc:.4f}")
    summary = {"onnx": str(out), "bytes": out.stat().st_size, "bn_fused": fused, "ops": ops,
               "max_abs_diff": max_diff, "ort_test_acc": acc}
    (Path(args.cache) / f"{args.model}_export.json").write_text(json.dumps(summary, indent=1))


# --------------------------------------------------------------------------
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
        sp.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads; on a busy machine use 1: with 2 threads and one "
                             "core taken by a higher-priority job, every step waits for the starved thread")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--cache", default="/work/cache", help="where state_dicts and logs go")
        sp.add_argument("--out", default="models", help="where ONNX models and data files go")

    def recipe(sp):
        sp.add_argument("--batch-size", type=int, default=128)
        sp.add_argument("--lr", type=float, default=0.1, help="peak (OneCycle) learning rate")
        sp.add_argument("--weight-decay", type=float, default=5e-4)
        sp.add_argument("--warmup", type=float, default=0.2, help="OneCycle pct_start")
        sp.add_argument("--label-smoothing", type=float, default=0.1)
        sp.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="NHWC activations (about 1.6x faster on CPU)")

    sp = sub.add_parser("data", help="write fmnist_calib.npz and fmnist_test.npz")
    common(sp)
    sp.add_argument("--calib-size", type=int, default=1024)
    sp.set_defaults(func=cmd_data)

    sp = sub.add_parser("probe", help="time training batches")
    common(sp)
    recipe(sp)
    sp.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    sp.add_argument("--batches", type=int, default=50)
    sp.set_defaults(func=cmd_probe)

    sp = sub.add_parser("train", help="train one model")
    common(sp)
    recipe(sp)
    sp.add_argument("--model", required=True, choices=MODEL_NAMES)
    sp.add_argument("--epochs", type=int, default=15)
    sp.add_argument("--resume", action="store_true", help="continue from <cache>/<model>.ckpt")
    sp.add_argument("--train-subset", type=int, default=0, help="use only the first N images (smoke tests)")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("export", help="export a trained model to ONNX and verify it")
    common(sp)
    sp.add_argument("--model", required=True, choices=MODEL_NAMES)
    sp.add_argument("--exporter", choices=("dynamo", "torchscript"), default="torchscript",
                    help="torchscript gives opset 17, separate BN, GlobalAveragePool/Flatten")
    sp.add_argument("--fuse-bn", action=argparse.BooleanOptionalAction, default=None,
                    help="fold BN into convs (default: per model, see FUSE_BN_ON_EXPORT)")
    sp.set_defaults(func=cmd_export)

    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
