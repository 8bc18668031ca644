"""Calibration statistics: what the data methods need, streamed through onnxruntime.

For a consumer (a Conv, or a Gemm/MatMul after Flatten) reading n channels with
K taps each (kh*kw for a Conv, H*W for a flattened map):

    X  = its input patches, one row per sample and output position (im2col),
         columns c*K + tap (the order of W.reshape(m, n*K)), plus a ones column;
    Y  = the ORIGINAL model's consumer output (BatchNorm folded, before activation).

Only second-order statistics leave a batch: G = X^T X, C = X^T Y, sum(Y^2) and the
row count, accumulated in float64 (``linalg.LayerStats``), so memory does not grow
with the number of samples and any split into batches sums to the same result.

Statistics are reduced on the host (numpy) or inside an onnxruntime graph: the
patches come from a Conv with one-hot (Dirac) kernels, which copies values exactly,
and G and C from float64 MatMuls, so only small matrices leave the runtime.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .errors import OnnxPruneError
from .graph import inference_session, to_graph, to_model
from .groups import Analysis
from .linalg import LayerStats

Batches = Callable[[], Iterable[dict[str, np.ndarray]]]


class Device(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class StatsMode(str, enum.Enum):
    HOST = "host"
    GRAPH = "graph"


def providers(device: Device) -> list[str]:
    """onnxruntime execution providers for ``device`` (CUDA where onnxruntime-gpu finds a GPU)."""
    if device is Device.CPU:
        return ["CPUExecutionProvider"]
    if cuda_works():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device is Device.CUDA:
        raise OnnxPruneError("--device cuda: onnxruntime cannot use CUDA here (it needs onnxruntime-gpu, "
                             "a GPU and the CUDA libraries)")
    return ["CPUExecutionProvider"]


@functools.cache
def cuda_works() -> bool:
    """Whether a session really gets the CUDA provider: onnxruntime-gpu lists it even
    where the CUDA libraries or the GPU are missing, then falls back with loud errors."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        return "CUDAExecutionProvider" in session.get_providers()
    except Exception:  # any failure to start CUDA means: not here
        return False
    finally:
        ort.set_default_logger_severity(3)


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a group's channels into its weights, in im2col terms."""

    node: str
    op: str  # Conv, Gemm or MatMul
    input: str
    output: str
    channels: int  # n: input channels
    taps: int  # K
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # begin..., end...
    dilations: tuple[int, ...] = ()

    @property
    def columns(self) -> int:
        return self.channels * self.taps + 1


def consumer_of(node: gs.Node, analysis: Analysis) -> Consumer | str:
    """The im2col description of a consumer node, or the reason it cannot be reconstructed."""
    x, y = node.inputs[0], node.outputs[0]
    layout = analysis.layouts.get(x.name)
    in_shape = analysis.shapes.get(x.name)
    if layout is None or in_shape is None or None in in_shape:
        return f"{node.op} node '{node.name}': input shape unknown"
    if node.op == "Conv":
        if int(node.attrs.get("group", 1)) != 1 or len(in_shape) != 4:
            return f"Conv node '{node.name}': only 2-D convolutions with group=1 are reconstructed"
        w = node.inputs[1].values
        kernel = tuple(int(k) for k in w.shape[2:])
        strides = tuple(node.attrs.get("strides", (1, 1)))
        dilations = tuple(node.attrs.get("dilations", (1, 1)))
        pads = _conv_pads(node, in_shape[2:], kernel, strides, dilations)
        return Consumer(node.name, "Conv", x.name, y.name, in_shape[1], int(np.prod(kernel)),
                        kernel, strides, pads, dilations)
    if node.op in ("Gemm", "MatMul"):
        if len(in_shape) != 2:
            return f"{node.op} node '{node.name}': input is not 2-D"
        return Consumer(node.name, node.op, x.name, y.name, len(layout.atoms), layout.block)
    return f"{node.op} node '{node.name}': weights of this op are not reconstructed"


def _conv_pads(node: gs.Node, spatial, kernel, strides, dilations) -> tuple[int, ...]:
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return tuple(node.attrs.get("pads", (0,) * 2 * len(kernel)))
    if auto == "VALID":
        return (0,) * 2 * len(kernel)
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return tuple(begin + end)


def patches(x: np.ndarray, c: Consumer) -> np.ndarray:
    """im2col: rows (sample, output position), columns channel*K + tap."""
    return _augmented(x, c, np.dtype(x.dtype))[:, :-1]


def _augmented(x: np.ndarray, c: Consumer, dtype: np.dtype) -> np.ndarray:
    """Xa = [im2col(x) 1] of ``dtype``, written in one pass (the cast included)."""
    n = x.shape[0]
    if c.op != "Conv":
        out = np.empty((n, x[0].size + 1), dtype)
        out[:, :-1] = x.reshape(n, -1)
        out[:, -1] = 1
        return out
    (kh, kw), (sh, sw), (dh, dw) = c.kernel, c.strides, c.dilations
    pt, pl, pb, pr = c.pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # [N, C, Ho, Wo, kh, kw]
    ch, ho, wo = win.shape[1:4]
    out = np.empty((n * ho * wo, ch * kh * kw + 1), dtype)
    body = out[:, :-1].view()
    body.shape = (n, ho, wo, ch, kh, kw)  # a view (setting .shape never copies)
    body[...] = win.transpose(0, 2, 3, 1, 4, 5)
    out[:, -1] = 1
    return out


def targets(y: np.ndarray, c: Consumer) -> np.ndarray:
    """Consumer outputs laid out like the rows of ``patches``: (sample, position) x outputs."""
    if y.ndim == 2:
        return y
    return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])


def host_stats(x: np.ndarray, y: np.ndarray, c: Consumer, chunk_bytes: int = 64 << 20) -> LayerStats:
    """Statistics of one batch, in float64, on the host: G = Xa^T Xa and C = Xa^T Y by
    BLAS on chunks of whole samples, so memory stays near ``chunk_bytes`` per consumer."""
    rows_per_sample = int(np.prod(y.shape[2:], dtype=np.int64))
    p, m = c.columns, y.shape[1]
    step = max(1, chunk_bytes // (rows_per_sample * p * 8))
    gram, cross, yy, rows = np.zeros((p, p)), np.zeros((p, m)), np.zeros(m), 0
    for start in range(0, x.shape[0], step):
        xa = _augmented(x[start:start + step], c, np.dtype(np.float64))
        ys = targets(y[start:start + step], c).astype(np.float64)
        gram += xa.T @ xa  # a plain GEMM: faster here than syrk on half the matrix
        cross += xa.T @ ys
        yy += np.einsum("ij,ij->j", ys, ys)
        rows += xa.shape[0]
    return LayerStats(gram, cross, yy, rows)


def stats_graph(c: Consumer, x_shape: tuple[int, ...], m: int, dtype=np.float32) -> onnx.ModelProto:
    """A small model computing one batch's statistics from inputs ``x`` and ``y`` in onnxruntime.

    Conv with one-hot kernels E[c*K + t, c, t] = 1 turns x into its patches exactly
    (a copy: each output sums one value and zeros); G and C are float64 MatMuls.
    """
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits = [], []
    if c.op == "Conv":
        n, k = c.channels, c.taps
        eye = np.zeros((n * k, n, *c.kernel), dtype=dtype)
        eye[np.arange(n * k), np.repeat(np.arange(n), k), *np.unravel_index(np.tile(np.arange(k), n), c.kernel)] = 1
        inits.append(numpy_helper.from_array(eye, "eye"))
        nodes += [
            helper.make_node("Conv", ["x", "eye"], ["cols"], strides=list(c.strides), pads=list(c.pads),
                             dilations=list(c.dilations)),
            helper.make_node("Transpose", ["cols"], ["cols_t"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", ["cols_t", "shape_x"], ["xr"]),
            helper.make_node("Transpose", ["y"], ["y_t"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", ["y_t", "shape_y"], ["yr"]),
        ]
        inits += [numpy_helper.from_array(np.array([-1, n * k], np.int64), "shape_x"),
                  numpy_helper.from_array(np.array([-1, m], np.int64), "shape_y")]
        y_rank = 4
    else:
        nodes += [helper.make_node("Identity", ["x"], ["xr"]), helper.make_node("Identity", ["y"], ["yr"])]
        y_rank = 2
    nodes += [
        helper.make_node("Cast", ["xr"], ["xd"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["yr"], ["yd"], to=TensorProto.DOUBLE),
        helper.make_node("Shape", ["xd"], ["xs"], start=0, end=1),
        helper.make_node("Concat", ["xs", "one"], ["ones_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["ones_shape"], ["ones"],
                         value=numpy_helper.from_array(np.ones(1, np.float64))),
        helper.make_node("Concat", ["xd", "ones"], ["xa"], axis=1),
        helper.make_node("Transpose", ["xa"], ["xa_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["xa_t", "xa"], ["gram"]),
        helper.make_node("MatMul", ["xa_t", "yd"], ["cross"]),
        helper.make_node("Mul", ["yd", "yd"], ["y2"]),
        helper.make_node("ReduceSum", ["y2", "axis0"], ["yy"], keepdims=0),
        helper.make_node("Shape", ["xd"], ["rows"], start=0, end=1),
    ]
    inits += [numpy_helper.from_array(np.array([1], np.int64), "one"),
              numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    graph = helper.make_graph(
        nodes, "stats",
        [helper.make_tensor_value_info("x", elem, [None] * len(x_shape)),
         helper.make_tensor_value_info("y", elem, [None] * y_rank)],
        [helper.make_tensor_value_info("gram", TensorProto.DOUBLE, None),
         helper.make_tensor_value_info("cross", TensorProto.DOUBLE, None),
         helper.make_tensor_value_info("yy", TensorProto.DOUBLE, None),
         helper.make_tensor_value_info("rows", TensorProto.INT64, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class GraphStats:
    """Computes per-batch statistics in onnxruntime, one small session per consumer."""

    def __init__(self, device_providers: list[str]):
        self.providers = device_providers
        self.sessions: dict[tuple, ort.InferenceSession] = {}

    def __call__(self, x: np.ndarray, y: np.ndarray, c: Consumer) -> LayerStats:
        key = (c, x.dtype.str, y.shape[1])
        if key not in self.sessions:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave the cores to numpy
            model = stats_graph(c, x.shape, y.shape[1], x.dtype)
            self.sessions[key] = ort.InferenceSession(model.SerializeToString(), options, providers=self.providers)
        gram, cross, yy, rows = self.sessions[key].run(None, {"x": x, "y": y})
        return LayerStats(gram, cross, yy, int(rows[0]))


def probe_model(model: onnx.ModelProto, tensors: list[str],
                sources: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """``model`` cut down to what computes ``tensors``, which become its outputs; from the
    graph inputs, or from the tensors ``sources`` (examples give dtype and shape) instead."""
    graph = to_graph(model)
    known = graph.tensors()
    untyped = [known[name] for name in tensors if known[name].dtype is None]
    info = _inferred(model) if untyped or sources else {}
    for t in untyped:  # e.g. int64 shape arithmetic: its type is in no annotation
        t.dtype = info.get(t.name, (np.float32, None))[0]
    if sources is not None:
        graph.inputs = []
        for name, example in sources.items():
            tensor = known[name]
            tensor.inputs.clear()  # cut off its producer: the value is given
            dims = info.get(name, (None, None))[1]
            # dim 0 is the batch unless inference fixes it (shape arithmetic); unknown: rank > 1
            batch = dims[0] is None if dims else example.ndim > 1
            shape = [None, *example.shape[1:]] if batch else list(example.shape)
            tensor.dtype, tensor.shape = example.dtype, shape
            graph.inputs.append(tensor)
    graph.outputs = [known[name] for name in tensors]
    if sources is not None:
        graph.cleanup(remove_unused_graph_inputs=True)
    return to_model(graph, model)


def _inferred(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, list]]:
    """Element type and dims (ints, or names/None where not fixed) of the model's tensors
    by onnx shape inference; empty where it fails (too large, ops it does not know)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weights(model))
    except Exception:
        return {}
    result = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        t = vi.type.tensor_type
        if t.elem_type:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
            result[vi.name] = (helper.tensor_dtype_to_np_dtype(t.elem_type), dims)
    return result


def _without_weights(model: onnx.ModelProto, limit: int = 1024) -> onnx.ModelProto:
    """A copy of ``model`` whose float initializers of more than ``limit`` elements are typed
    graph inputs instead: inference needs their shapes, not their values (a Reshape's shape
    is a small int64 constant and stays), and a model of several GB is not copied whole."""
    graph = model.graph
    heavy = {t.name for t in graph.initializer
             if t.data_type in _FLOAT_TYPES and int(np.prod(t.dims, dtype=np.int64)) > limit}
    if not heavy:
        return model
    inputs = [*(i for i in graph.input if i.name not in heavy),
              *(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                for t in graph.initializer if t.name in heavy)]
    light = onnx.GraphProto(name=graph.name, node=graph.node, input=inputs, output=graph.output,
                            value_info=graph.value_info,
                            initializer=[t for t in graph.initializer if t.name not in heavy])
    return onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                           functions=model.functions, graph=light)


_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def run_probe(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in inputs})))


def make_session(model: onnx.ModelProto, device_providers: list[str]) -> ort.InferenceSession:
    """A session for probes: the tensors read are graph outputs, so onnxruntime's graph
    optimisations (fusions, layouts) keep them and only make the runs faster."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave the cores to numpy
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return inference_session(model, options, device_providers)


def collect(inputs_model: onnx.ModelProto, targets_model: onnx.ModelProto, consumers: list[Consumer],
            batches: Batches, mode: StatsMode = StatsMode.HOST, device_providers: list[str] | None = None,
            holdout_every: int = 0, on_batch: Callable[[int], None] | None = None,
            ) -> tuple[dict[str, LayerStats], dict[str, LayerStats]]:
    """Statistics of every consumer: X from ``inputs_model``, Y from ``targets_model``.

    Returns (fit, holdout): with ``holdout_every`` = h > 0, every h-th batch goes to
    the holdout statistics (for choosing the ridge), the rest to fit.
    """
    device_providers = device_providers or ["CPUExecutionProvider"]
    ins, outs = {c.input for c in consumers}, {c.output for c in consumers}
    if inputs_model is targets_model:  # one run gives both
        session = make_session(probe_model(inputs_model, sorted(ins | outs)), device_providers)
        runs = ((v, v) for v in (run_probe(session, feeds) for feeds in batches()))
    else:
        x_session = make_session(probe_model(inputs_model, sorted(ins)), device_providers)
        y_session = make_session(probe_model(targets_model, sorted(outs)), device_providers)
        runs = ((run_probe(x_session, feeds), run_probe(y_session, feeds)) for feeds in batches())
    return accumulate(runs, consumers, mode, device_providers, holdout_every, on_batch)


def accumulate(runs: Iterable[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]], consumers: list[Consumer],
               mode: StatsMode = StatsMode.HOST, device_providers: list[str] | None = None,
               holdout_every: int = 0, on_batch: Callable[[int], None] | None = None,
               ) -> tuple[dict[str, LayerStats], dict[str, LayerStats]]:
    """Statistics of every consumer from per-batch (inputs, targets) tensors; see ``collect``."""
    reduce = host_stats if mode is StatsMode.HOST else GraphStats(device_providers or ["CPUExecutionProvider"])
    fit: dict[str, LayerStats] = {}
    holdout: dict[str, LayerStats] = {}
    for i, (xs, ys) in enumerate(runs):
        bucket = holdout if holdout_every and i % holdout_every == holdout_every - 1 else fit
        for c in consumers:
            s = reduce(xs[c.input], ys[c.output], c)
            bucket[c.node] = s if c.node not in bucket else bucket[c.node] + s
        if on_batch is not None:
            on_batch(len(xs[consumers[0].input]))
    if not fit:
        raise OnnxPruneError("the calibration data has no samples")
    return fit, holdout
