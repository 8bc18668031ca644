"""Relative error of a pruned YOLOv8 model's three raw Detect-head maps against the original's.

    python tools/yolo_head_error.py ORIGINAL.onnx DATA.npz PRUNED.onnx [PRUNED.onnx ...]

The maps are the inputs of /model.22/Reshape, Reshape_1 and Reshape_2 (boxes' DFL logits and
class logits, before decoding); the error is ||pruned - original|| over the original's variation
around its per-channel mean (the decoded output is dominated by the anchor grid, which pruning
does not change).
"""
from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.graph.probe import probe_model

HEAD = ("/model.22/Reshape", "/model.22/Reshape_1", "/model.22/Reshape_2")


def maps(path: str, x: np.ndarray) -> list[np.ndarray]:
    model = onnx.load(path)
    names = [n.input[0] for n in model.graph.node if n.name in HEAD]
    run = ort.InferenceSession(probe_model(model, names).SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.concatenate([run.run(None, {"images": x[i:i + 8]})[k] for i in range(0, len(x), 8)]) for k in range(3)]


def main() -> None:
    x = np.load(sys.argv[2])["images"]
    ref = maps(sys.argv[1], x)
    for path in sys.argv[3:]:
        errors = [np.linalg.norm(a - b) / np.linalg.norm(b - b.mean(axis=(0, 2, 3), keepdims=True))
                  for a, b in zip(maps(path, x), ref)]
        print(path, " ".join(f"{e:.3f}" for e in errors))


if __name__ == "__main__":
    main()
