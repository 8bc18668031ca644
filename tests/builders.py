"""Small CNN ONNX graphs for tests: a graph builder, model factories and hypothesis strategies."""

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import note
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

ACTIVATIONS = [
    "relu", "leaky_relu", "prelu", "clip", "sigmoid", "hard_sigmoid", "hard_swish",
    "tanh", "silu", "elu", "selu", "softplus",
]


class NetBuilder:
    """Builds a float32 NCHW graph with one input named "input", op by op.

    Each method takes tensor names and returns the name of the tensor it creates. Nodes are
    named after their op and a counter ("conv3"), their output tensors likewise, and their
    initializers "<node>.<role>" ("conv3.weight"). ``self.channels[name]`` and ``self.hw[name]``
    track each NCHW tensor's channel count and (square) spatial size; for 2-D tensors
    ``channels`` holds the feature count and ``hw`` is None.
    """

    def __init__(self, in_channels, hw=8, seed=0, batch="N", opset=17, ir_version=8):
        self.rng = np.random.default_rng(seed)
        self.batch, self.opset, self.ir_version = batch, opset, ir_version
        self.nodes, self.initializers = [], []
        self.channels, self.hw = {"input": in_channels}, {"input": hw}
        self._counts = {}

    # -- plumbing

    def _fresh(self, prefix):
        """A new unique name: prefix + counter."""
        i = self._counts.get(prefix, 0)
        self._counts[prefix] = i + 1
        return f"{prefix}{i}"

    def _const(self, name, value, dtype=np.float32):
        """Adds an initializer and returns its name."""
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def _emit(self, op_type, name, inputs, channels=None, hw=None, **attrs):
        """Adds a single-output node whose output tensor is `name`; records its shape if given."""
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        if channels is not None:
            self.channels[name], self.hw[name] = channels, hw
        return name

    def _emit_like(self, op_type, name, inputs, **attrs):
        """Adds a node whose output has the shape of its first input."""
        x = inputs[0]
        return self._emit(op_type, name, inputs, self.channels[x], self.hw[x], **attrs)

    def _unary(self, op_type, x, **attrs):
        return self._emit_like(op_type, self._fresh(op_type.lower()), [x], **attrs)

    def _binary(self, op_type, a, b):
        hw = None if self.hw[a] is None else max(self.hw[a], self.hw[b])
        channels = max(self.channels[a], self.channels[b])
        return self._emit(op_type, self._fresh(op_type.lower()), [a, b], channels, hw)

    def _features(self, x):
        """Number of elements per batch item."""
        hw = self.hw[x]
        return self.channels[x] * (1 if hw is None else hw * hw)

    # -- convolutions and normalization

    def conv(self, x, cout, k=3, stride=1, pad=None, group=1, bias=True, dilation=1):
        """Conv with He-normal weights [cout, cin/group, k, k]; pad defaults to k // 2."""
        name, cin = self._fresh("conv"), self.channels[x]
        pad = k // 2 if pad is None else pad
        fan_in = cin // group * k * k
        weight = self.rng.normal(0, np.sqrt(2 / fan_in), (cout, cin // group, k, k))
        inputs = [x, self._const(f"{name}.weight", weight)]
        if bias:
            inputs.append(self._const(f"{name}.bias", self.rng.normal(0, 0.1, cout)))
        hw = (self.hw[x] + 2 * pad - dilation * (k - 1) - 1) // stride + 1
        return self._emit(
            "Conv", name, inputs, cout, hw, kernel_shape=[k, k], strides=[stride] * 2,
            pads=[pad] * 4, dilations=[dilation] * 2, group=group,
        )

    def conv_transpose(self, x, cout, k=2, stride=2, bias=True, pad=0, output_padding=0, dilation=1, group=1):
        """ConvTranspose, weights [cin, cout/group, k, k]; by default without padding."""
        name, cin = self._fresh("convtranspose"), self.channels[x]
        weight = self.rng.normal(0, np.sqrt(2 / (cin * k * k)), (cin, cout // group, k, k))
        inputs = [x, self._const(f"{name}.weight", weight)]
        if bias:
            inputs.append(self._const(f"{name}.bias", self.rng.normal(0, 0.1, cout)))
        hw = (self.hw[x] - 1) * stride + (k - 1) * dilation + 1 - 2 * pad + output_padding
        extra = {"pads": [pad] * 4} if pad else {}
        extra.update({"output_padding": [output_padding] * 2} if output_padding else {})
        extra.update({"dilations": [dilation] * 2} if dilation != 1 else {})
        extra.update({"group": group} if group != 1 else {})
        return self._emit(
            "ConvTranspose", name, inputs, cout, hw, kernel_shape=[k, k], strides=[stride] * 2, **extra
        )

    def bn(self, x):
        """BatchNormalization with random scale, bias, mean and positive var."""
        name, c = self._fresh("bn"), self.channels[x]
        params = {
            "scale": self.rng.uniform(0.5, 1.5, c),
            "bias": self.rng.normal(0, 0.1, c),
            "mean": self.rng.normal(0, 0.5, c),
            "var": self.rng.uniform(0.5, 1.5, c),
        }
        inputs = [x] + [self._const(f"{name}.{role}", v) for role, v in params.items()]
        return self._emit_like("BatchNormalization", name, inputs, epsilon=1e-5)

    def conv_bn_act(self, x, cout, k=3, stride=1, group=1, act="relu"):
        """Conv (no bias) -> BatchNormalization -> activation (`act` names a method, or None)."""
        return self.act(self.bn(self.conv(x, cout, k, stride, group=group, bias=False)), act)

    # -- activations

    def act(self, x, kind):
        """Applies the activation method named `kind` (one of ACTIVATIONS); None is a no-op."""
        return getattr(self, kind)(x) if kind else x

    def relu(self, x):
        return self._unary("Relu", x)

    def leaky_relu(self, x, alpha=0.1):
        return self._unary("LeakyRelu", x, alpha=alpha)

    def prelu(self, x, per_channel=True):
        """PRelu with slope of shape [C, 1, 1] (or [1])."""
        name = self._fresh("prelu")
        shape = (self.channels[x], 1, 1) if per_channel else (1,)
        slope = self._const(f"{name}.slope", self.rng.uniform(0.05, 0.3, shape))
        return self._emit_like("PRelu", name, [x, slope])

    def clip(self, x, lo=0.0, hi=6.0):
        """Clip with min/max as scalar initializers (ReLU6 by default)."""
        name = self._fresh("clip")
        bounds = [self._const(f"{name}.min", lo), self._const(f"{name}.max", hi)]
        return self._emit_like("Clip", name, [x, *bounds])

    def sigmoid(self, x):
        return self._unary("Sigmoid", x)

    def hard_sigmoid(self, x):
        return self._unary("HardSigmoid", x)

    def hard_swish(self, x):
        return self._unary("HardSwish", x)

    def tanh(self, x):
        return self._unary("Tanh", x)

    def silu(self, x):
        """x * Sigmoid(x), as two nodes."""
        return self.mul(x, self.sigmoid(x))

    def elu(self, x):
        return self._unary("Elu", x)

    def selu(self, x):
        return self._unary("Selu", x)

    def softplus(self, x):
        return self._unary("Softplus", x)

    # -- elementwise

    def _const_shape(self, x, per_channel):
        return (1, self.channels[x], 1, 1) if per_channel else ()

    def mul_const(self, x, per_channel=True):
        """x * c, c of shape [1, C, 1, 1] (or a scalar) drawn from [0.5, 1.5]."""
        name = self._fresh("mul_const")
        c = self.rng.uniform(0.5, 1.5, self._const_shape(x, per_channel))
        return self._emit_like("Mul", name, [x, self._const(f"{name}.value", c)])

    def add_const(self, x, per_channel=True):
        """x + c, c of shape [1, C, 1, 1] (or a scalar) drawn from N(0, 0.5)."""
        name = self._fresh("add_const")
        c = self.rng.normal(0, 0.5, self._const_shape(x, per_channel))
        return self._emit_like("Add", name, [x, self._const(f"{name}.value", c)])

    def add(self, a, b):
        return self._binary("Add", a, b)

    def mul(self, a, b):
        return self._binary("Mul", a, b)

    def sub(self, a, b):
        return self._binary("Sub", a, b)

    def max(self, a, b):
        return self._binary("Max", a, b)

    # -- channel plumbing

    def concat(self, xs, axis=1):
        """Concat along the channel axis (1, or -3 for NCHW / -1 for 2-D tensors)."""
        channels = sum(self.channels[x] for x in xs)
        return self._emit("Concat", self._fresh("concat"), list(xs), channels, self.hw[xs[0]], axis=axis)

    def split(self, x, sizes):
        """Split on the channel axis; returns one name per chunk ("split0.0", "split0.1", ...)."""
        name = self._fresh("split")
        outputs = [f"{name}.{i}" for i in range(len(sizes))]
        inputs, attrs = [x], {}
        if self.opset >= 13:
            inputs.append(self._const(f"{name}.split", sizes, np.int64))
        else:
            attrs["split"] = list(sizes)
        self.nodes.append(helper.make_node("Split", inputs, outputs, name=name, axis=1, **attrs))
        for out, size in zip(outputs, sizes):
            self.channels[out], self.hw[out] = size, self.hw[x]
        return outputs

    def slice_channels(self, x, start, end):
        """Slice channels [start:end] (Python semantics), starts/ends/axes/steps as initializers."""
        name = self._fresh("slice")
        args = {"starts": start, "ends": end, "axes": 1, "steps": 1}
        consts = [self._const(f"{name}.{role}", [v], np.int64) for role, v in args.items()]
        channels = len(range(self.channels[x])[start:end])
        return self._emit("Slice", name, [x, *consts], channels, self.hw[x])

    def channel_shuffle(self, x, groups):
        """Reshape [0, g, C/g, H, W] -> Transpose [0, 2, 1, 3, 4] -> Reshape [0, C, H, W]."""
        name, c, hw = self._fresh("shuffle"), self.channels[x], self.hw[x]
        grouped = self._const(f"{name}.grouped_shape", [0, groups, c // groups, hw, hw], np.int64)
        flat = self._const(f"{name}.shape", [0, c, hw, hw], np.int64)
        y = self._emit("Reshape", f"{name}_reshape", [x, grouped])
        y = self._emit("Transpose", f"{name}_transpose", [y], perm=[0, 2, 1, 3, 4])
        return self._emit("Reshape", name, [y, flat], c, hw)

    def se(self, x, reduction=4, gate="Sigmoid"):
        """Squeeze-excitation: GAP -> Conv1x1 -> Relu -> Conv1x1 -> gate -> Mul(x, gate)."""
        c = self.channels[x]
        s = self.relu(self.conv(self.gap(x), max(1, c // reduction), k=1))
        s = self.conv(s, c, k=1)
        s = {"Sigmoid": self.sigmoid, "HardSigmoid": self.hard_sigmoid}[gate](s)
        return self.mul(x, s)

    # -- spatial

    def _pool(self, op_type, x, k, stride, pad):
        hw = (self.hw[x] + 2 * pad - k) // stride + 1
        return self._emit(
            op_type, self._fresh(op_type.lower()), [x], self.channels[x], hw,
            kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4,
        )

    def maxpool(self, x, k=2, stride=2, pad=0):
        return self._pool("MaxPool", x, k, stride, pad)

    def avgpool(self, x, k=2, stride=2, pad=0):
        return self._pool("AveragePool", x, k, stride, pad)

    def gap(self, x):
        return self._emit("GlobalAveragePool", self._fresh("gap"), [x], self.channels[x], 1)

    def gmp(self, x):
        return self._emit("GlobalMaxPool", self._fresh("gmp"), [x], self.channels[x], 1)

    def pad(self, x, p=1):
        """Constant zero-padding of p on each spatial border."""
        name = self._fresh("pad")
        pads = self._const(f"{name}.pads", [0, 0, p, p, 0, 0, p, p], np.int64)
        return self._emit("Pad", name, [x, pads], self.channels[x], self.hw[x] + 2 * p, mode="constant")

    def resize(self, x, scale=2):
        """Nearest-neighbour Resize by an integer scale (scales input, no roi)."""
        name = self._fresh("resize")
        scales = self._const(f"{name}.scales", [1, 1, scale, scale])
        hw = self.hw[x] * scale
        return self._emit("Resize", name, [x, "", scales], self.channels[x], hw, mode="nearest")

    def dropout(self, x):
        return self._unary("Dropout", x)

    def identity(self, x):
        return self._unary("Identity", x)

    # -- heads

    def flatten(self, x):
        return self._emit("Flatten", self._fresh("flatten"), [x], self._features(x), None, axis=1)

    def reshape_flatten(self, x):
        """Reshape to [0, -1]."""
        name = self._fresh("reshape")
        shape = self._const(f"{name}.shape", [0, -1], np.int64)
        return self._emit("Reshape", name, [x, shape], self._features(x), None)

    def gemm(self, x, out, trans_b=True, bias=True):
        """Gemm with constant B ([out, in] when trans_b, else [in, out]) and bias C [out] (or none)."""
        name, fin = self._fresh("gemm"), self.channels[x]
        weight = self.rng.normal(0, np.sqrt(2 / fin), (out, fin) if trans_b else (fin, out))
        inputs = [x, self._const(f"{name}.weight", weight)]
        if bias:
            inputs.append(self._const(f"{name}.bias", self.rng.normal(0, 0.1, out)))
        return self._emit("Gemm", name, inputs, out, None, transB=int(trans_b))

    def matmul(self, x, out):
        """MatMul with a constant [in, out] weight, then Add of a bias [out]."""
        name, fin = self._fresh("matmul"), self.channels[x]
        weight = self._const(f"{name}.weight", self.rng.normal(0, np.sqrt(2 / fin), (fin, out)))
        bias = self._const(f"{name}.bias", self.rng.normal(0, 0.1, out))
        y = self._emit("MatMul", name, [x, weight], out, None)
        return self._emit("Add", f"{name}_add", [y, bias], out, None)

    # -- output

    def _value_info(self, name):
        """Typed value info; shape from tracking, left unknown for untracked tensors."""
        if name not in self.channels:
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        hw = self.hw[name]
        spatial = [] if hw is None else [hw, hw]
        shape = [self.batch, self.channels[name], *spatial]
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    def model(self, outputs):
        """The finished ModelProto with the given output tensor(s), checked with full_check."""
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        graph = helper.make_graph(
            self.nodes, "onnxprune_test", [self._value_info("input")],
            [self._value_info(o) for o in outputs], self.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", self.opset)],
            ir_version=self.ir_version, producer_name="onnxprune-tests",
        )
        onnx.checker.check_model(model, full_check=True)
        return model


# -- model factories: 3x8x8 input, GAP -> Flatten -> Gemm(10) head unless said otherwise


def _classifier(b, x, classes=10):
    """Finishes b with a GAP -> Flatten -> Gemm(classes) head on x."""
    return b.model(b.gemm(b.flatten(b.gap(x)), classes))


def _shortcut(b, x, cout, stride):
    """x itself, or a 1x1 conv+bn projection when stride or width changes."""
    if stride == 1 and b.channels[x] == cout:
        return x
    return b.bn(b.conv(x, cout, k=1, stride=stride, bias=False))


def _basic_block(b, x, cout, stride, preact):
    """ResNet BasicBlock, post-activation (..., Add -> Relu) or pre-activation (bn-relu first)."""
    if preact:
        h = b.relu(b.bn(x))
        same = stride == 1 and b.channels[x] == cout
        shortcut = x if same else b.conv(h, cout, k=1, stride=stride, bias=False)
        h = b.conv(h, cout, stride=stride, bias=False)
        h = b.conv(b.relu(b.bn(h)), cout, bias=False)
        return b.add(h, shortcut)
    h = b.conv_bn_act(b.conv_bn_act(x, cout, stride=stride), cout, act=None)
    return b.relu(b.add(h, _shortcut(b, x, cout, stride)))


def _conv_silu(b, x, cout, k=1):
    """Conv (bias, BN folded) -> SiLU, as in exported YOLOv8 models."""
    return b.silu(b.conv(x, cout, k))


def conv_chain(widths=(8, 16, 8), k=3, bn=True, act="relu", seed=0):
    """Plain chain of conv [-> bn] [-> act] (act None for no activation); convs have bias iff not bn."""
    b = NetBuilder(3, seed=seed)
    x = "input"
    for width in widths:
        x = b.conv(x, width, k=k, bias=not bn)
        x = b.act(b.bn(x) if bn else x, act)
    return _classifier(b, x)


def basic_block_net(channels=8, blocks=2, stride=2, projection=True, x_from="relu", preact=False, seed=0):
    """ResNet of BasicBlocks: stem conv-bn-relu (x_from="maxpool" adds a 2x2 maxpool), a stage of
    `blocks` identity-shortcut blocks at `channels`, and, when projection=True, a second stage at
    2*channels whose first block has the given stride and a 1x1 conv+bn projection shortcut
    (a plain 1x1 conv on the pre-activated input when preact). Pre-activation nets end in bn-relu."""
    b = NetBuilder(3, seed=seed)
    x = b.conv_bn_act("input", channels)
    if x_from == "maxpool":
        x = b.maxpool(x)
    stages = [(channels, 1)] + ([(2 * channels, stride)] if projection else [])
    for width, first_stride in stages:
        for i in range(blocks):
            x = _basic_block(b, x, width, first_stride if i == 0 else 1, preact)
    if preact:
        x = b.relu(b.bn(x))
    return _classifier(b, x)


def bottleneck_net(channels=8, expansion=4, blocks=2, stride=2, seed=0):
    """Stem conv-bn-relu, then ResNet Bottlenecks (1x1 -> 3x3(stride) -> 1x1 to channels*expansion,
    Add, Relu); the first block has the stride and, if needed, a 1x1 conv+bn projection."""
    b = NetBuilder(3, seed=seed)
    x = b.conv_bn_act("input", channels)
    out = channels * expansion
    for i in range(blocks):
        s = stride if i == 0 else 1
        h = b.conv_bn_act(b.conv_bn_act(x, channels, k=1), channels, stride=s)
        h = b.conv_bn_act(h, out, k=1, act=None)
        x = b.relu(b.add(h, _shortcut(b, x, out, s)))
    return _classifier(b, x)


def densenet_like(growth=4, layers=3, seed=0):
    """Stem conv, dense layers (bn-relu-conv3x3(growth), Concat with their input), then a transition
    (bn-relu-conv1x1 halving the width, avgpool) and bn-relu."""
    b = NetBuilder(3, seed=seed)
    x = b.conv("input", 2 * growth, bias=False)
    for _ in range(layers):
        x = b.concat([x, b.conv(b.relu(b.bn(x)), growth, bias=False)])
    x = b.avgpool(b.conv(b.relu(b.bn(x)), b.channels[x] // 2, k=1, bias=False))
    return _classifier(b, b.relu(b.bn(x)))


def inception_like(channels=8, seed=0):
    """Stem conv-bn-relu, then Concat of branches 1x1, 1x1 -> 3x3 and maxpool3x3 -> 1x1."""
    b = NetBuilder(3, seed=seed)
    x = b.conv_bn_act("input", channels)
    branches = [
        b.conv_bn_act(x, channels, k=1),
        b.conv_bn_act(b.conv_bn_act(x, channels // 2, k=1), channels),
        b.conv_bn_act(b.maxpool(x, k=3, stride=1, pad=1), channels // 2, k=1),
    ]
    return _classifier(b, b.concat(branches))


def c2f_like(channels=8, n=2, use_slice=False, seed=0):
    """YOLOv8 C2f: conv -> Split (or two Slices) into halves -> n residual bottlenecks chained on the
    second half -> Concat of all chunks -> conv. Convs are conv+bias -> SiLU (BN folded)."""
    b = NetBuilder(3, seed=seed)
    c = channels // 2
    x = _conv_silu(b, _conv_silu(b, "input", channels, k=3), 2 * c)
    ys = [b.slice_channels(x, 0, c), b.slice_channels(x, c, 2 * c)] if use_slice else b.split(x, [c, c])
    for _ in range(n):
        ys.append(b.add(ys[-1], _conv_silu(b, _conv_silu(b, ys[-1], c, k=3), c, k=3)))
    return _classifier(b, _conv_silu(b, b.concat(ys), channels))


def sppf_like(channels=8, pools=3, seed=0):
    """YOLOv8 SPPF: conv -> cv1 1x1 to channels/2 -> ``pools`` chained maxpools 5x5 (stride 1) ->
    Concat of cv1's output and every pooled copy -> cv2 1x1, which reads each of cv1's channels
    pools + 1 times. Convs are conv+bias -> SiLU (BN folded)."""
    b = NetBuilder(3, seed=seed)
    x = _conv_silu(b, _conv_silu(b, "input", channels, k=3), channels // 2)
    ys = [x]
    for _ in range(pools):
        ys.append(b.maxpool(ys[-1], k=5, stride=1, pad=2))
    return _classifier(b, _conv_silu(b, b.concat(ys), channels))


def mobilenetv2_block_net(channels=8, expand=4, stride=1, seed=0):
    """Stem conv-bn-relu6, then an inverted residual: 1x1 expand (skipped if expand == 1) -> depthwise
    3x3(stride) -> 1x1 linear projection, with residual Add when stride == 1. ReLU6 is Clip(0, 6)."""
    b = NetBuilder(3, seed=seed)
    x = b.conv_bn_act("input", channels, act="clip")
    h = b.conv_bn_act(x, channels * expand, k=1, act="clip") if expand != 1 else x
    h = b.conv_bn_act(h, b.channels[h], stride=stride, group=b.channels[h], act="clip")
    h = b.conv_bn_act(h, channels, k=1, act=None)
    return _classifier(b, b.add(x, h) if stride == 1 else h)


def se_net(channels=8, gate="Sigmoid", seed=0):
    """conv-bn-relu -> squeeze-excitation (gate "Sigmoid" or "HardSigmoid") -> conv-bn-relu."""
    b = NetBuilder(3, seed=seed)
    x = b.se(b.conv_bn_act("input", channels), gate=gate)
    return _classifier(b, b.conv_bn_act(x, channels))


def flatten_gemm_net(channels=4, hidden=16, seed=0):
    """conv -> relu -> Flatten (no GAP) -> Gemm(hidden) -> relu -> Gemm(10)."""
    b = NetBuilder(3, seed=seed)
    x = b.flatten(b.relu(b.conv("input", channels)))
    return b.model(b.gemm(b.relu(b.gemm(x, hidden)), 10))


def grouped_conv_net(groups=2, channels=8, out_channels=None, k=3, seed=0):
    """conv-bn-relu -> grouped kxk conv-bn-relu (``channels`` -> ``out_channels`` channels, default
    the same) -> 1x1 conv-bn-relu."""
    b = NetBuilder(3, seed=seed)
    x = b.conv_bn_act("input", channels)
    x = b.conv_bn_act(x, out_channels or channels, k=k, group=groups)
    return _classifier(b, b.conv_bn_act(x, channels, k=1))


def resnext_like(channels=8, groups=4, per_group=4, blocks=2, seed=0):
    """Stem conv-bn-relu, then ResNeXt bottlenecks: 1x1 conv-bn-relu to groups * per_group ->
    grouped 3x3 conv-bn-relu (``groups`` groups of ``per_group`` channels, not depthwise) -> 1x1
    conv-bn, residual Add, Relu. The last block (when blocks > 1) starts a new stage: stride 2,
    twice the widths and a 1x1 conv-bn projection shortcut."""
    b = NetBuilder(3, seed=seed)
    x = b.conv_bn_act("input", channels)
    for i in range(blocks):
        wide = 2 if blocks > 1 and i == blocks - 1 else 1
        stride, out, width = wide, channels * wide, groups * per_group * wide
        h = b.conv_bn_act(x, width, k=1)
        h = b.conv_bn_act(h, width, stride=stride, group=groups)
        h = b.conv_bn_act(h, out, k=1, act=None)
        x = b.relu(b.add(h, _shortcut(b, x, out, stride)))
    return _classifier(b, x)


def shuffle_net(groups=2, channels=8, seed=0):
    """Stem conv-bn-relu, then a ShuffleNet unit: grouped 1x1 conv-bn-relu -> channel shuffle ->
    depthwise 3x3 conv-bn -> grouped 1x1 conv-bn, residual Add -> Relu."""
    b = NetBuilder(3, seed=seed)
    x = b.conv_bn_act("input", channels)
    h = b.channel_shuffle(b.conv_bn_act(x, channels, k=1, group=groups), groups)
    h = b.conv_bn_act(h, channels, group=channels, act=None)
    h = b.conv_bn_act(h, channels, k=1, group=groups, act=None)
    return _classifier(b, b.relu(b.add(x, h)))


def unprunable_net(seed=0):
    """A grouped 1x1 conv-bn-relu, a channel shuffle and the graph output: no group can be pruned."""
    b = NetBuilder(3, seed=seed)
    return b.model(b.channel_shuffle(b.conv_bn_act("input", 8, k=1, group=2), 2))


def convtranspose_net(channels=8, seed=0):
    """conv-bn-relu with stride 2 -> ConvTranspose(2x2, stride 2)-bn-relu -> conv-bn-relu."""
    b = NetBuilder(3, seed=seed)
    x = b.conv_bn_act("input", channels, stride=2)
    x = b.relu(b.bn(b.conv_transpose(x, channels)))
    return _classifier(b, b.conv_bn_act(x, channels))


def unet_like(channels=8, seed=0):
    """A U-Net-style decoder: conv-bn-relu (the skip) -> stride-2 conv-bn-relu -> ConvTranspose(3x3,
    stride 2, pad 1, output_padding 1)-bn-relu, concatenated with the skip -> conv-bn-relu ->
    ConvTranspose(2x2, stride 2)-relu (16x16); every group is read by a ConvTranspose or next to one."""
    b = NetBuilder(3, seed=seed)
    skip = b.conv_bn_act("input", channels)
    x = b.conv_bn_act(skip, 2 * channels, stride=2)
    x = b.relu(b.bn(b.conv_transpose(x, channels, k=3, stride=2, pad=1, output_padding=1)))
    x = b.conv_bn_act(b.concat([x, skip]), channels)
    return _classifier(b, b.relu(b.conv_transpose(x, channels, k=2, stride=2)))


def matmul_head_net(channels=8, seed=0):
    """conv-bn-relu -> GAP -> Reshape [0, -1] -> MatMul(10) + bias (no Gemm)."""
    b = NetBuilder(3, seed=seed)
    x = b.reshape_flatten(b.gap(b.conv_bn_act("input", channels)))
    return b.model(b.matmul(x, 10))


def batch_one_net(channels=8, seed=0):
    """conv-relu -> GAP -> Reshape [1, -1] -> Gemm(10): declared with a dynamic batch, it runs only at batch 1
    (at batch b the Reshape makes [1, b * channels], which the Gemm refuses)."""
    b = NetBuilder(3, seed=seed)
    x = b.gap(b.relu(b.conv("input", channels)))
    y = b._emit("Reshape", "reshape_one", [x, b._const("reshape_one.shape", [1, -1], np.int64)], channels, None)
    return b.model(b.gemm(y, 10))


def as_float64(model):
    """A copy of ``model`` in float64: its float initializers, inputs, outputs and value infos (onnxruntime's CPU
    Conv has no float64 kernel)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t in copy.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for info in [*copy.graph.input, *copy.graph.output, *copy.graph.value_info]:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
    return copy


def text_cnn(vocab=100, length=16, dim=8, width=16, shift=0, contrib=False, seed=0):
    """A text CNN: int64 token ids [N, length] -> Gather from a [vocab, dim] embedding -> Transpose and Unsqueeze
    to [N, dim, 1, length] -> conv (1x3) -> relu -> a residual block (conv-relu-conv, Add, Relu) -> GAP -> Flatten
    -> Gemm(10). ``shift``: the ids are shifted by it before the Gather (an Add the tracing of index bounds does not
    follow: ids below vocab - shift run). ``contrib``: the first conv is onnxruntime's com.microsoft FusedConv, an
    op onnx has no schema for, so the shapes after it come from an onnxruntime run only."""
    rng = np.random.default_rng(seed)
    weights = {"emb": rng.normal(0, 1, (vocab, dim)), "w0": rng.normal(0, 0.4, (width, dim, 1, 3)),
               "w1": rng.normal(0, 0.3, (width, width, 1, 3)), "w2": rng.normal(0, 0.3, (width, width, 1, 3)),
               "wg": rng.normal(0, 0.3, (10, width))}
    weights.update({f"b{i}": rng.normal(0, 0.1, width) for i in range(3)}, bg=rng.normal(0, 0.1, 10))
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "axes"))
    conv = dict(kernel_shape=[1, 3], pads=[0, 1, 0, 1])
    ids = "ids"
    nodes = []
    if shift:
        inits.append(numpy_helper.from_array(np.array(shift, np.int64), "shift"))
        nodes.append(helper.make_node("Add", ["ids", "shift"], ["ids_shifted"], name="shift"))
        ids = "ids_shifted"
    nodes += [
        helper.make_node("Gather", ["emb", ids], ["embedded"], name="embed", axis=0),
        helper.make_node("Transpose", ["embedded"], ["channels_first"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Unsqueeze", ["channels_first", "axes"], ["x"], name="unsqueeze"),
        helper.make_node("FusedConv", ["x", "w0", "b0"], ["relu0"], name="conv0", domain="com.microsoft",
                         activation="Relu", **conv) if contrib else
        helper.make_node("Conv", ["x", "w0", "b0"], ["conv0"], name="conv0", **conv),
        *([] if contrib else [helper.make_node("Relu", ["conv0"], ["relu0"], name="relu0")]),
        helper.make_node("Conv", ["relu0", "w1", "b1"], ["conv1"], name="conv1", **conv),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "w2", "b2"], ["conv2"], name="conv2", **conv),
        helper.make_node("Add", ["conv2", "relu0"], ["sum"], name="add"),
        helper.make_node("Relu", ["sum"], ["relu2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["relu2"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wg", "bg"], ["logits"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(nodes, "text_cnn", [helper.make_tensor_value_info("ids", TensorProto.INT64,
                                                                                 ["N", length])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    opsets = [helper.make_opsetid("", 17), *([helper.make_opsetid("com.microsoft", 1)] if contrib else [])]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    if not contrib:
        onnx.checker.check_model(model, full_check=True)
    return model


FACTORIES = {
    f.__name__: f
    for f in (
        conv_chain, basic_block_net, bottleneck_net, densenet_like, inception_like, c2f_like, sppf_like,
        mobilenetv2_block_net, se_net, flatten_gemm_net, grouped_conv_net, resnext_like, shuffle_net,
        convtranspose_net, unet_like, matmul_head_net,
    )
}

# -- hypothesis strategies

_channels = st.sampled_from([4, 8, 12, 16])
_depth = st.integers(1, 3)
_stride = st.sampled_from([1, 2])
_groups = st.sampled_from([1, 2, 4])

# Keyword arguments per factory; every key is a parameter of that factory.
_PARAMS = {
    "conv_chain": st.fixed_dictionaries({
        "widths": st.lists(_channels, min_size=1, max_size=3).map(tuple),
        "k": st.sampled_from([1, 3]),
        "bn": st.booleans(),
        "act": st.sampled_from([*ACTIVATIONS, None]),
    }),
    "basic_block_net": st.fixed_dictionaries({
        "channels": _channels,
        "blocks": st.integers(1, 2),
        "stride": _stride,
        "projection": st.booleans(),
        "x_from": st.sampled_from(["relu", "maxpool"]),
        "preact": st.booleans(),
    }),
    "bottleneck_net": st.fixed_dictionaries({
        "channels": st.sampled_from([4, 8]),
        "expansion": st.sampled_from([1, 2, 4]),
        "blocks": _depth,
        "stride": _stride,
    }),
    "densenet_like": st.fixed_dictionaries({"growth": st.sampled_from([2, 4, 8]), "layers": _depth}),
    "inception_like": st.fixed_dictionaries({"channels": _channels}),
    "c2f_like": st.fixed_dictionaries({"channels": _channels, "n": _depth, "use_slice": st.booleans()}),
    "sppf_like": st.fixed_dictionaries({"channels": _channels, "pools": _depth}),
    "mobilenetv2_block_net": st.fixed_dictionaries({
        "channels": _channels, "expand": st.sampled_from([1, 2, 4]), "stride": _stride,
    }),
    "se_net": st.fixed_dictionaries({
        "channels": _channels, "gate": st.sampled_from(["Sigmoid", "HardSigmoid"]),
    }),
    "flatten_gemm_net": st.fixed_dictionaries({"channels": _channels, "hidden": st.sampled_from([8, 16])}),
    "grouped_conv_net": st.fixed_dictionaries({"groups": _groups, "channels": _channels}),
    "resnext_like": st.fixed_dictionaries({
        "channels": st.sampled_from([4, 8]), "groups": st.sampled_from([2, 4, 8]),
        "per_group": st.sampled_from([2, 3, 4]), "blocks": st.integers(1, 2),
    }),
    "shuffle_net": st.fixed_dictionaries({"groups": _groups, "channels": _channels}),
    "convtranspose_net": st.fixed_dictionaries({"channels": _channels}),
    "unet_like": st.fixed_dictionaries({"channels": _channels}),
    "matmul_head_net": st.fixed_dictionaries({"channels": _channels}),
}


@st.composite
def cnn_specs(draw):
    """A dict {"kind": factory name, "seed": int, **factory kwargs} for a tiny model."""
    kind = draw(st.sampled_from(sorted(_PARAMS)))
    return {"kind": kind, **draw(_PARAMS[kind]), "seed": draw(st.integers(0, 2**16))}


def model_from_spec(spec):
    """Builds the ModelProto a cnn_specs() dict describes."""
    kwargs = {k: v for k, v in spec.items() if k != "kind"}
    return FACTORIES[spec["kind"]](**kwargs)


@st.composite
def cnn_models(draw):
    """A tiny ModelProto from cnn_specs(); the spec is reported with failing examples."""
    spec = draw(cnn_specs())
    note(f"cnn spec: {spec}")
    return model_from_spec(spec)


# -- running


def random_feeds(model, batch=2, seed=0):
    """Standard-normal float32 feeds for the graph inputs that are not initializers;
    symbolic or unset dims get `batch`."""
    rng = np.random.default_rng(seed)
    initializers = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name not in initializers:
            dims = [d.dim_value if d.HasField("dim_value") else batch for d in inp.type.tensor_type.shape.dim]
            feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def run(model, feeds=None, seed=0, batch=2):
    """Runs the model with onnxruntime (CPU, no graph optimizations); returns the list of outputs.
    Without feeds, uses random_feeds(model, batch, seed)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, random_feeds(model, batch, seed) if feeds is None else feeds)
