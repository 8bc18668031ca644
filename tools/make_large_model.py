"""Write a model over protobuf's 2 GB limit, to check large-model handling by hand:
a chain of Gemm(width x width) + Relu layers (random weights, He scaled) ending in a
Gemm to 10 outputs, its weights in OUT.data (ONNX external data), and calibration data.

    python tools/make_large_model.py /tmp/big --width 4096 --layers 32   # 2.15 GB
    onnxprune prune /tmp/big/large.onnx -o /tmp/big/out.onnx --ratio 0.02

Weights are written one layer at a time, so this needs little memory itself.
"""

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder for large.onnx, large.onnx.data and calib.npz")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--calib", type=int, default=256, help="calibration samples")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n, nodes, initializers, offset, x = args.width, [], [], 0, "x"
    with open(args.out / "large.onnx.data", "wb") as data:

        def add(name: str, value: np.ndarray) -> None:
            nonlocal offset
            raw = value.astype(np.float32).tobytes()
            data.write(raw)
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=value.shape,
                                 data_location=TensorProto.EXTERNAL)
            for key, v in (("location", "large.onnx.data"), ("offset", offset), ("length", len(raw))):
                tensor.external_data.add(key=key, value=str(v))
            initializers.append(tensor)
            offset += len(raw)

        for i in range(args.layers + 1):
            last = i == args.layers
            add(f"w{i}", rng.standard_normal((n, 10 if last else n), dtype=np.float32) * np.float32(np.sqrt(2 / n)))
            add(f"b{i}", np.zeros(10 if last else n, np.float32))
            out = "y" if last else f"h{i}"
            nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out], name=f"fc{i}"))
            if not last:
                nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
                x = f"r{i}"
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="onnxprune tools/make_large_model.py")
    onnx.save_model(model, args.out / "large.onnx")
    np.savez(args.out / "calib.npz", x=rng.standard_normal((args.calib, n)).astype(np.float32))
    print(f"{args.out / 'large.onnx'}: {offset / 1e9:.2f} GB of weights in large.onnx.data")


if __name__ == "__main__":
    main()
