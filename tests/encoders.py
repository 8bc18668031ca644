"""Small transformer encoder ONNX graphs for tests, written as torch's exporter writes them, and a hypothesis strategy.

An encoder reads a float input [batch, seq, hidden] (or int64 ids through a Gather embedding
plus a position table) and stacks ``layers`` blocks of multi-head self-attention and an FFN,
each Linear a MatMul by a constant [in, out] weight followed by the Add of its bias, the
residual stream normalised by LayerNormalization (or its decomposed form) before each block
(pre-norm) or after each residual Add (post-norm). Nodes are named as torch names them
("/encoder/layer.0/ffn/fc1/MatMul"). The batch dim is symbolic, every other dim static unless
``dynamic_seq`` makes the sequence dim symbolic too.
"""

from dataclasses import dataclass

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

ACTIVATIONS = ("gelu", "gelu_erf", "gelu_tanh", "relu", "silu")


@dataclass(frozen=True)
class EncoderSpec:
    """What to build. ``act``: the FFN's activation (``gelu`` is the Gelu op of opset 20, ``gelu_erf``
    0.5*x*(1+erf(x/sqrt 2)), ``gelu_tanh`` its tanh approximation, ``fastgelu`` onnxruntime's fused
    com.microsoft op); ``layer_norm``: ``op``, ``decomposed`` (ReduceMean/Sub/Pow/Sqrt/Div) or
    ``skip`` (onnxruntime's fused SkipLayerNormalization, post-norm only); ``attention``:
    ``heads`` (Reshape/Transpose/MatMul/Softmax), ``head_bias`` (the same, with a constant added to
    the scores that differs per head, as relative position biases do) or ``fused`` (onnxruntime's
    Attention op); ``reshape``: the heads' Reshapes take a ``static`` shape constant ([0, 0, H, d]),
    ``inferred`` ([0, 0, -1, d]), ``dynamic`` (a Concat of Shape/Gather results and constants, as torch
    exports x.size()[:2] + (H, d) with dynamic axes) or ``computed`` (dynamic, H computed from the
    width at run time); ``scale``: the scores ``mul``tiplied by 1/sqrt(d) or ``div``ided by sqrt(d);
    ``quantized``: the Linears whose int8 weights a DequantizeLinear computes (``fc1``, ``fc2``)."""

    layers: int = 2
    hidden: int = 16
    ffn: int = 32
    heads: int = 2
    seq: int = 8
    act: str = "gelu_erf"
    norm: str = "pre"
    layer_norm: str = "op"
    attention: str = "heads"
    reshape: str = "static"
    scale: str = "mul"
    vocab: int | None = None  # int64 input_ids through an embedding Gather; None: float input [B, S, hidden]
    mask: bool = False  # an int64 attention_mask input [B, S]: 1 for real tokens, 0 for padding
    dynamic_seq: bool = False  # the sequence dim symbolic (float input only: the position table is static)
    quantized: tuple[str, ...] = ()
    echo_inputs: bool = False  # graph outputs copying the int64 inputs come first, as in torch's export of MiniLM
    redundancy: float = 0.0  # in [0, 1): how much each FFN's first projection repeats itself (low rank)
    seed: int = 0

    @property
    def opset(self) -> int:
        return 20 if self.act == "gelu" else 17


class EncoderBuilder:
    """Builds ``spec``'s encoder node by node; each method returns the name of the tensor it makes."""

    def __init__(self, spec: EncoderSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.nodes, self.inits = [], []
        self.ms = False  # uses com.microsoft ops

    def const(self, name, value, dtype=np.float32):
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op, inputs, name, domain=None, **attrs):
        """A node named ``name`` with one output, "<name>_output_0" (as torch names them)."""
        self.nodes.append(helper.make_node(op, inputs, [f"{name}_output_0"], name=name, domain=domain, **attrs))
        self.ms |= domain == "com.microsoft"
        return f"{name}_output_0"

    def weight(self, name, fin, fout, role):
        w = self.rng.normal(0, 1 / np.sqrt(fin), (fin, fout))
        if role == "fc1" and self.spec.redundancy:  # neurons that partly repeat a few others
            rank = max(1, fout // 4)
            base = self.rng.normal(0, 1 / np.sqrt(fin), (fin, rank)) @ self.rng.normal(0, 1, (rank, fout))
            w = (1 - self.spec.redundancy) * w + self.spec.redundancy * base / np.sqrt(rank)
        if role not in self.spec.quantized:
            return self.const(f"{name}.weight", w)
        scale = np.abs(w).max() / 127
        q = self.const(f"{name}.weight_quantized", np.round(w / scale), np.int8)
        return self.node("DequantizeLinear", [q, self.const(f"{name}.weight_scale", scale)], f"{name}/DequantizeLinear")

    def linear(self, x, fin, fout, name, role=""):
        """torch.nn.Linear on a 3-D input: MatMul by W^T [fin, fout], then Add of the bias."""
        y = self.node("MatMul", [x, self.weight(name, fin, fout, role)], f"{name}/MatMul")
        return self.node("Add", [y, self.const(f"{name}.bias", self.rng.normal(0, 0.1, fout))], f"{name}/Add")

    def scalar(self, name, value):
        return self.const(name, np.float32(value))

    def act(self, x, name):
        kind = self.spec.act
        if kind == "gelu":
            return self.node("Gelu", [x], f"{name}/Gelu")
        if kind == "fastgelu":
            return self.node("FastGelu", [x], f"{name}/FastGelu", domain="com.microsoft")
        if kind == "relu":
            return self.node("Relu", [x], f"{name}/Relu")
        if kind == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x], f"{name}/Sigmoid")], f"{name}/Mul")
        if kind == "gelu_erf":  # as torch exports nn.GELU() before opset 20
            e = self.node("Erf", [self.node("Div", [x, self.scalar(f"{name}.sqrt2", np.sqrt(2))], f"{name}/Div")],
                          f"{name}/Erf")
            y = self.node("Mul", [x, self.node("Add", [e, self.scalar(f"{name}.one", 1)], f"{name}/Add")], f"{name}/Mul")
            return self.node("Mul", [y, self.scalar(f"{name}.half", 0.5)], f"{name}/Mul_1")
        assert kind == "gelu_tanh", kind  # nn.GELU(approximate="tanh")
        cube = self.node("Pow", [x, self.scalar(f"{name}.three", 3)], f"{name}/Pow")
        inner = self.node("Add", [x, self.node("Mul", [cube, self.scalar(f"{name}.c", 0.044715)], f"{name}/Mul")],
                          f"{name}/Add")
        t = self.node("Tanh", [self.node("Mul", [inner, self.scalar(f"{name}.k", np.sqrt(2 / np.pi))], f"{name}/Mul_1")],
                      f"{name}/Tanh")
        y = self.node("Mul", [x, self.node("Add", [t, self.scalar(f"{name}.one", 1)], f"{name}/Add_1")], f"{name}/Mul_2")
        return self.node("Mul", [y, self.scalar(f"{name}.half", 0.5)], f"{name}/Mul_3")

    def layer_norm(self, x, name):
        h = self.spec.hidden
        gamma = self.const(f"{name}.weight", 1 + self.rng.normal(0, 0.1, h))
        beta = self.const(f"{name}.bias", self.rng.normal(0, 0.1, h))
        if self.spec.layer_norm != "decomposed":
            return self.node("LayerNormalization", [x, gamma, beta], f"{name}/LayerNormalization", axis=-1, epsilon=1e-5)

        def mean(t, suffix):
            if self.spec.opset >= 18:
                return self.node("ReduceMean", [t, self.const(f"{name}.axes{suffix}", [-1], np.int64)],
                                 f"{name}/ReduceMean{suffix}")
            return self.node("ReduceMean", [t], f"{name}/ReduceMean{suffix}", axes=[-1])

        d = self.node("Sub", [x, mean(x, "")], f"{name}/Sub")
        var = mean(self.node("Pow", [d, self.scalar(f"{name}.two", 2)], f"{name}/Pow"), "_1")
        var = self.node("Add", [var, self.scalar(f"{name}.eps", 1e-5)], f"{name}/Add")
        std = self.node("Sqrt", [var], f"{name}/Sqrt")
        y = self.node("Mul", [self.node("Div", [d, std], f"{name}/Div"), gamma], f"{name}/Mul")
        return self.node("Add", [y, beta], f"{name}/Add_1")

    def attention(self, x, name, mask):
        s = self.spec
        h, d = s.hidden, s.hidden // s.heads
        if s.attention == "fused":
            w = self.const(f"{name}.qkv.weight", self.rng.normal(0, 1 / np.sqrt(h), (h, 3 * h)))
            b = self.const(f"{name}.qkv.bias", self.rng.normal(0, 0.1, 3 * h))
            ctx = self.node("Attention", [x, w, b], f"{name}/Attention", domain="com.microsoft", num_heads=s.heads)
            return self.linear(ctx, h, h, f"{name}/output/dense")
        split = self.const(f"{name}.split_shape", [0, 0, -1 if s.reshape == "inferred" else s.heads, d], np.int64)

        def heads(t, role, perm):
            shape = split if s.reshape in ("static", "inferred") else self.target_shape(t, f"{name}/{role}", [s.heads, d])
            r = self.node("Reshape", [t, shape], f"{name}/{role}/Reshape")
            return self.node("Transpose", [r], f"{name}/{role}/Transpose", perm=perm)

        q = heads(self.linear(x, h, h, f"{name}/query"), "query", [0, 2, 1, 3])
        k = heads(self.linear(x, h, h, f"{name}/key"), "key", [0, 2, 3, 1])
        v = heads(self.linear(x, h, h, f"{name}/value"), "value", [0, 2, 1, 3])
        scores = self.node("MatMul", [q, k], f"{name}/MatMul")
        if s.scale == "div":
            scores = self.node("Div", [scores, self.scalar(f"{name}.scale", d ** 0.5)], f"{name}/Div")
        else:
            scores = self.node("Mul", [scores, self.scalar(f"{name}.scale", d ** -0.5)], f"{name}/Mul")
        if s.attention == "head_bias":
            bias = self.const(f"{name}.head_bias", self.rng.normal(0, 1, (1, s.heads, s.seq, s.seq)))
            scores = self.node("Add", [scores, bias], f"{name}/Add_bias")
        if mask is not None:
            scores = self.node("Add", [scores, mask], f"{name}/Add")
        probs = self.node("Softmax", [scores], f"{name}/Softmax", axis=-1)
        ctx = self.node("MatMul", [probs, v], f"{name}/MatMul_1")
        ctx = self.node("Transpose", [ctx], f"{name}/Transpose", perm=[0, 2, 1, 3])
        merge = (self.const(f"{name}.merge_shape", [0, 0, h], np.int64) if s.reshape in ("static", "inferred")
                 else self.target_shape(ctx, f"{name}/merge", [h]))
        merged = self.node("Reshape", [ctx, merge], f"{name}/Reshape")
        return self.linear(merged, h, h, f"{name}/output/dense")

    def target_shape(self, t, name, tail):
        """torch's export of t.size()[:2] + tuple(tail) with dynamic axes: a Concat of
        Unsqueeze(Gather(Shape(t), i)) for i = 0, 1 and a constant per entry of ``tail``; with
        ``reshape="computed"`` the head count is t.size(2) // d, computed at run time."""
        def size(i):
            shape = self.node("Shape", [t], f"{name}/Shape_{i}")
            return self.node("Gather", [shape, self.const(f"{name}.index{i}", i, np.int64)], f"{name}/Gather_{i}", axis=0)

        def unsqueeze(x, i):
            return self.node("Unsqueeze", [x, self.const(f"{name}.axes{i}", [0], np.int64)], f"{name}/Unsqueeze_{i}")

        pieces = [unsqueeze(size(i), i) for i in (0, 1)]
        for j, value in enumerate(tail):
            if self.spec.reshape == "computed" and j == 0 and len(tail) == 2:
                heads = self.node("Div", [size(2), self.const(f"{name}.dims", tail[1], np.int64)], f"{name}/Div")
                pieces.append(unsqueeze(heads, 2))
            else:
                pieces.append(self.const(f"{name}.entry{j}", [value], np.int64))
        return self.node("Concat", pieces, f"{name}/Concat", axis=0)

    def ffn(self, x, name):
        s = self.spec
        return self.linear(self.act(self.linear(x, s.hidden, s.ffn, f"{name}/fc1", "fc1"), f"{name}/act"),
                           s.ffn, s.hidden, f"{name}/fc2", "fc2")

    def residual(self, x, y, name):
        """x + y, normalised after (post-norm; SkipLayerNormalization fuses both) or not (pre-norm)."""
        if self.spec.norm == "pre":
            return self.node("Add", [x, y], f"{name}/Add")
        if self.spec.layer_norm == "skip":
            h = self.spec.hidden
            return self.node("SkipLayerNormalization", [x, y, self.const(f"{name}.ln.weight", np.ones(h)),
                                                        self.const(f"{name}.ln.bias", np.zeros(h))],
                             f"{name}/SkipLayerNormalization", domain="com.microsoft", epsilon=1e-5)
        return self.layer_norm(self.node("Add", [x, y], f"{name}/Add"), f"{name}/LayerNorm")

    def block(self, x, i, mask):
        name = f"/encoder/layer.{i}"
        if self.spec.norm == "pre":
            attended = self.attention(self.layer_norm(x, f"{name}/ln1"), f"{name}/attention", mask)
            x = self.residual(x, attended, f"{name}/res1")
            return self.residual(x, self.ffn(self.layer_norm(x, f"{name}/ln2"), f"{name}/ffn"), f"{name}/res2")
        x = self.residual(x, self.attention(x, f"{name}/attention", mask), f"{name}/res1")
        return self.residual(x, self.ffn(x, f"{name}/ffn"), f"{name}/res2")

    def model(self) -> onnx.ModelProto:
        s = self.spec
        seq = "seq" if s.dynamic_seq else s.seq
        inputs = []
        if s.vocab is None:
            inputs.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", seq, s.hidden]))
            x = "input"
        else:
            inputs.append(helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", s.seq]))
            table = self.const("embeddings.word_embeddings.weight", self.rng.normal(0, 1, (s.vocab, s.hidden)))
            words = self.node("Gather", [table, "input_ids"], "/embeddings/word_embeddings/Gather")
            positions = self.const("embeddings.position_embeddings", self.rng.normal(0, 0.5, (s.seq, s.hidden)))
            x = self.node("Add", [words, positions], "/embeddings/Add")
            if s.norm == "post":
                x = self.layer_norm(x, "/embeddings/LayerNorm")
        mask = None
        if s.mask:
            inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", seq]))
            m = self.node("Cast", ["attention_mask"], "/mask/Cast", to=TensorProto.FLOAT)
            m = self.node("Mul", [self.node("Sub", [self.scalar("mask.one", 1), m], "/mask/Sub"),
                                  self.scalar("mask.min", -1e4)], "/mask/Mul")
            mask = self.node("Unsqueeze", [m, self.const("mask.axes", [1, 2], np.int64)], "/mask/Unsqueeze")
        for i in range(s.layers):
            x = self.block(x, i, mask)
        if s.norm == "pre":
            x = self.layer_norm(x, "/encoder/LayerNorm")
        self.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="/Identity"))
        outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", seq, s.hidden])]
        if s.echo_inputs:
            echoed = [i for i in inputs if i.type.tensor_type.elem_type == TensorProto.INT64]
            for i in echoed:
                self.nodes.append(helper.make_node("Identity", [i.name], [f"{i.name}_copy"], name=f"/{i.name}/Identity"))
            outputs[:0] = [helper.make_tensor_value_info(f"{i.name}_copy", TensorProto.INT64, ["batch", seq])
                           for i in echoed]
        graph = helper.make_graph(self.nodes, "encoder", inputs, outputs, self.inits)
        opsets = [helper.make_opsetid("", s.opset)] + ([helper.make_opsetid("com.microsoft", 1)] if self.ms else [])
        model = helper.make_model(graph, opset_imports=opsets, ir_version=9 if s.opset >= 20 else 8,
                                  producer_name="onnxprune-tests")
        if not self.ms:
            onnx.checker.check_model(model, full_check=True)
        return model


def encoder(**kw) -> onnx.ModelProto:
    """An encoder built from ``EncoderSpec(**kw)``."""
    return EncoderBuilder(EncoderSpec(**kw)).model()


def encoder_feeds(spec: EncoderSpec, batch: int = 4, seed: int = 0, lengths=None, seq=None) -> dict[str, np.ndarray]:
    """Random inputs for ``spec``'s encoder (``seq`` tokens, by default the spec's); with a mask,
    sequence i has ``lengths[i]`` real tokens (random from 1 to seq when not given) and the rest is
    padding (mask 0, random values)."""
    rng = np.random.default_rng(seed)
    seq = spec.seq if seq is None else seq
    if spec.vocab is None:
        feeds = {"input": rng.standard_normal((batch, seq, spec.hidden)).astype(np.float32)}
    else:
        feeds = {"input_ids": rng.integers(0, spec.vocab, (batch, seq)).astype(np.int64)}
    if spec.mask:
        lengths = rng.integers(1, seq + 1, batch) if lengths is None else np.asarray(lengths)
        feeds["attention_mask"] = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return feeds


@st.composite
def encoder_specs(draw) -> EncoderSpec:
    """Small encoders: 1-2 layers, 1-4 heads of 2, 4 or 8 dims, FFN 8-48 neurons, every activation
    form, pre- or post-norm, LayerNormalization or its decomposed form, static, inferred or
    dynamic head Reshapes, the scores multiplied or divided, float or embedded input."""
    heads = draw(st.integers(1, 4))
    hidden = heads * draw(st.sampled_from([2, 4, 8]))
    return EncoderSpec(layers=draw(st.integers(1, 2)), hidden=hidden, heads=heads,
                       ffn=draw(st.integers(1, 6)) * 8, seq=draw(st.integers(2, 6)),
                       act=draw(st.sampled_from(ACTIVATIONS)), norm=draw(st.sampled_from(["pre", "post"])),
                       layer_norm=draw(st.sampled_from(["op", "decomposed"])),
                       reshape=draw(st.sampled_from(["static", "inferred", "dynamic"])),
                       scale=draw(st.sampled_from(["mul", "div"])),
                       vocab=draw(st.sampled_from([None, 20])), seed=draw(st.integers(0, 2**16)))

