"""Export a ResNeXt-50 32x4d or a ResNet-50 (torchvision's architectures, random weights) to ONNX, with random calibration and test data.

    pip install ".[tools]"      # torch: never imported by onnxprune or its tests
    python tools/make_resnext.py DIR [--arch resnext50|resnet50] [--size 64] [--samples 128] [--test 256]

writes DIR/ARCH.onnx (about 100 MB: not committed), DIR/calib.npz and DIR/test.npz (standard
normal images of 3 x size x size). The networks are defined here as torchvision defines
resnext50_32x4d (Bottleneck v1.5: the stride on the grouped 3x3 conv, width = planes / 64 * 4 * 32,
25,028,904 parameters) and resnet50 (the same with groups 1 and width = planes, 25,557,032
parameters), so torchvision is not needed; convs are Kaiming-normal and every
BatchNorm gets random statistics and affine parameters, so that the folded convs are not plain
initialisations. The batch dim is dynamic. With random weights the network gives every input
the same top-1 class: compare outputs with tools/output_error.py rather than by agreement.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


ARCHS = {"resnext50": (32, 4), "resnet50": (1, 64)}  # (groups, base width) of the 3x3 convs


def resnext50(torch, groups: int = 32, base_width: int = 4):
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            width, out = int(planes * base_width / 64) * groups, planes * 4
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
            self.down = None
            if stride != 1 or cin != out:
                self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            h = torch.relu(self.bn2(self.conv2(h)))
            h = self.bn3(self.conv3(h))
            return torch.relu(h + (x if self.down is None else self.down(x)))

    class ResNeXt50(nn.Module):
        def __init__(self, classes=1000):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for i in range(blocks):
                    layers.append(Bottleneck(cin, planes, stride if i == 0 else 1))
                    cin = planes * 4
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))

    return ResNeXt50()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--arch", choices=list(ARCHS), default="resnext50")
    p.add_argument("--size", type=int, default=64, help="input height and width")
    p.add_argument("--samples", type=int, default=128, help="calibration images")
    p.add_argument("--test", type=int, default=256, help="test images")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch

    torch.manual_seed(args.seed)
    model = resnext50(torch, *ARCHS[args.arch])
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, torch.randn(1, 3, args.size, args.size), str(args.out / f"{args.arch}.onnx"),
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    rng = np.random.default_rng(args.seed)
    for name, count in (("calib", args.samples), ("test", args.test)):
        np.savez(args.out / f"{name}.npz", input=rng.standard_normal((count, 3, args.size, args.size)).astype(np.float32))
    print(f"{args.out / f'{args.arch}.onnx'}: {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()
