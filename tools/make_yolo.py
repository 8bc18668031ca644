"""Export a YOLOv8n-architecture detector (random weights, built from ultralytics' yaml) to ONNX, with random calibration data.

    pip install ".[tools]" ultralytics      # torch and ultralytics: never imported by onnxprune or its tests
    python tools/make_yolo.py DIR [--size 320] [--samples 64] [--static]

writes DIR/yolov8n.onnx (about 12 MB: not committed) and DIR/calib.npz (``--samples`` random images
of 3 x size x size in [0, 1]). Nothing is downloaded: ultralytics builds the network from the
yolov8n.yaml it ships, BatchNorm folded into the convolutions
(``fuse``); the convolutions are re-initialised (Kaiming normal) so that activations reach the
head. The input's batch, height and width are dynamic unless ``--static``, so `onnxprune
prune DIR/yolov8n.onnx -o OUT --calib DIR/calib.npz --keep-flops 0.5` also checks that the
dims are taken from the data. The first output is the detector's [N, 84, anchors] tensor.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=320, help="calibration image size (a multiple of 32)")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--static", action="store_true", help="fix the input to 1 x 3 x size x size")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch
    from ultralytics.nn.modules import C2f, Detect
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(args.seed)
    model = DetectionModel("yolov8n.yaml", nc=80, verbose=False).eval()
    # ultralytics' default initialisation shrinks the activations layer by layer: at the Detect
    # head they are constant to 1e-7, so no pruning would change the outputs measurably. Kaiming
    # normal weights (fan-in) keep the signal alive down to the head.
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    model = model.fuse(verbose=False)
    for module in model.modules():  # as ultralytics' own ONNX export prepares them
        if isinstance(module, Detect):
            module.export, module.format = True, "onnx"  # forward returns the decoded boxes only
        elif isinstance(module, C2f):
            module.forward = module.forward_split  # a constant Split, not chunk()'s shape arithmetic
    args.out.mkdir(parents=True, exist_ok=True)
    x = torch.rand(1, 3, args.size, args.size)
    dynamic = None if args.static else {"images": {0: "N", 2: "H", 3: "W"}, "output0": {0: "N", 2: "anchors"}}
    torch.onnx.export(model, (x,), str(args.out / "yolov8n.onnx"), input_names=["images"], output_names=["output0"],
                      opset_version=17, dynamic_axes=dynamic, dynamo=False)
    rng = np.random.default_rng(args.seed)
    np.savez(args.out / "calib.npz", images=rng.random((args.samples, 3, args.size, args.size), dtype=np.float32))
    print(f"wrote {args.out / 'yolov8n.onnx'} and {args.out / 'calib.npz'} ({args.samples} x 3 x {args.size} x {args.size})")


if __name__ == "__main__":
    main()
