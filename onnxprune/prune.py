"""The pruning pipeline: normalise, analyse, choose channels, cut, validate."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np
import onnx

from .config import PruneConfig
from .cost import MacPredictor, ParamPredictor, cost_of, model_cost
from .errors import OnnxPruneError
from .groups import Analysis, ChannelGroup, analyze
from .methods.l1 import l1_scores
from .normalize import normalize
from .pro import ProStep, optimize_counts
from .ratios import fit_budget, uniform
from .reconstruct import Calibration, LayerNote, Progress, no_progress, prune_sequential, reconstructable
from .srn import serialize_residuals
from .surgery import prune_channels
from .validate import validate


@dataclass(frozen=True)
class GroupChange:
    group: ChannelGroup
    channels_after: int
    not_reconstructable: str | None = None  # why a data method left this prunable group alone
    excluded: str | None = None  # which --exclude pattern left it alone

    @property
    def reason(self) -> str | None:
        return self.group.reason or self.excluded or self.not_reconstructable


@dataclass(frozen=True)
class PruneResult:
    model: onnx.ModelProto
    config: PruneConfig
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    groups: tuple[GroupChange, ...]
    layers: tuple[LayerNote, ...] = ()
    srn: dict | None = None  # what serialising residual blocks did, with --srn
    pro: tuple[ProStep, ...] = ()  # PRO's commits: group, its new width, cost and final-output error

    def to_json(self) -> dict:
        return {
            "method": self.config.method.value,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "groups": [
                {"id": c.group.id, "channels_before": c.group.channels, "channels_after": c.channels_after,
                 "reason": c.reason}
                for c in self.groups
            ],
            "srn": self.srn,
            "pro": [{"group": p.group, "channels": p.channels, "cost": p.cost, "error": p.error} for p in self.pro],
            "reconstruction": [
                {"group": n.group, "node": n.node, "rows": n.rows, "columns": n.columns, "alpha": n.alpha,
                 "rel_error": n.rel_error}
                for n in self.layers
            ],
        }


def prune(model: onnx.ModelProto, config: PruneConfig, calibration: Calibration | None = None,
          progress: Progress = no_progress) -> PruneResult:
    """Prune ``model`` as ``config`` says; the input model is not modified.

    Data methods (reap, thinet, nu) need ``calibration`` and prune only the groups
    whose consumers they can reconstruct; the others are reported.
    """
    if config.method.needs_data and calibration is None:
        raise OnnxPruneError(f"--method {config.method.value} needs calibration data: give --calib DATA")
    if config.pro and calibration is None:
        raise OnnxPruneError("--pro measures the final-output error on calibration data: give --calib DATA")
    normalized, _ = normalize(model)
    srn_report = None
    if config.srn:  # targets stay relative to the original, not the wider serial model
        original = cost_of(normalized, config.input_shapes)
        normalized, srn_report = serialize_residuals(normalized, config.input_shapes)
    analysis = analyze(normalized, config.input_shapes)
    before = model_cost(analysis.graph, analysis.shapes)
    if not config.srn:
        original = before
    scores = l1_scores(analysis)
    excluded = excluded_groups(analysis, config.exclude)
    channels = {g.id: g.channels for g in analysis.groups if g.prunable and g.id not in excluded}
    skipped: dict[int, str] = {}
    if config.method.needs_data:
        plans, skipped = reconstructable(analysis)
        skipped = {g: why for g, why in skipped.items() if g not in excluded}
        channels = {g: n for g, n in channels.items() if g in plans}
    if not channels:
        raise OnnxPruneError("no prunable channel group in this model (see `onnxprune inspect` for the reasons)"
                             + (f"; not reconstructable: {'; '.join(sorted(set(skipped.values())))}" if skipped else "")
                             + (f"; {len(excluded)} excluded by --exclude" if excluded else ""))

    def keep_for(counts: dict[int, int]) -> dict[int, np.ndarray]:
        return select(analysis, scores, counts)

    trace: list[ProStep] = []
    if config.ratio is not None:
        counts = uniform(channels, config.ratio, config.round_to)
    else:
        by_params = config.keep_params is not None
        predict = ParamPredictor(analysis).params if by_params else MacPredictor(analysis, before).macs
        fraction = config.keep_params if by_params else config.keep_flops
        budget = fraction * (original.params if by_params else original.macs)
        option = "--keep-params" if by_params else "--keep-flops"
        if config.pro:
            counts, trace = optimize_counts(
                normalized, analysis, config.method, channels, lambda keep: predict(analysis.removed_mask(keep)),
                budget, calibration, scores, config.round_to, config.pro_samples, progress)
        else:
            counts = fit_budget(channels, lambda c: predict(analysis.removed_mask(keep_for(c))), budget,
                                config.round_to)
        if counts is None:
            deepest = predict(analysis.removed_mask(keep_for(uniform(channels, 1.0, config.round_to))))
            reference = original.params if by_params else original.macs
            raise OnnxPruneError(
                f"{option} {fraction}: unreachable; the deepest pruning allowed "
                f"(--round-to {config.round_to}, frozen groups untouched) keeps {deepest / reference:.3f} of the "
                f"{'parameters' if by_params else 'MACs'}"
            )
    notes: list[LayerNote] = []
    if config.method.needs_data:
        pruned, keep, notes = prune_sequential(normalized, analysis, counts, config.method, calibration, progress)
    else:
        keep = keep_for(counts)
        pruned = prune_channels(normalized, analysis, keep)
    validate(pruned, config.input_shapes)
    after = cost_of(pruned, config.input_shapes)
    changes = tuple(GroupChange(g, len(keep.get(g.id, range(g.channels))), skipped.get(g.id), excluded.get(g.id))
                    for g in analysis.groups)
    srn = srn_report.to_json(original.macs, before.macs) if srn_report else None
    return PruneResult(pruned, config, original.macs, after.macs, original.params, after.params, changes,
                       tuple(notes), srn, tuple(trace))


def excluded_groups(analysis: Analysis, patterns: tuple[str, ...]) -> dict[int, str]:
    """Prunable groups with a producer whose node name matches one of the glob ``patterns``
    (case-sensitive, as fnmatch), with the pattern and node. A pattern matching no node is an
    error: a typo would otherwise prune what the user meant to protect."""
    names = [n.name for n in analysis.graph.nodes]
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name in names):
            raise OnnxPruneError(f"--exclude '{pattern}' matches no node of the model "
                                 "(`onnxprune inspect` lists the producers' names)")
    excluded = {}
    for g in analysis.groups:
        hits = [(p, node) for node in g.producers for p in patterns if fnmatchcase(node, p)]
        if g.prunable and hits:
            excluded[g.id] = f"excluded by --exclude '{hits[0][0]}' (produced by {hits[0][1]})"
    return excluded


def select(analysis: Analysis, scores: list[np.ndarray], counts: dict[int, int]) -> dict[int, np.ndarray]:
    """Keep the ``counts[g]`` best-scoring channels of each group, never emptying a tensor."""
    keep = {}
    for gid, k in counts.items():
        order = np.argsort(-scores[gid], kind="stable")
        keep[gid] = np.sort(order[:k])
    removed = analysis.removed_mask(keep)
    for name in analysis.layouts:
        if analysis.channel_count(name, removed) == 0:
            # A Split/Slice part whose channels all lost: keep its best channel.
            classes = analysis.atom_class[analysis.layouts[name].atoms]
            gid = int(analysis.class_group[classes[0]])
            idx = analysis.class_index[classes]
            best = idx[np.argmax(scores[gid][idx])]
            keep[gid] = np.union1d(keep[gid], [best])
            removed = analysis.removed_mask(keep)
    return keep

