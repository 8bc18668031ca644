"""Calibration statistics, streamed through onnxruntime: im2col second-order statistics per consumer, reduced on the host or in a graph.

For a consumer (a Conv, a ConvTranspose, or a Gemm/MatMul after Flatten) reading n
channels with K taps each (kh*kw for a Conv or ConvTranspose, H*W for a flattened map):

    X  = its input patches, one row per sample and output position (im2col),
         columns c*K + tap (the order of W.reshape(m, n*K); for a ConvTranspose, whose
         W is (n, m, kh, kw), of W.transpose(0, 2, 3, 1).reshape(n*K, m), its patches
         those of the direct convolution it equals: transposed.py), plus a ones column;
    Y  = the ORIGINAL model's consumer output (BatchNorm folded, before activation).

A MatMul reading a transformer's [batch, sequence, n] activations has one row per token
(``token_rows``); where the feeds carry an ``attention_mask`` ([batch, sequence], 0 for
padding), the padded tokens' rows are left out of G and C, so padding never steers the fit.

Only second-order statistics leave a batch: G = X^T X, C = X^T Y, sum(Y^2) and the
row count, accumulated in float64 (``layer_stats.LayerStats``), so memory does not grow
with the number of samples and any split into batches sums to the same result (to the
rounding of the host's float32 products). They read a seeded sample of each sample's
output positions, weighted to unbiased estimates of the full ones (sampling.py,
``Calibration.rows_per_column``; 0 reads every row).

Statistics are reduced on the host (numpy: float32 products around the rows' means,
``layer_stats.RunningSums``) or inside an onnxruntime graph: the patches come from a
Conv with one-hot (Dirac) kernels, which copies values exactly, the drawn rows from a
Gather, and G and C from float64 MatMuls, so only small matrices leave the runtime.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..analysis.consumers import Consumer
from ..errors import OnnxPruneError
from ..graph.probe import probe_model
from ..graph.runtime import CPU, run_all, session
from .grouped import BlockStats, blocks_of
from .layer_stats import LayerStats, RunningSums
from .sampling import ALL_ROWS, DEFAULT_ROWS_PER_COLUMN, RowSampling
from .transposed import direct_input, direct_pads

Batches = Callable[[], Iterable[dict[str, np.ndarray]]]
HOLDOUT_EVERY = 4  # every 4th calibration batch is held out to choose the ridge
MASK = "attention_mask"  # the model input that marks real tokens (nonzero) and padding (0)


# The tensors one statistics run hands over, about: a batch runs in slices. Every slice adds a
# p x p product to each consumer's running sums (RunningSums), so smaller slices cost time: PRO's
# statistics of ResNet-50 at 224 px on 128 images (alone, docs/PERFORMANCE.md) took 34.5 s and
# peaked 3.6 GB with 512 MB slices, 45.5 s and 2.8 GB with 256 MB, 86.7 s and 2.3 GB with 128 MB.
RUN_BYTES = 256 << 20
# The largest activation of one run of the sequential pass, about: onnxruntime's working memory
# grows with the samples of a run, its speed hardly (ResNet-50 at 224 px: 64 samples per run took
# 1.2 GB above the model, 16 took 0.55 GB, at the same speed; docs/PERFORMANCE.md).
RUN_TENSOR_BYTES = 64 << 20


@dataclass(frozen=True)
class Part:
    """Samples ``first``.. of calibration batch ``batch``, of ``total`` samples: what one run saw."""

    batch: int
    first: int
    total: int


class StatsMode(str, enum.Enum):
    HOST = "host"
    GRAPH = "graph"


@dataclass(frozen=True)
class Calibration:
    """Calibration data and how to run it: ``batches()`` yields feeds; ``sequential``: X from
    the pruned model (True) or from the original (False); ``cache_bytes``: activations kept
    between groups in memory, in all, and ``spill``: the rest in temporary files (cache.py);
    ``source``: where the data come from, for messages; ``rows_per_column``: the row budget of every consumer's statistics, per column (sampling.py;
    0: every output position of every sample)."""

    batches: Batches
    samples: int
    mode: StatsMode = StatsMode.HOST
    providers: tuple[str, ...] = CPU
    sequential: bool = True
    cache_bytes: int = 256 << 20
    spill: bool = True  # kept activations beyond cache_bytes go to temporary files (cache.py)
    source: str = "the calibration data"
    rows_per_column: int = DEFAULT_ROWS_PER_COLUMN  # rows each consumer's statistics read (sampling.py); 0: all

    @property
    def sampling(self) -> RowSampling:
        return RowSampling(self.rows_per_column, self.samples)


def token_rows(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A Gemm or MatMul consumer's input x [..., n] and output y [..., m] as rows, X [T, n] and
    Y [T, m], one per position of the leading dims (T = batch x sequence for a transformer's
    tokens). With ``mask`` of x's leading dims ([batch, sequence]: attention_mask), only the
    rows where it is nonzero: the statistics of a padded batch are those of its real tokens.
    A mask of other dims (a consumer after pooling) does not apply."""
    xs, ys = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    if mask is None or mask.shape != x.shape[:-1]:
        return xs, ys
    real = mask.reshape(-1) != 0
    return xs[real], ys[real]


def windows(x: np.ndarray, c: Consumer) -> np.ndarray:
    """The patches of a Conv or ConvTranspose input as a view [N, C, Ho, Wo, kh, kw] (no copy
    but the padding; a ConvTranspose's are those of the direct conv it equals, transposed.py)."""
    (kh, kw), (dh, dw) = c.kernel, c.dilations
    if c.op == "ConvTranspose":  # a direct conv, stride 1, of the zero-inserted input (transposed.py)
        xp, (sh, sw) = direct_input(x, c), (1, 1)
    else:
        pt, pl, pb, pr = c.pads
        xp, (sh, sw) = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))), c.strides
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # [N, C, Ho, Wo, kh, kw]
    if c.op == "ConvTranspose":
        win = win[..., ::-1, ::-1]  # the direct conv's kernel is flipped: column t is W[:, :, t]'s
    return win


def augmented(x: np.ndarray, c: Consumer, dtype: np.dtype, pick: np.ndarray | None = None,
              ones: bool = True) -> np.ndarray:
    """Xa = [im2col(x) 1] of ``dtype``, written in one pass (the cast included): rows (sample,
    output position), columns channel*K + tap, then the ones column (none if not ``ones``).
    ``pick``: only these rows (flat indices sample * positions + position, sampling.py)."""
    n, extra = x.shape[0], int(ones)
    if c.op not in ("Conv", "ConvTranspose"):
        rows = x.reshape(n, -1) if pick is None else x.reshape(n, -1)[pick]
        out = np.empty((rows.shape[0], rows.shape[1] + extra), dtype)
        out[:, :rows.shape[1]] = rows
    else:
        win = windows(x, c)
        ch, ho, wo, kh, kw = win.shape[1:]
        width = ch * kh * kw
        if pick is not None:  # fancy indexing gathers just the drawn patches: [rows, C, kh, kw]
            sample, position = np.divmod(pick, ho * wo)
            out = np.empty((len(pick), width + extra), dtype)
            out[:, :width] = win[sample, :, position // wo, position % wo].reshape(len(pick), width)
        else:
            out = np.empty((n * ho * wo, width + extra), dtype)
            body = out[:, :width].view()
            body.shape = (n, ho, wo, ch, kh, kw)  # a view (setting .shape never copies)
            body[...] = win.transpose(0, 2, 3, 1, 4, 5)
    if ones:
        out[:, -1] = 1
    return out


def targets(y: np.ndarray, c: Consumer, pick: np.ndarray | None = None) -> np.ndarray:
    """Consumer outputs laid out like the rows of ``augmented``: (sample, position) x outputs
    (``pick``: only those rows)."""
    if y.ndim == 2:
        return y if pick is None else y[pick]
    if pick is None:
        return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
    positions = int(np.prod(y.shape[2:], dtype=np.int64))
    sample, position = np.divmod(pick, positions)
    flat = y.reshape(y.shape[0], y.shape[1], positions)
    return flat[sample, :, position]


def host_stats(x: np.ndarray, y: np.ndarray, c: Consumer, rows: RowSampling = ALL_ROWS, batch: int = 0,
               chunk_bytes: int = 32 << 20, part: Part | None = None) -> LayerStats:
    """Statistics of one batch on the host (``add_host_stats``)."""
    sums = RunningSums(c.columns - 1, y.shape[1])
    add_host_stats(sums, x, y, c, rows, batch, chunk_bytes, part)
    return sums.stats()


def add_host_stats(sums: RunningSums, x: np.ndarray, y: np.ndarray, c: Consumer, rows: RowSampling = ALL_ROWS,
                   batch: int = 0, chunk_bytes: int = 32 << 20, part: Part | None = None) -> None:
    """Adds one batch's rows to ``sums``, in chunks of whole samples so that memory stays near
    ``chunk_bytes`` per consumer: the rows ``rows`` draws for batch number ``batch`` (all by
    default; ``part``: x and y are a slice of the batch), each chunk's products in float32
    (``layer_stats.RunningSums``)."""
    positions = int(np.prod(y.shape[2:], dtype=np.int64))
    n, p = x.shape[0], c.columns
    drawn = rows.draw(c.node, batch, n, positions, p, *((part.first, part.total) if part else ()))
    pick, weight = drawn if drawn is not None else (None, 1.0)
    per_sample = positions if pick is None else len(pick) // n
    step = max(1, chunk_bytes // (per_sample * p * 4))
    for start in range(0, n, step):
        stop = min(n, start + step)
        local = None if pick is None else pick[start * per_sample:stop * per_sample] - start * positions
        xs = augmented(x[start:stop], c, np.dtype(np.float32), local, ones=False)
        ys = np.asarray(targets(y[start:stop], c, local), dtype=np.float32)
        sums.add(xs, ys, weight)


def stats_graph(c: Consumer, x_shape: tuple[int, ...], m: int, dtype=np.float32, sampled: bool = False,
                ) -> onnx.ModelProto:
    """A small model computing one batch's statistics from inputs ``x`` and ``y`` in onnxruntime
    (``sampled``: of the rows that the input ``pick`` names only, sampling.py).

    Conv with one-hot kernels E[c*K + t, c, t] = 1 turns x into its patches exactly
    (a copy: each output sums one value and zeros); G and C are float64 MatMuls. For a
    ConvTranspose the Conv reads the zero-inserted, padded input (transposed.py) and its
    kernels are flipped: E[c*K + t, c, K-1-t] = 1.
    """
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits = [], []
    if c.op in ("Conv", "ConvTranspose"):
        n, k = c.channels, c.taps
        taps = np.tile(np.arange(k), n)
        if c.op == "ConvTranspose":
            # Zeros inserted by a ConvTranspose with identity 1x1 kernels (a copy); Pad crops where < 0.
            around = direct_pads(c)
            inits += [numpy_helper.from_array(np.eye(n, dtype=dtype).reshape(n, n, 1, 1), "spread"),
                      numpy_helper.from_array(np.array([0, 0, *around[:2], 0, 0, *around[2:]], np.int64), "around")]
            nodes += [helper.make_node("ConvTranspose", ["x", "spread"], ["xu"], strides=list(c.strides)),
                      helper.make_node("Pad", ["xu", "around"], ["xp"])]
            source, strides, pads, taps = "xp", [1, 1], [0, 0, 0, 0], k - 1 - taps
        else:
            source, strides, pads = "x", list(c.strides), list(c.pads)
        eye = np.zeros((n * k, n, *c.kernel), dtype=dtype)
        eye[np.arange(n * k), np.repeat(np.arange(n), k), *np.unravel_index(taps, c.kernel)] = 1
        inits.append(numpy_helper.from_array(eye, "eye"))
        nodes += [
            helper.make_node("Conv", [source, "eye"], ["cols"], strides=strides, pads=pads,
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
    rows_x, rows_y = "xr", "yr"
    if sampled:
        nodes += [helper.make_node("Gather", ["xr", "pick"], ["xg"], axis=0),
                  helper.make_node("Gather", ["yr", "pick"], ["yg"], axis=0)]
        rows_x, rows_y = "xg", "yg"
    nodes += [
        helper.make_node("Cast", [rows_x], ["xd"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", [rows_y], ["yd"], to=TensorProto.DOUBLE),
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
         helper.make_tensor_value_info("y", elem, [None] * y_rank),
         *([helper.make_tensor_value_info("pick", TensorProto.INT64, [None])] if sampled else [])],
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

    def __call__(self, x: np.ndarray, y: np.ndarray, c: Consumer, rows: RowSampling = ALL_ROWS,
                 batch: int = 0, part: Part | None = None) -> LayerStats:
        positions = int(np.prod(y.shape[2:], dtype=np.int64))
        drawn = rows.draw(c.node, batch, x.shape[0], positions, c.columns,
                          *((part.first, part.total) if part else ()))
        key = (c, x.dtype.str, y.shape[1], drawn is not None)
        if key not in self.sessions:
            self.sessions[key] = session(stats_graph(c, x.shape, y.shape[1], x.dtype, drawn is not None),
                                         self.providers)
        feeds = {"x": x, "y": y} if drawn is None else {"x": x, "y": y, "pick": drawn[0].astype(np.int64)}
        gram, cross, yy, used = self.sessions[key].run(None, feeds)
        if drawn is None:
            return LayerStats(gram, cross, yy, int(used[0]))
        w = drawn[1]
        return LayerStats(w * gram, w * cross, w * yy, int(round(w * int(used[0]))), int(used[0]))


def collect(inputs_model: onnx.ModelProto, targets_model: onnx.ModelProto, consumers: list[Consumer],
            batches: Batches, mode: StatsMode = StatsMode.HOST, device_providers: list[str] | None = None,
            holdout_every: int = 0, on_batch: Callable[[int], None] | None = None, rows: RowSampling = ALL_ROWS,
            run_bytes: int = RUN_BYTES) -> tuple[dict[str, LayerStats], dict[str, LayerStats]]:
    """Statistics of every consumer: X from ``inputs_model``, Y from ``targets_model``, of the
    rows that ``rows`` draws (sampling.py; default all), each batch run in slices whose tensors
    take about ``run_bytes`` (``sliced``).

    Returns (fit, holdout): with ``holdout_every`` = h > 0, every h-th batch goes to
    the holdout statistics (for choosing the ridge), the rest to fit.
    """
    device_providers = device_providers or ["CPUExecutionProvider"]
    ins, outs = {c.input for c in consumers}, {c.output for c in consumers}

    def mask(feeds):  # carried beside the inputs, for token_rows
        return {MASK: feeds[MASK]} if MASK in feeds else {}

    if inputs_model is targets_model:  # one run gives both
        both = session(probe_model(inputs_model, sorted(ins | outs)), device_providers, arena=False)

        def run(feeds):
            values = {**run_all(both, feeds), **mask(feeds)}
            return values, values
    else:
        x_session = session(probe_model(inputs_model, sorted(ins)), device_providers, arena=False)
        y_session = session(probe_model(targets_model, sorted(outs)), device_providers, arena=False)

        def run(feeds):
            return {**run_all(x_session, feeds), **mask(feeds)}, run_all(y_session, feeds)
    return accumulate(sliced(batches(), run, run_bytes), consumers, mode, device_providers, holdout_every,
                      on_batch, rows)


def sliced(batches: Iterable[dict[str, np.ndarray]], run: Callable, budget: int,
           ) -> Iterator[tuple[Part, dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """run(feeds) -> (xs, ys) for every batch in slices of samples whose tensors take about
    ``budget`` bytes: every consumer's input and output of a whole batch at once is 73 MiB an
    image on ResNet-50 at 224 px, 4.7 GB for a batch of 64. The first slice, one sample, sizes
    the others. The statistics are those of whole batches (``Part``: the same rows drawn)."""
    per_slice = 1
    for i, feeds in enumerate(batches):
        total = len(next(iter(feeds.values())))
        first = 0
        while first < total:
            stop = min(total, first + per_slice)
            xs, ys = run({k: v[first:stop] for k, v in feeds.items()})
            yield Part(i, first, total), xs, ys
            size = sum(v.nbytes for v in xs.values()) + (0 if ys is xs else sum(v.nbytes for v in ys.values()))
            per_slice = max(1, int(budget * (stop - first) // max(size, 1)))
            first = stop


def slices(batches: Iterable[dict[str, np.ndarray]], size: int = 0) -> Iterator[tuple[Part, dict[str, np.ndarray]]]:
    """Every batch in slices of at most ``size`` samples, each with its ``Part`` (the rows drawn are
    those of the whole batch); ``size`` 0: whole batches (``Part`` total 0)."""
    for i, feeds in enumerate(batches):
        total = len(next(iter(feeds.values())))
        if not size or size >= total:
            yield Part(i, 0, 0), feeds
            continue
        for first in range(0, total, size):
            yield Part(i, first, total), {k: v[first:first + size] for k, v in feeds.items()}


def samples_per_run(model: onnx.ModelProto, shapes: dict[str, tuple], budget: int = RUN_TENSOR_BYTES) -> int:
    """Samples per run such that the model's largest activation (a node's output, not a weight)
    takes about ``budget`` bytes (``shapes``: per sample, shapes.py's convention); 0 (whole
    batches) where the model fixes its batch dim, which no slice could feed."""
    for i in model.graph.input:
        dims = i.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 1:
            return 0
    produced = {o for node in model.graph.node for o in node.output}
    sizes = [np.prod(s, dtype=np.int64) for name, s in shapes.items()
             if name in produced and s and all(isinstance(d, int) for d in s)]
    return max(1, int(budget // (4 * max(sizes, default=1))))


def accumulate(parts: Iterable[tuple[Part, dict[str, np.ndarray], dict[str, np.ndarray]]],
               consumers: list[Consumer], mode: StatsMode = StatsMode.HOST,
               device_providers: list[str] | None = None, holdout_every: int = 0,
               on_batch: Callable[[int], None] | None = None, rows: RowSampling = ALL_ROWS,
               ) -> tuple[dict[str, LayerStats], dict[str, LayerStats]]:
    """Statistics of every consumer from (``Part``, inputs, targets) tensors, of whole batches or
    slices (``Part`` total 0: a whole batch, as ``draw`` reads it); see ``collect``. A grouped conv's
    are per block (grouped.BlockStats); a Gemm's or MatMul's over the rows of ``token_rows``, without
    padding where the inputs carry the attention mask (``MASK``). On the host each consumer's (or
    grouped conv block's) statistics are running sums that every slice adds to (``RunningSums``);
    in a graph, per-slice ``LayerStats`` added up."""
    graph = None if mode is StatsMode.HOST else GraphStats(device_providers or ["CPUExecutionProvider"])
    fit: dict[str, list] = {}
    holdout: dict[str, list] = {}
    for part, xs, ys in parts:
        i = part.batch
        bucket = holdout if holdout_every and i % holdout_every == holdout_every - 1 else fit
        for c in consumers:
            x, y = xs[c.input], ys[c.output]
            if c.op in ("Gemm", "MatMul"):
                x, y = token_rows(x, y, xs.get(MASK))
            blocks = [(x, y, c)] if c.groups == 1 else list(blocks_of(x, y, c))
            if graph is None:
                sums = bucket.setdefault(c.node, [RunningSums(cb.columns - 1, yb.shape[1]) for _, yb, cb in blocks])
                for (xb, yb, cb), into in zip(blocks, sums):
                    add_host_stats(into, xb, yb, cb, rows, i, part=part)
            else:
                new = [graph(xb, yb, cb, rows, i, part=part) for xb, yb, cb in blocks]
                bucket[c.node] = new if c.node not in bucket else [a + b for a, b in zip(bucket[c.node], new)]
        if on_batch is not None:
            on_batch(len(xs[consumers[0].input]))
    if not fit:
        raise OnnxPruneError("the calibration data has no samples")
    groups = {c.node: c.groups for c in consumers}
    for bucket in (fit, holdout):
        for node in list(bucket):  # one at a time: a consumer's sums go as its statistics come
            bucket[node] = _finished(bucket.pop(node), groups[node])
    return fit, holdout  # type: ignore[return-value]


def _finished(found: list, groups: int) -> LayerStats | BlockStats:
    """One consumer's statistics: its running sums (or graph statistics) per block as ``LayerStats``,
    or as ``BlockStats`` for a grouped conv."""
    blocks = [s.stats() if isinstance(s, RunningSums) else s for s in found]
    return blocks[0] if groups == 1 else BlockStats(tuple(blocks))
