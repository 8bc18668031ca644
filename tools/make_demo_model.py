"""Write models/demo_resnet.onnx: a small ResNet built by the test builders (random weights).

It lets the README's first command run on a fresh checkout; the trained
reference models in models/ are what accuracy is judged on.

    python tools/make_demo_model.py
"""

import sys
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from builders import basic_block_net  # noqa: E402


def main() -> None:
    model = basic_block_net(channels=16, blocks=2, stride=2, projection=True, seed=0)
    model.producer_name = "onnxprune tools/make_demo_model.py"
    onnx.save(model, ROOT / "models" / "demo_resnet.onnx")


if __name__ == "__main__":
    main()
