"""Data methods prune group after group, from input to output, each from the model pruned so far.

For each reconstructable group in turn, the statistics take X from the model pruned so
far and Y from the ORIGINAL model, so each layer also corrects the error left by the
layers before it (``Calibration.sequential``; otherwise X comes from the original too).
The method (base.DataMethod) chooses the channels from those statistics and rebuilds the
consumers. Reconstructed weights are kept in the ORIGINAL shapes (zeros where channels are
gone), overlaid on the original model, and the surgery cuts the model from that, so one
analysis serves every step.

A consumer may read other groups' channels too (a Concat): they stay while this group is
pruned and are refitted with it (``group_first``). Each consumer is one least-squares piece,
a grouped conv one per block (grouped.pieces), and a group that grouped convs cut in blocks
is selected in rounds (grouped.Rounds).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..analysis.consumers import Consumer, kept_outputs, reconstructable, touched_nodes
from ..analysis.groups import Analysis
from ..calibration.cache import SegmentRunner, pairs
from ..calibration.statistics import HOLDOUT_EVERY, MASK, Calibration, accumulate, samples_per_run, slices
from ..parallel import single_blas
from ..memory import release
from ..passes.surgery import prune_channels
from ..progress import Progress, no_progress
from .grouped import Piece, join, pieces, relative_error, rounds
from .least_squares import Parts, columns
from .scores import l1_scores, select
from .weights import overlay_weights, theta_of

if TYPE_CHECKING:
    from .base import DataMethod

@dataclass(frozen=True)
class LayerNote:
    """What reconstruction did for one consumer: rows vs columns, ridge, errors."""

    group: int
    node: str
    rows: int
    columns: int
    alpha: float  # a grouped conv: the largest of its blocks'
    rel_error: float  # ||Y - X_S Theta||^2 / ||Y||^2 on the calibration data (a grouped conv: all blocks)


def prune_sequential(normalized: onnx.ModelProto, analysis: Analysis, counts: dict[int, int],
                     method: DataMethod, calib: Calibration, progress: Progress = no_progress,
                     ) -> tuple[onnx.ModelProto, dict[int, np.ndarray], list[LayerNote]]:
    """Prune each group in ``counts`` to its count, in order, reconstructing its consumers."""
    plans, _ = reconstructable(analysis)
    proxy = select(analysis, l1_scores(analysis), counts)
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
    per_run = samples_per_run(normalized, analysis.shapes)

    def data():  # batches in slices: onnxruntime's memory grows with the samples of a run
        return slices(calib.batches(), per_run)
    spill = tempfile.gettempdir() if calib.spill else None
    x_runner = SegmentRunner(data, providers, budget, spill)
    y_runner = SegmentRunner(data, providers, budget, spill) if calib.sequential else x_runner
    current = normalized
    masks = [i.name for i in normalized.graph.input if i.name == MASK]  # padding leaves the statistics
    for step, gid in enumerate(order, 1):
        n = analysis.groups[gid].channels
        removed = analysis.removed_mask(keep)
        plan = [(c, *group_first(analysis, c, gid, removed, calib.sequential)) for c in plans[gid]]
        parts = part_quotas(analysis, gid, proxy[gid]) or rounds(analysis, gid, len(proxy[gid]))
        target = counts[gid] if parts is None else len(proxy[gid])
        reads = [r for _, r, _, _, _, _ in plan]
        ins, outs = [c.input for c in reads] + masks, [c.output for c in reads]
        following = first_consumer[step]
        if calib.sequential:
            changed = min(touched_nodes(analysis, gid), key=position.__getitem__)
            x_keep = changed if following is None else min(changed, following, key=position.__getitem__)
            runs = ((part, xs, ys) for (part, xs), (_, ys) in
                    pairs(x_runner.run(current, ins, x_keep), y_runner.run(normalized, outs, following)))
        else:
            runs = ((part, v, v) for part, v in x_runner.run(normalized, ins + outs, following))
        with progress(f"[{step}/{len(order)}] group {gid}: {n} -> {target} channels", calib.samples) as advance:
            fit, holdout = accumulate(runs, reads, calib.mode, providers, HOLDOUT_EVERY, advance, calib.sampling)
        outputs = {c.node: kept_outputs(analysis, c, removed) for c, *_ in plan}
        problems = []  # per consumer: its pieces (one, or one per block of a grouped conv)
        for c, _, problem, read_rows, rows, copies in plan:
            cols = outputs[c.node]
            if c.node in thetas:  # read by an earlier group too: start from those refitted weights
                before, before_cols = thetas[c.node][1:]
                theta0 = before[:, np.searchsorted(before_cols, cols)]
            else:
                theta0 = theta_of(nodes[c.node], c)[:, cols]
            problems.append(pieces(analysis, c, problem, read_rows, rows, copies, fit[c.node],
                                   holdout.get(c.node), theta0, cols))
        kept, new_thetas, alphas = choose_and_rebuild(method, [p for ps in problems for p in ps], n, target, parts)
        at = 0
        for (c, *_), ps in zip(plan, problems):
            mine, used = new_thetas[at:at + len(ps)], alphas[at:at + len(ps)]
            at += len(ps)
            thetas[c.node] = (c, join(c, ps, mine, len(outputs[c.node])), outputs[c.node])
            notes.append(LayerNote(gid, c.node, ps[0].total.used, len(ps[0].rows), max(used),
                                   relative_error(ps, mine)))
        keep[gid] = kept
        del fit, holdout, problems, runs
        current = prune_channels(overlay_weights(normalized, thetas), analysis, keep)
        # this group's runs and statistics, and the graphs the model was made through (graphsurgeon's
        # nodes and tensors point at each other: only the collector frees them, with their weights)
        release()
    return current, keep, notes


def choose_and_rebuild(method: DataMethod, problems: list[Piece], n: int, k: int, parts: Parts | None = None):
    """Kept channels, each piece's new weights and the ridge alpha used. ``problems``: the
    consumers' pieces (grouped.pieces), with the group's n channels first (``group_first``); the
    others they read stay. With ``parts``, each part gives up its quota (``Rounds``: in rounds)."""
    selection = [p.problem() for p in problems]
    with single_blas():  # an elimination's many small products run faster on one thread (parallel.py)
        plan = (method.plan(selection, n, target=k) if parts is None
                else method.plan(selection, n, target=k, parts=parts))
    kept = np.setdiff1d(np.arange(n), plan.order[: n - k])
    fits = [method.rebuild(plan, p.consumer_fit(), kept, n) for p in problems]
    return kept, [theta for theta, _ in fits], [alpha for _, alpha in fits]


def group_first(analysis: Analysis, c: Consumer, gid: int, removed: np.ndarray, sequential: bool = True,
                ) -> tuple[Consumer, Consumer, np.ndarray, np.ndarray, np.ndarray | None]:
    """How consumer ``c`` takes part in pruning group ``gid`` after the groups in ``removed``
    (a class mask): the group's channels first, in the group's order, then the other channels
    it still reads (a Concat of several groups). Returns

    - ``c`` as it reads the model that runs (the pruned one when ``sequential``, else the
      original), for collecting its statistics;
    - ``c`` as the problem sees it (its channel count: the group's, then the others);
    - the rows of the collected statistics (columns of Xa) that make the problem (columns: bias -1, the last);
    - the rows of its ORIGINAL theta (every channel) that those hold;
    - ``copies``: None when c reads each of the group's channels once; else how many K-blocks
      each problem channel owns: a group channel all its copies, in the order they are read
      (SPPF's pooled copies), none for one that c does not read (a Split part), the others one.

    For a consumer that reads only the group, everything is the identity."""
    classes = analysis.atom_class[analysis.layouts[c.input].atoms]
    kept = ~removed[classes]
    group = analysis.group_classes[gid]
    mine = np.flatnonzero(analysis.class_group[classes] == gid)  # positions of the group's channels
    mine = mine[np.argsort(analysis.class_index[classes[mine]], kind="stable")]  # by channel, copies in order
    copies = np.bincount(analysis.class_index[classes[mine]], minlength=len(group))
    others = np.setdiff1d(np.flatnonzero(kept), mine)
    order = np.concatenate([mine, others])  # original channels
    read = np.flatnonzero(kept) if sequential else np.arange(len(classes))  # channels of the tensor run
    if np.all(copies == 1):
        return (replace(c, channels=len(read)), replace(c, channels=len(order)),
                columns(np.searchsorted(read, order), c.taps), columns(order, c.taps), None)
    return (replace(c, channels=len(read)), replace(c, channels=len(group) + len(others)),
            columns(np.searchsorted(read, order), c.taps), columns(order, c.taps),
            np.concatenate([copies, np.ones(len(others), dtype=np.intp)]))


def part_quotas(analysis: Analysis, gid: int, proxy_kept: np.ndarray) -> Parts | None:
    """Group ``gid``'s parts (channels that every tensor holds together; several where a Split or
    Slice reads it in parts), each to give up as many channels as in ``proxy_kept`` (the channels
    the cost was predicted with, prune.proxy_choice): the cost of a group read in parts depends on
    how many each part keeps. None for a group read whole everywhere."""
    group = analysis.group_classes[gid]
    seen = []
    for layout in analysis.layouts.values():
        present = np.isin(group, analysis.atom_class[layout.atoms])
        if present.any() and not present.all():
            seen.append(present)
    if not seen:
        return None
    _, part = np.unique(np.array(seen).T, axis=0, return_inverse=True)
    part = part.ravel()
    kept = np.zeros(len(group), dtype=bool)
    kept[proxy_kept] = True
    return Parts(part, np.bincount(part[~kept], minlength=part.max() + 1))


