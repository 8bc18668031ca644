"""Error of pruned models' first output against the original's, relative to how much the original's output varies across samples.

    python tools/output_error.py ORIGINAL.onnx DATA.npz PRUNED.onnx [PRUNED.onnx ...]

For each pruned model: ||pruned - original|| / ||original - its mean over samples||, the plain
relative error ||pruned - original|| / ||original||, and how many distinct top-1 classes the
original gives (1: top-1 agreement says nothing, as for a network with random weights, whose
outputs are mostly a constant that pruning need not change).
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort


def outputs(path: str, data: dict[str, np.ndarray], batch: int = 32) -> np.ndarray:
    session = ort.InferenceSession(onnx.load(path).SerializeToString(), providers=["CPUExecutionProvider"])
    count = len(next(iter(data.values())))
    return np.concatenate([session.run(None, {k: v[i:i + batch] for k, v in data.items()})[0]
                           for i in range(0, count, batch)]).astype(np.float64)


def main() -> None:
    with np.load(sys.argv[2]) as f:
        data = {k: f[k] for k in f.files if k != "labels"}
    ref = outputs(sys.argv[1], data)
    print(f"original: {len(np.unique(ref.argmax(axis=1)))} distinct top-1 classes on {len(ref)} samples")
    variation = np.linalg.norm(ref - ref.mean(axis=0))
    for path in sys.argv[3:]:
        diff = np.linalg.norm(outputs(path, data) - ref)
        print(f"{path}: error / variation {diff / variation:.3f}, relative error {diff / np.linalg.norm(ref):.4f}")


if __name__ == "__main__":
    main()
