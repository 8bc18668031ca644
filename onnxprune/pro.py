"""PRO (Pruning Ratio Optimizer): per-group channel counts chosen by their effect on the
network's FINAL output, without retraining.

Each group's removal order comes from its method (reap, thinet, nu: calibration
statistics of the original model; l1: filter norms). Then, greedily:

    for every group g: candidate = one more step of g's order removed (its consumers
                       reconstructed independently, from the original model's statistics)
    increase(g) = mean ||f(x) - f_candidate(x)||^2 - mean ||f(x) - f_current(x)||^2
    commit argmin_g increase(g) / (cost(current) - cost(candidate))

until the cost (MACs or parameters) is within the target. Lazy evaluation keeps it
fast: after a commit only the committed group's next step is re-measured, and every
group is re-measured every few commits (the others' increases change little). For the
data methods a candidate is a weight variant (variants.py: zero rows for removed
channels) of a model pruned to an earlier commit's widths, run from its group's first
consumer on; for l1, which does not reconstruct, it is the pruned model, run from the
first node its group touches.
A consumer that reads several groups (a Concat) is fitted, for a candidate, on the other
groups' channels that the base still has.
Channels are then given back, ``round_to`` at a time, while the cost stays within the
target, and the real method prunes to the chosen counts (sequentially, for data methods).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from . import linalg
from .activations import Cuts
from .calibrate import collect
from .config import Method
from .errors import OnnxPruneError
from .groups import Analysis
from .reconstruct import (HOLDOUT_EVERY, SELECTION_ALPHA, Calibration, Progress, group_first, kept_outputs,
                          no_progress, overlay_weights, reconstructable, refit, theta_of, touched_nodes)
from .surgery import prune_channels
from .variants import Variants

REFRESH_EVERY = 8  # commits between full re-measurements of every group
REBASE = 0.85  # candidates run on a model pruned to the current widths once they cost 15 % less


@dataclass(frozen=True)
class ProStep:
    group: int
    channels: int  # the group's count after this step
    cost: int
    error: float  # mean squared final-output error after this step


def allowed_counts(n: int, round_to: int, step: int) -> list[int]:
    """Counts a group may take on its way down: n, then multiples of round_to, ``step`` apart at least."""
    counts, k = [n], n
    while True:
        k = (k - step) // round_to * round_to
        if k < max(round_to, 1):
            return counts
        counts.append(k)


def optimize_counts(normalized: onnx.ModelProto, analysis: Analysis, method: Method, channels: dict[int, int],
                    cost: Callable[[dict[int, np.ndarray]], int], budget: float, calib: Calibration,
                    scores: list[np.ndarray], round_to: int, samples: int, progress: Progress = no_progress,
                    ) -> tuple[dict[int, int], list[ProStep]]:
    """Counts per group (of ``channels``) whose cost is within ``budget``, chosen by PRO."""
    orders, weights = _orders(normalized, analysis, method, channels, calib, scores, progress)
    feeds = _first_samples(calib, samples)
    output = normalized.graph.output[0].name
    ladders = {g: allowed_counts(n, round_to, max(round_to, n // 16)) for g, n in channels.items()}
    position = {g: 0 for g in channels}  # index into the group's ladder

    def keep_of(counts: dict[int, int]) -> dict[int, np.ndarray]:
        return {g: np.sort(np.setdiff1d(np.arange(channels[g]), orders[g][: channels[g] - k]))
                for g, k in counts.items()}

    def counts_at(pos: dict[int, int]) -> dict[int, int]:
        return {g: ladders[g][i] for g, i in pos.items()}

    if method is Method.L1:
        evaluate, commit = _pruned_runs(normalized, analysis, channels, keep_of, feeds, output, calib)
    else:
        evaluate, commit = _variant_runs(normalized, analysis, channels, weights, keep_of,
                                         cost, feeds, output, calib)
    reference = evaluate({}, None).astype(np.float64)

    def error(counts: dict[int, int], changed: int) -> float:
        out = evaluate(counts, changed).astype(np.float64)
        return float(np.mean(np.sum((out - reference) ** 2, axis=tuple(range(1, out.ndim)))))

    current_cost = cost(keep_of(counts_at(position)))
    current_error = 0.0
    commits = 0
    # group -> (increase per cost saved, cost, error, commits when measured)
    measured: dict[int, tuple[float, int, float, int]] = {}
    trace: list[ProStep] = []

    def measure(g: int) -> None:
        if position[g] + 1 >= len(ladders[g]):
            measured.pop(g, None)
            return
        trial = counts_at({**position, g: position[g] + 1})
        c, e = cost(keep_of(trial)), error(trial, g)
        measured[g] = ((e - current_error) / max(current_cost - c, 1), c, e, commits)

    with progress("PRO: choosing per-layer widths", max(1, int(current_cost - budget))) as advance:
        while current_cost > budget:
            if commits % REFRESH_EVERY == 0:
                for g in channels:
                    measure(g)
            while True:  # lazy greedy: the best candidate is re-measured before it is committed
                if not measured:
                    raise OnnxPruneError("PRO cannot reach the target: every group is at its smallest width")
                g = min(measured, key=lambda k: measured[k][0])
                if measured[g][3] == commits:
                    break
                measure(g)
            _, new_cost, current_error, _ = measured.pop(g)
            advance(int(current_cost - new_cost))
            current_cost = new_cost
            position[g] += 1
            commits += 1
            commit(counts_at(position), g)
            trace.append(ProStep(g, ladders[g][position[g]], current_cost, current_error))
            measure(g)
    # The last step may overshoot: give channels back, latest-cut groups first, while within budget.
    counts = counts_at(position)
    grew = True
    while grew:
        grew = False
        for g in dict.fromkeys(step.group for step in reversed(trace)):
            if counts[g] < channels[g]:
                trial = {**counts, g: min(channels[g], counts[g] + round_to)}
                if cost(keep_of(trial)) <= budget:
                    counts, grew = trial, True
    return counts, trace


def _orders(normalized, analysis, method, channels, calib, scores, progress):
    """Each group's full removal order, and a function giving its consumers' weights at a count:
    {consumer node: (consumer, theta, output columns)}, reconstructed independently from the
    original model's statistics (nothing for l1, which does not reconstruct)."""
    if method is Method.L1:
        return {g: np.argsort(scores[g], kind="stable") for g in channels}, lambda g, k, removed=None: {}
    plans, _ = reconstructable(analysis)
    consumers = list({c.node: c for g in channels for c in plans[g]}.values())
    with progress("PRO: calibrating", calib.samples) as advance:
        fit, holdout = collect(normalized, normalized, consumers, calib.batches, calib.mode,
                               list(calib.providers), HOLDOUT_EVERY, advance)
    nodes = {n.name: n for n in analysis.graph.nodes}
    nothing = np.zeros(len(analysis.class_group), dtype=bool)

    def problem(c, g):
        """c's problem for choosing group g's order: its statistics on the original model, the
        group's channels first, then the other channels it reads (group_first)."""
        _, _, columns, rows = group_first(analysis, c, g, nothing, sequential=False)
        total = fit[c.node] + holdout[c.node] if c.node in holdout else fit[c.node]  # not kept: a Gram's size
        return total.permuted(columns), c.taps, theta_of(nodes[c.node], c)[rows]

    orders, nu_plans = {}, {}
    for g, n in channels.items():
        problems = [problem(c, g) for c in plans[g]]
        if method is Method.REAP:
            orders[g] = linalg.reap_order(problems, n, alpha=SELECTION_ALPHA).order
        elif method is Method.THINET:
            orders[g] = linalg.thinet_order(problems, n).order
        else:
            nu_plans[g] = linalg.nu_plan(problems, n)
            orders[g] = nu_plans[g].order
    # Classes of other groups that g's consumers read (a Concat): the weights depend on which stay.
    others = {g: np.setdiff1d(np.concatenate([analysis.atom_class[analysis.layouts[c.input].atoms] for c in plans[g]]),
                              analysis.group_classes[g]) for g in channels}
    cache: dict[tuple[int, int, bytes], dict] = {}

    def weights(g: int, k: int, removed: np.ndarray | None = None) -> dict:
        """Group g's consumers at k channels, the other groups' channels that ``removed`` (a
        class mask) drops left out of the fit."""
        removed = nothing if removed is None else removed
        key = (g, k, removed[others[g]].tobytes())
        if key not in cache:
            n = channels[g]
            kept = np.sort(np.setdiff1d(np.arange(n), orders[g][: n - k]))
            result = {}
            for c in plans[g]:
                _, shape, columns, rows = group_first(analysis, c, g, removed, sequential=False)
                theta0 = theta_of(nodes[c.node], c)[rows]
                if method is Method.NU:
                    theta = linalg.nu_apply(theta0, nu_plans[g], c.taps, n - k)
                else:
                    h = holdout.get(c.node)
                    theta, _ = refit(fit[c.node].permuted(columns), None if h is None else h.permuted(columns),
                                     np.concatenate([kept, np.arange(n, shape.channels)]), c.taps, theta0)
                full = np.zeros((c.columns, theta.shape[1]))
                full[rows] = theta
                result[c.node] = (c, full, np.arange(theta.shape[1]))
            cache[key] = result
        return cache[key]

    return orders, weights


def _variant_runs(normalized, analysis, channels, weights, keep_of, cost, feeds, output, calib):
    """Final outputs of candidates as weight variants (variants.py): a group's reconstructed
    consumers with zero rows for its removed channels, nothing cut out.

    The variants are of a BASE model, pruned to the counts of some earlier commit, so runs
    take its widths: a candidate's weights are restricted to the base's kept rows and
    columns. The base is rebuilt once the current cost has fallen below ``REBASE`` of its own.
    """
    plans, _ = reconstructable(analysis)
    consumers = list({c.node: c for g in channels for c in plans[g]}.values())
    base: dict = {}

    def rebase(counts):
        keep = keep_of(counts)
        removed = analysis.removed_mask(keep)
        thetas = {}
        for g, k in counts.items():
            if k < channels[g]:
                thetas.update(weights(g, k, removed))
        model = prune_channels(overlay_weights(normalized, thetas), analysis, keep) if thetas else normalized
        base.update(keep=keep, removed=removed, cost=cost(keep),
                    variants=Variants(model, consumers, feeds, [output], list(calib.providers), calib.cache_bytes))

    def params(counts, g):
        variants = base["variants"]
        changed = {}
        for c, theta, _ in weights(g, counts[g], base["removed"]).values():
            present = np.flatnonzero(~base["removed"][analysis.atom_class[analysis.layouts[c.input].atoms]])
            rows = linalg.columns(present, c.taps)
            columns = kept_outputs(analysis, c, base["removed"])
            changed.update(variants.params(c, theta[np.ix_(rows, columns)], np.arange(len(columns))))
        return changed

    def evaluate(counts, g):
        return base["variants"].run(params(counts, g) if g is not None else {})[0]

    def commit(counts, g):
        if cost(keep_of(counts)) < REBASE * base["cost"]:
            rebase(counts)
        else:
            base["variants"].commit(params(counts, g))

    rebase({g: n for g, n in channels.items()})
    return evaluate, commit


def _pruned_runs(normalized, analysis, channels, keep_of, feeds, output, calib):
    """Final outputs of candidates as pruned models, each run from the first node its group touches."""
    node_at = {n.name: i for i, n in enumerate(normalized.graph.node)}
    cut = {g: min(node_at[name] for name in touched_nodes(analysis, g)) for g in channels}
    cuts = Cuts(normalized, feeds, list(calib.providers), calib.cache_bytes)

    def evaluate(counts, g):
        if g is None:
            return cuts.run(normalized, 0, [output])[0]
        return cuts.run(prune_channels(normalized, analysis, keep_of(counts)), cut[g], [output])[0]

    def commit(counts, g):
        cuts.update(prune_channels(normalized, analysis, keep_of(counts)), cut[g])

    return evaluate, commit


def _first_samples(calib: Calibration, samples: int) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    have = 0
    for feeds in calib.batches():
        for k, v in feeds.items():
            parts.setdefault(k, []).append(v)
        have += len(next(iter(feeds.values())))
        if have >= samples:
            break
    return {k: np.concatenate(v)[:samples] for k, v in parts.items()}
