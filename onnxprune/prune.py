"""The pruning pipeline and public entry point: normalise, analyse, fit widths, let the method choose and cut, validate."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable

import numpy as np
import onnx

from .analysis.cost import MacPredictor, ParamPredictor, cost_of, model_cost
from .analysis.groups import Analysis, ChannelGroup, analyze
from .calibration.statistics import MASK, Calibration
from .config import PruneConfig
from .errors import OnnxPruneError
from .graph.validate import check_runs, check_runs_on, validate
from .methods.scores import l1_scores, select
from .methods.sequential import LayerNote
from .memory import release
from .passes.normalize import normalize
from .passes.srn import serialize_residuals
from .progress import Progress, no_progress
from .widths.budget import Counts, fit_budget, uniform
from .graph.runtime import providers
from .widths.latency import LatencyGoal, Target, latency_counts, steps_of
from .widths.pro import ProStep, optimize_counts, sample_count


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
    latency: dict | None = None  # with --keep-latency: the table, predicted and measured latency (LatencyFit)
    pro_samples: int = 0  # how many calibration samples PRO measured the final output on

    def to_json(self) -> dict:
        return {
            "method": self.config.method.value,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "groups": [
                {"id": c.group.id, "channels_before": c.group.channels, "channels_after": c.channels_after,
                 "reason": c.reason, "blocks": c.group.blocks, "grouped_by": list(c.group.grouped_by),
                 "head_dim": c.group.head_dim}
                for c in self.groups
            ],
            "srn": self.srn,
            "latency": self.latency,
            "pro": [{"group": p.group, "channels": p.channels, "cost": p.cost, "error": p.error} for p in self.pro],
            "pro_samples": self.pro_samples,
            "reconstruction": [
                {"group": n.group, "node": n.node, "rows": n.rows, "columns": n.columns, "alpha": n.alpha,
                 "rel_error": n.rel_error}
                for n in self.layers
            ],
        }


def prune(model: onnx.ModelProto, config: PruneConfig, calibration: Calibration | None = None,
          progress: Progress = no_progress) -> PruneResult:
    """Prune ``model`` as ``config`` says; the input model is not modified.

    Methods that need data need ``calibration``; each prunes only the groups it can (the
    data methods: those whose consumers they can reconstruct), and the others are reported.
    """
    method = config.selection
    if method.needs_data and calibration is None:
        raise OnnxPruneError(f"--method {method.name} needs calibration data: give --calib DATA")
    if config.pro and calibration is None:
        raise OnnxPruneError("--pro measures the final-output error on calibration data: give --calib DATA")
    normalized, _ = normalize(model)
    check_runs(normalized)
    given = normalized
    # the first calibration batch: inputs the model takes, for every run (timing, validation) when given
    sample = None if calibration is None else next(iter(calibration.batches()), None)
    if sample is not None:
        check_runs_on(normalized, sample, f"the first batch of {calibration.source}")
    if config.pro_pooled and (sample is None or MASK not in sample):
        raise OnnxPruneError(f"--pro-pooled: the model takes no '{MASK}' input to pool its tokens by: "
                             "leave --pro-pooled out")
    srn_report = None
    if config.srn:  # targets stay relative to the original, not the wider serial model
        original = cost_of(normalized, config.input_shapes)
        normalized, srn_report = serialize_residuals(normalized, config.input_shapes)
    analysis = analyze(normalized, config.input_shapes)
    before = model_cost(analysis.graph, analysis.shapes, analysis.unknown_after)
    if not config.srn:
        original = before
    excluded = excluded_groups(analysis, config.exclude)
    channels = {g.id: g.channels for g in analysis.groups if g.prunable and g.id not in excluded}
    can, skipped = method.prunable(analysis)
    skipped = {g: why for g, why in skipped.items() if g not in excluded}
    if can is not None:
        channels = {g: n for g, n in channels.items() if g in can}
    if not channels:
        raise OnnxPruneError("no prunable channel group in this model (see `onnxprune inspect` for the reasons)"
                             + (f"; not reconstructable: {'; '.join(sorted(set(skipped.values())))}" if skipped else "")
                             + (f"; {len(excluded)} excluded by --exclude" if excluded else ""))
    release()  # normalising and analysing copied the model several times
    keep_for = proxy_choice(analysis)
    steps = steps_of(analysis, channels, config.round_to)
    pro_samples = sample_count(before.macs, config.pro_samples)

    trace: list[ProStep] = []
    latency = None
    if config.ratio is not None:
        counts = uniform(channels, config.ratio, steps)
    elif config.keep_latency is not None:
        goal = LatencyGoal(config.keep_latency, Target(tuple(providers(config.device)), config.threads,
                                                       config.latency_batch, tuple(config.input_shapes.items()),
                                                       sample),
                           config.round_to, config.latency_table, config.pro, pro_samples, config.pro_pooled)
        macs = MacPredictor(analysis, before).macs
        counts, trace, latency = latency_counts(normalized, analysis, method, channels, goal, calibration, progress,
                                                keep_for, lambda keep: macs(analysis.removed_mask(keep)))
    else:
        by_params = config.keep_params is not None
        predict = ParamPredictor(analysis).params if by_params else MacPredictor(analysis, before).macs
        fraction = config.keep_params if by_params else config.keep_flops
        budget = fraction * (original.params if by_params else original.macs)
        option = "--keep-params" if by_params else "--keep-flops"
        # checked before fitting: PRO would otherwise find out only at its smallest widths
        deepest = predict(analysis.removed_mask(keep_for(uniform(channels, 1.0, steps))))
        if deepest > budget:
            reference = original.params if by_params else original.macs
            raise OnnxPruneError(
                f"{option} {fraction}: unreachable; the deepest pruning allowed "
                f"(--round-to {config.round_to}, frozen groups untouched) keeps {deepest / reference:.3f} of the "
                f"{'parameters' if by_params else 'MACs'}"
            )
        if config.pro:
            choice = optimize_counts(
                normalized, analysis, method, channels, lambda keep: predict(analysis.removed_mask(keep)),
                budget, calibration, steps, pro_samples, progress, pooled=config.pro_pooled)
            counts, trace = choice.counts, choice.steps
        else:
            counts = fit_budget(channels, lambda c: predict(analysis.removed_mask(keep_for(c))), budget, steps)
    release()  # what PRO held (statistics, candidates) is free memory the pass below should find
    done = method.prune(normalized, analysis, counts, calibration, progress)
    pruned, keep, notes = done.model, done.keep, done.notes
    validate(pruned, config.input_shapes, given, sample,
             "random inputs" if sample is None else f"the first batch of {calibration.source}")
    if latency is not None:
        latency.measure_result(normalized, pruned)
    after = cost_of(pruned, config.input_shapes)
    changes = tuple(GroupChange(g, len(keep.get(g.id, range(g.channels))), skipped.get(g.id), excluded.get(g.id))
                    for g in analysis.groups)
    srn = srn_report.to_json(original.macs, before.macs) if srn_report else None
    return PruneResult(pruned, config, original.macs, after.macs, original.params, after.params, changes,
                       tuple(notes), srn, tuple(trace), latency.to_json() if latency else None,
                       min(pro_samples, calibration.samples) if trace and calibration is not None else 0)


def proxy_choice(analysis: Analysis) -> Callable[[Counts], dict[int, np.ndarray]]:
    """Which channels each group would keep at given counts, for predicting the cost of counts
    before any method has chosen: the l1 ranking stands in for every method (the data methods
    choose only while pruning, from statistics of the model pruned so far). The cost depends
    on WHICH channels go only where a group is read in parts (Split/Slice: each part's share,
    and a part never left empty); elsewhere the counts alone decide it and the proxy is exact."""
    scores = l1_scores(analysis)
    return lambda counts: select(analysis, scores, counts)


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


