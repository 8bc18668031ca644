"""Data methods: choose channels from calibration statistics and rewrite the consumers.

Sequential, from input to output (METHODS.md): for each reconstructable group in
turn, the statistics take X from the model pruned so far and Y from the ORIGINAL
model, so each layer also corrects the error left by the layers before it. Then

- reap:   greedy backward elimination by the error AFTER least-squares reconstruction
          (inverse-Gram downdates), then ridge least squares toward the original weights;
- thinet: ThiNet's selection (by the consumers' output change WITHOUT reconstruction),
          then the same least-squares reconstruction, so the two differ only in selection;
- nu:     Neuro-Unification: each removed channel's behaviour is taken over by a similar
          channel (affine fit), the consumers' weights folded accordingly.

Reconstructed weights are kept in the ORIGINAL shapes (zeros where channels are gone),
overlaid on the original model, and the surgery of ``groups``/``surgery`` cuts the
model from that, so one analysis serves every step.

A group is reconstructable when each of its consumers (Conv with group=1, Gemm, or
MatMul followed by a bias Add) reads all of that group's channels, once; it may read other
groups' channels too (a Concat), which stay while this group is pruned and are refitted
with it. Other groups are left unpruned by the data methods, and the report says why.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Callable, ContextManager

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import linalg
from .activations import SegmentRunner, pairs
from .calibrate import Batches, Consumer, StatsMode, accumulate, consumer_of
from .config import Method
from .graph import set_constant_input, to_graph, to_model
from .groups import Analysis
from .surgery import prune_channels

# Ridge used while selecting channels (relative to mean(diag G)); reconstruction picks its own.
SELECTION_ALPHA = 1e-3
ALPHA_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
HOLDOUT_EVERY = 4  # every 4th calibration batch is held out to choose the ridge

Progress = Callable[[str, int], ContextManager[Callable[[int], None]]]


def no_progress(label: str, total: int) -> ContextManager[Callable[[int], None]]:
    return nullcontext(lambda n: None)


@dataclass(frozen=True)
class Calibration:
    batches: Batches
    samples: int
    mode: StatsMode = StatsMode.HOST
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    sequential: bool = True  # X from the pruned model (True) or from the original (False)
    cache_bytes: int = 256 << 20  # activations kept between groups, in all (see activations.py)


@dataclass(frozen=True)
class LayerNote:
    """What reconstruction did for one consumer: rows vs columns, ridge, errors."""

    group: int
    node: str
    rows: int
    columns: int
    alpha: float
    rel_error: float  # ||Y - X_S Theta||^2 / ||Y||^2 on the calibration data


def reconstructable(analysis: Analysis) -> tuple[dict[int, tuple[Consumer, ...]], dict[int, str]]:
    """Consumers of each group that data methods can prune, and reasons for the others."""
    nodes = {n.name: n for n in analysis.graph.nodes}
    by_group: dict[int, list[Consumer]] = {}
    reasons: dict[int, str] = {}
    for node_name, tensor in analysis.consumer_inputs.items():
        classes = analysis.atom_class[analysis.layouts[tensor].atoms]
        owners = analysis.class_group[classes]
        for gid in set(owners.tolist()):
            if gid < 0:
                continue
            # A consumer may read several groups (a Concat): each must be read whole, once.
            mine, group_classes = classes[owners == gid], analysis.group_classes[gid]
            if len(np.unique(mine)) != len(mine) or not np.array_equal(np.sort(mine), np.sort(group_classes)):
                reasons.setdefault(gid, f"consumer '{node_name}' reads only a part of these channels, or some twice")
                continue
            consumer = _consumer(nodes[node_name], analysis)
            if isinstance(consumer, str):
                reasons.setdefault(gid, consumer)
            else:
                by_group.setdefault(gid, []).append(consumer)
    result = {}
    for g in analysis.groups:
        if g.prunable and g.id not in reasons:
            if g.id in by_group:
                result[g.id] = tuple(by_group[g.id])
            else:
                reasons[g.id] = "no consumer reads these channels into weights"
    return result, {gid: why for gid, why in reasons.items() if analysis.groups[gid].prunable}


def _consumer(node: gs.Node, analysis: Analysis) -> Consumer | str:
    if node.op == "Gemm" and len(node.inputs) < 3:
        return f"Gemm node '{node.name}' has no bias"
    consumer = consumer_of(node, analysis)
    if node.op != "MatMul" or isinstance(consumer, str):
        return consumer
    add = _bias_add(node)
    if add is None:
        return f"MatMul node '{node.name}' has no bias Add after it to take the reconstructed bias"
    return replace(consumer, output=add.outputs[0].name)  # the target includes the bias


def _bias_add(node: gs.Node) -> gs.Node | None:
    """The Add of a constant bias vector right after a MatMul, if it is its only reader."""
    readers = node.outputs[0].outputs
    if len(readers) != 1 or readers[0].op != "Add":
        return None
    add = readers[0]
    const = [t for t in add.inputs if isinstance(t, gs.Constant)]
    if len(const) != 1 or const[0].values.size != node.inputs[1].values.shape[1]:
        return None
    return add


def theta_of(node: gs.Node, c: Consumer) -> np.ndarray:
    """A consumer's weights and bias as a (n*K + 1) x m matrix (rows channel*K + tap, bias last)."""
    w = np.asarray(node.inputs[1].values, dtype=np.float64)
    if c.op == "Conv":
        weights = w.reshape(w.shape[0], -1).T
        bias = np.asarray(node.inputs[2].values, dtype=np.float64)
    elif c.op == "Gemm":
        alpha = float(node.attrs.get("alpha", 1.0))
        weights = alpha * (w.T if int(node.attrs.get("transB", 0)) else w)
        bias = np.asarray(node.inputs[2].values, dtype=np.float64).reshape(-1)
    else:
        weights = w
        add = _bias_add(node)
        bias = next(np.asarray(t.values, dtype=np.float64) for t in add.inputs if isinstance(t, gs.Constant))
    return np.vstack([weights, np.broadcast_to(bias.reshape(-1), (weights.shape[1],))[None, :]])


def param_slots(node: gs.Node, c: Consumer) -> list[tuple[gs.Node, int]]:
    """Where a consumer's weight and bias live: (node, input index) of each.
    A MatMul's bias is the constant of the Add after it."""
    if c.op == "MatMul":
        add = _bias_add(node)
        return [(node, 1), (add, next(i for i, t in enumerate(add.inputs) if isinstance(t, gs.Constant)))]
    return [(node, 1), (node, 2)]


def theta_params(c: Consumer, theta: np.ndarray, outputs: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                 trans_b: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the consumer's ``weight`` and ``bias`` (original shapes, a Gemm's alpha
    already applied) with the columns ``outputs`` taken from ``theta`` (rows channel*K + tap,
    bias last)."""
    w, b = np.array(weight), np.array(bias)
    body, last = theta[:-1], theta[-1]
    if c.op == "Conv":
        w[outputs] = body.T.reshape(len(outputs), *w.shape[1:])
    elif trans_b:
        w[outputs] = body.T
    else:
        w[:, outputs] = body
    flat = b.reshape(-1)  # a view: a MatMul's bias may be (1, m)
    flat[outputs] = last
    return w, b


def fold_alpha(node: gs.Node, weight: np.ndarray) -> np.ndarray:
    """A Gemm's ``weight`` times its alpha; the node's alpha becomes 1 (theta has no alpha)."""
    alpha = float(node.attrs.get("alpha", 1.0))
    node.attrs["alpha"] = 1.0
    return weight * np.asarray(alpha, dtype=weight.dtype)


def write_theta(graph: gs.Graph, node: gs.Node, c: Consumer, theta: np.ndarray, outputs: np.ndarray) -> None:
    """Write ``theta`` (columns: the kept ``outputs``) into the node's original-shape weights."""
    (wn, wi), (bn, bi) = param_slots(node, c)
    weight, bias = np.asarray(wn.inputs[wi].values), np.asarray(bn.inputs[bi].values)
    if c.op == "Gemm":
        weight = fold_alpha(node, weight)
    weight, bias = theta_params(c, theta, outputs, weight, bias, bool(node.attrs.get("transB", 0)))
    set_constant_input(graph, bn, bi, bias)
    set_constant_input(graph, wn, wi, weight)


def prune_sequential(normalized: onnx.ModelProto, analysis: Analysis, counts: dict[int, int],
                     method: Method, calib: Calibration, progress: Progress = no_progress,
                     ) -> tuple[onnx.ModelProto, dict[int, np.ndarray], list[LayerNote]]:
    """Prune each group in ``counts`` to its count, in order, reconstructing its consumers."""
    plans, _ = reconstructable(analysis)
    keep: dict[int, np.ndarray] = {}
    thetas: dict[str, tuple[Consumer, np.ndarray, np.ndarray]] = {}
    notes: list[LayerNote] = []
    nodes = {n.name: n for n in analysis.graph.nodes}
    position = {n.name: i for i, n in enumerate(normalized.graph.node)}
    order = [g for g in sorted(counts) if counts[g] < analysis.groups[g].channels]
    # Where the next run may start: before the next group's first consumer (both models), and
    # for the pruned model also before the first node this group's pruning changes.
    first_consumer = [min((c.node for c in plans[g]), key=position.__getitem__) for g in order] + [None]
    providers = list(calib.providers)
    budget = calib.cache_bytes // 2 if calib.sequential else calib.cache_bytes  # shared by the two runners
    x_runner = SegmentRunner(calib.batches, providers, budget)
    y_runner = SegmentRunner(calib.batches, providers, budget) if calib.sequential else x_runner
    current = normalized
    for step, gid in enumerate(order, 1):
        n = analysis.groups[gid].channels
        removed = analysis.removed_mask(keep)
        plan = [(c, *group_first(analysis, c, gid, removed, calib.sequential)) for c in plans[gid]]
        reads = [r for _, r, _, _, _ in plan]
        ins, outs = [c.input for c in reads], [c.output for c in reads]
        following = first_consumer[step]
        if calib.sequential:
            changed = min(touched_nodes(analysis, gid), key=position.__getitem__)
            x_keep = changed if following is None else min(changed, following, key=position.__getitem__)
            runs = pairs(x_runner.run(current, ins, x_keep), y_runner.run(normalized, outs, following))
        else:
            runs = ((v, v) for v in x_runner.run(normalized, ins + outs, following))
        with progress(f"[{step}/{len(order)}] group {gid}: {n} -> {counts[gid]} channels", calib.samples) as advance:
            fit, holdout = accumulate(runs, reads, calib.mode, providers, HOLDOUT_EVERY, advance)
        outputs = {c.node: kept_outputs(analysis, c, removed) for c, *_ in plan}
        stats = []
        for c, _, _, columns, rows in plan:
            cols = outputs[c.node]
            if c.node in thetas:  # read by an earlier group too: start from those refitted weights
                before, before_cols = thetas[c.node][1:]
                theta0 = before[np.ix_(rows, np.searchsorted(before_cols, cols))]
            else:
                theta0 = theta_of(nodes[c.node], c)[np.ix_(rows, cols)]
            stats.append(tuple(None if s is None else s.permuted(columns).outputs(cols)
                               for s in (fit[c.node], holdout.get(c.node))) + (theta0,))
        kept, (new_thetas, alphas) = _choose_and_rebuild(method, stats, [p for _, _, p, _, _ in plan], n, counts[gid])
        for (c, _, _, _, rows), (f, h, _), theta, alpha in zip(plan, stats, new_thetas, alphas):
            full = np.zeros((c.columns, theta.shape[1]))
            full[rows] = theta  # back on the original channels, zeros where removed
            thetas[c.node] = (c, full, outputs[c.node])
            total = f if h is None else f + h
            notes.append(LayerNote(gid, c.node, total.rows, len(rows), alpha,
                                   linalg.error(total, theta) / max(total.energy, 1e-300)))
        keep[gid] = kept
        current = prune_channels(overlay_weights(normalized, thetas), analysis, keep)
    return current, keep, notes


def _choose_and_rebuild(method: Method, stats, consumers: list[Consumer], n: int, k: int):
    """Kept channels and each consumer's new weights (and the ridge alpha used). The group's
    n channels are each consumer's first; the others it reads (``group_first``) stay."""
    problems = [(f if h is None else f + h, c.taps, theta0) for (f, h, theta0), c in zip(stats, consumers)]
    if method is Method.NU:
        plan = linalg.nu_plan(problems, n, target=k)
        removed = plan.order[: n - k]
        kept = np.setdiff1d(np.arange(n), removed)
        thetas = [linalg.nu_apply(theta0, plan, c.taps, n - k) for (_, _, theta0), c in zip(stats, consumers)]
        return kept, (thetas, [0.0] * len(consumers))
    if method is Method.REAP:
        elimination = linalg.reap_order(problems, n, alpha=SELECTION_ALPHA, target=k)
    else:
        elimination = linalg.thinet_order(problems, n, target=k)
    kept = np.setdiff1d(np.arange(n), elimination.order[: n - k])
    fits = [refit(f, h, np.concatenate([kept, np.arange(n, c.channels)]), c.taps, theta0)
            for (f, h, theta0), c in zip(stats, consumers)]
    return kept, ([theta for theta, _ in fits], [alpha for _, alpha in fits])


def refit(fit: linalg.LayerStats, holdout: linalg.LayerStats | None, keep: np.ndarray, taps: int,
          theta0: np.ndarray) -> tuple[np.ndarray, float]:
    """A consumer's weights on the channels ``keep``: ridge least squares on fit + holdout, the
    ridge chosen on the holdout (SELECTION_ALPHA without one). Returns them and the alpha."""
    alpha = linalg.choose_alpha(fit, holdout, keep, taps, theta0, ALPHA_GRID) if holdout is not None \
        else SELECTION_ALPHA
    total = fit if holdout is None else fit + holdout
    return linalg.ridge_solve(total, keep, taps, theta0, alpha), alpha


def group_first(analysis: Analysis, c: Consumer, gid: int, removed: np.ndarray, sequential: bool = True,
                ) -> tuple[Consumer, Consumer, np.ndarray, np.ndarray]:
    """How consumer ``c`` takes part in pruning group ``gid`` after the groups in ``removed``
    (a class mask): the group's channels first, in the group's order, then the other channels
    it still reads (a Concat of several groups). Returns

    - ``c`` as it reads the model that runs (the pruned one when ``sequential``, else the
      original), for collecting its statistics;
    - ``c`` as the problem sees it (its channel count: the group's, then the others);
    - the rows of the collected statistics (columns of Xa) that make the problem (linalg.columns: bias -1, the last);
    - the rows of its ORIGINAL theta (every channel) that those hold.

    For a consumer that reads only the group, everything is the identity."""
    classes = analysis.atom_class[analysis.layouts[c.input].atoms]
    kept = ~removed[classes]
    atom_of = {int(cl): a for a, cl in enumerate(classes)}
    mine = np.array([atom_of[int(cl)] for cl in analysis.group_classes[gid]], dtype=np.intp)
    order = np.concatenate([mine, np.setdiff1d(np.flatnonzero(kept), mine)])  # original channels
    read = np.flatnonzero(kept) if sequential else np.arange(len(classes))  # channels of the tensor run
    return (replace(c, channels=len(read)), replace(c, channels=len(order)),
            linalg.columns(np.searchsorted(read, order), c.taps), linalg.columns(order, c.taps))


def touched_nodes(analysis: Analysis, gid: int) -> set[str]:
    """Nodes that write or read a tensor carrying channels of group ``gid``."""
    tensors = analysis.graph.tensors()
    names: set[str] = set()
    for name, layout in analysis.layouts.items():
        if name in tensors and np.any(analysis.class_group[analysis.atom_class[layout.atoms]] == gid):
            names.update(n.name for n in tensors[name].inputs)
            names.update(n.name for n in tensors[name].outputs)
    return names


def kept_outputs(analysis: Analysis, c: Consumer, removed: np.ndarray) -> np.ndarray:
    positions = analysis.kept_positions(c.output, removed)
    if positions is not None:
        return positions
    shape = analysis.shapes[c.output]
    return np.arange(shape[1])


def overlay_weights(normalized: onnx.ModelProto, thetas: dict[str, tuple[Consumer, np.ndarray, np.ndarray]],
                    ) -> onnx.ModelProto:
    """``normalized`` with the given consumers' reconstructed weights written in (original shapes)."""
    graph = to_graph(normalized)
    nodes = {n.name: n for n in graph.nodes}
    for name, (c, theta, outputs) in thetas.items():
        write_theta(graph, nodes[name], c, theta, outputs)
    return to_model(graph, normalized)
