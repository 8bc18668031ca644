"""A latency table measured in onnxruntime: each group's staircase of segment times against width, and the model's latency predicted from it.

onnxruntime's CPU kernels work on blocks of channels (8 with AVX2, 16 with AVX-512) and
pad to them, so a layer's time against its width is a staircase, not a line: removing
channels inside a step costs accuracy and saves nothing. The table is measured, not
assumed. For each prunable group g and each width k on its ladder (the widths PRO steps
through, multiples of ``round_to``), the segment of the graph that g's channels cross
(its producers, the channel-wise ops between, its consumers: ``touched_nodes``) is cut out
of a model in which only g is pruned to k, and timed in context (its real inputs, all
graph optimisations, the target's threads and batch), the widths of a group interleaved.

The model's latency at widths w is predicted as

    T(w) = T_full - s * sum_g (T_g(n_g) - T_g(w_g))

with T_g made monotone and flat within noise (``staircase``), so a width inside a step
predicts the step's time. Segments of neighbouring groups share layers (a conv reads one
group and writes another), so the savings do not add exactly; the scale s is fitted by
least squares to whole models measured at a few uniform widths (``checks``), and every
check is kept in the table with its prediction, so the table says how well it predicts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

from ..analysis.consumers import touched_nodes
from ..analysis.groups import Analysis
from ..errors import OnnxPruneError
from ..graph.files import read_input
from ..graph.probe import probe_model
from ..graph.runtime import CPU, describe_feeds, failing, run_all, session
from ..graph.shapes import batch_feeds, batch_shapes
from ..graph.timing import in_rounds, interleaved, medians_ms, round_speedups
from ..passes.surgery import prune_channels
from ..progress import Progress
from ..methods.scores import select
from .budget import Counts, block_steps, fit_budget, head_step, uniform
from .pro import Keep, ProChoice, ProSearch, Reconstructions, allowed_counts, ladders

FORMAT = "onnxprune-latency-table/1"
CHECK_RATIOS = (0.25, 0.5, 0.75)  # uniform widths whose whole models are timed to fit and check the scale
FLAT = 0.03  # differences below this share of a group's full-width segment time are noise: the same step
FLAT_MS = 0.002  # ... or below 2 microseconds
MAX_TABLE_BYTES = 64 << 20  # a table holds a few numbers per group (a large model's: under 1 MB)


@dataclass(frozen=True)
class Target:
    """Where latency is measured: onnxruntime's execution providers, threads and batch size."""

    providers: tuple[str, ...] = CPU
    threads: int = 0  # intra-op threads, 0: onnxruntime's choice
    batch: int = 1
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # dynamic input dims fixed (the batch is ``batch``)
    # inputs to time on, repeated or cut to ``batch`` (the first calibration batch: inputs the model
    # takes); None: random (``random_feeds``)
    sample: dict[str, np.ndarray] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class LatencyTable:
    """Measured latencies (ms) of one model on one target (``meta`` says which)."""

    meta: dict
    full_ms: float  # the whole unpruned model
    steps: dict[int, dict[int, float]]  # group -> width -> its segment's time (a staircase)
    scale: float = 1.0  # s: measured savings of whole models per predicted saving
    checks: list[dict] = field(default_factory=list)  # {"ratio", "predicted_ms", "measured_ms"}

    def group_ms(self, group: int, width: int) -> float:
        """T_g(width): the time of the narrowest measured width at least ``width`` (a width
        between two measured ones is charged the wider one's time: never optimistic)."""
        steps = self.steps[group]
        return steps[min((k for k in steps if k >= width), default=max(steps))]

    def predict(self, counts: Counts) -> float:
        """T(counts) = T_full - s * sum_g (T_g(n_g) - T_g(counts[g])), in ms."""
        saved = sum(self.group_ms(g, max(self.steps[g])) - self.group_ms(g, k)
                    for g, k in counts.items() if g in self.steps)
        return self.full_ms - self.scale * saved

    def to_json(self) -> dict:
        return {"format": FORMAT, "meta": self.meta, "full_ms": self.full_ms, "scale": self.scale,
                "checks": self.checks,
                "steps": {str(g): {str(k): ms for k, ms in sorted(s.items())} for g, s in self.steps.items()}}

    @staticmethod
    def from_json(data: dict, source: str = "the latency table") -> LatencyTable:
        """The table ``data`` holds, every number checked: times finite and positive, each group's
        staircase non-empty and non-decreasing in width (as ``staircase`` makes it), the scale
        finite and positive; anything else is an error naming what is wrong."""
        try:
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format') if isinstance(data, dict) else None!r}, "
                                 f"expected {FORMAT!r}")
            steps = {_width(g, "group"): _staircase(g, s) for g, s in data["steps"].items()}
            checks = [{key: _number(value, f"checks: {key}") for key, value in check.items()}
                      for check in data.get("checks", [])]
            if not isinstance(data["meta"], dict):
                raise ValueError("meta is not an object")
            return LatencyTable(dict(data["meta"]), _time(data["full_ms"], "full_ms"), steps,
                                _time(data["scale"], "scale"), checks)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise OnnxPruneError(f"{source}: not an onnxprune latency table ({exc})") from None


def _number(value, what: str) -> float:
    """A JSON number as a finite float (not a string, a bool, NaN, Infinity or a float's overflow)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} {value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{what} {str(value)[:20]}... is out of range") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} {value!r} is not finite")
    return number


def _time(value, what: str) -> float:
    """A positive finite number (a time in ms, or the scale)."""
    number = _number(value, what)
    if number <= 0:
        raise ValueError(f"{what} {value!r} is not positive")
    return number


def _width(key: str, what: str) -> int:
    """A group id or a width: a JSON object key holding a non-negative integer (widths positive)."""
    key = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
    if not isinstance(key, str) or not key.isdigit() or (what == "width" and int(key) == 0):
        raise ValueError(f"{what} {key!r} is not a {'positive' if what == 'width' else 'non-negative'} integer")
    return int(key)


def _staircase(group: str, steps: dict) -> dict[int, float]:
    """One group's widths and times: at least one, each time positive, non-decreasing in width."""
    if not isinstance(steps, dict) or not steps:
        raise ValueError(f"group {group}: no widths measured")
    times = {_width(k, "width"): _time(ms, f"group {group} width {k}") for k, ms in steps.items()}
    widths = sorted(times)
    for narrow, wide in zip(widths, widths[1:]):
        if times[wide] < times[narrow]:
            raise ValueError(f"group {group}: width {wide} is faster than width {narrow} ({times[wide]} < "
                             f"{times[narrow]} ms); the table's times never fall with width")
    return times


def model_hash(model: onnx.ModelProto) -> str:
    """sha256 of the (normalised) model a table is made for: its graph and weights."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def load_table(path: str | os.PathLike) -> LatencyTable:
    """The table in the file ``path``: a regular file of at most MAX_TABLE_BYTES of JSON, without
    NaN or Infinity (``LatencyTable.from_json`` checks the rest)."""
    path = Path(path)
    text = read_input(path, "latency table", MAX_TABLE_BYTES)
    try:
        data = json.loads(text, parse_constant=_not_a_number, parse_float=_finite)
    except ValueError as exc:
        raise OnnxPruneError(f"{path}: not a JSON latency table ({exc})") from None
    except RecursionError:
        raise OnnxPruneError(f"{path}: not a JSON latency table (nested too deeply)") from None
    return LatencyTable.from_json(data, str(path))


def _not_a_number(name: str) -> float:
    raise ValueError(f"{name} is not a number a table can hold")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]} is out of range")
    return number


def check_table(table: LatencyTable, normalized: onnx.ModelProto, channels: Counts, source: str,
                target: Target) -> list[str]:
    """Refuse a table made for another model, one that lacks a group to be pruned or measures
    it up to another width, and one measured at another batch size, thread count or input
    shapes than ``target``'s. Returns what could not be checked: the settings a table made
    before they were recorded does not hold."""
    if table.meta.get("model_sha256") != model_hash(normalized):
        raise OnnxPruneError(f"{source}: made for another model (its model_sha256 {table.meta.get('model_sha256')} "
                             f"is not this model's {model_hash(normalized)}); run `onnxprune profile` on this model")
    missing = sorted(g for g in channels if g not in table.steps)
    if missing:
        raise OnnxPruneError(f"{source}: has no measurements for groups {missing}; profile with the same "
                             "options (--exclude, method) as the prune")
    for g, n in channels.items():
        if max(table.steps[g]) != n:
            raise OnnxPruneError(f"{source}: group {g} is measured up to {max(table.steps[g])} channels, the model's "
                                 f"has {n}; run `onnxprune profile` on this model")
    shapes = {name: list(dims) for name, dims in batch_shapes(normalized, target.batch, dict(target.input_shapes)).items()}
    ours = {"batch": (target.batch, "--latency-batch"), "threads": (target.threads, "--threads"),
            "input_shapes": (shapes, "--input-shape, or the --calib data's")}
    for key, (value, option) in ours.items():
        theirs = table.meta.get(key, value)
        if not (_same_shapes(theirs, value) if key == "input_shapes" else theirs == value):
            what = key.replace("_", " ")
            raise OnnxPruneError(f"{source}: measured with {what} {theirs}, this prune's {what} {value} ({option}); "
                                 "prune with the table's, or profile again with this prune's")
    return [key.replace("_", " ") for key in ours if key not in table.meta]


def _same_shapes(theirs, ours: dict[str, list]) -> bool:
    """A table's input shapes against the prune's, where a dim the prune leaves unknown (None) takes the table's."""
    return isinstance(theirs, dict) and theirs.keys() == ours.keys() and all(
        isinstance(theirs[name], list) and len(theirs[name]) == len(dims)
        and all(d is None or d == t for t, d in zip(theirs[name], dims)) for name, dims in ours.items())


def staircase(times: dict[int, float]) -> dict[int, float]:
    """Measured segment times made a staircase: non-decreasing in width (pool-adjacent-violators:
    a wider segment is never faster; a dip is noise), and widths whose times differ by less than
    FLAT of the widest's time (or FLAT_MS) share their step's highest time, so a width inside a
    step is charged what the whole step costs."""
    widths = sorted(times)
    blocks: list[list] = []  # [total, count, widths] pooled from narrow to wide
    for k in widths:
        blocks.append([times[k], 1, [k]])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count, ks = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
            blocks[-1][2] += ks
    monotone = {k: total / count for total, count, ks in blocks for k in ks}
    tolerance = max(FLAT * monotone[widths[-1]], FLAT_MS)
    result, step = {}, []
    for k in widths:
        if step and monotone[k] - monotone[step[0]] >= tolerance:
            result.update({w: monotone[step[-1]] for w in step})
            step = []
        step.append(k)
    result.update({w: monotone[step[-1]] for w in step})
    return result


def steps_of(analysis: Analysis, channels: Counts, round_to: int) -> Counts:
    """Each group's step: ``round_to``, or its least multiple that is one of the group's blocks;
    for attention heads, the fewest heads whose columns are a multiple of ``round_to``."""
    steps = block_steps(round_to, {g: analysis.groups[g].blocks for g in channels})
    return {g: head_step(round_to, analysis.groups[g].head_dim) if analysis.groups[g].head_dim else s
            for g, s in steps.items()}


def timed_keep(analysis: Analysis, counts: Counts) -> dict[int, np.ndarray]:
    """The channels a timed width keeps: the first ones of each group (of each of its blocks, for
    a group cut by grouped convs); the time depends on the widths alone."""
    return select(analysis, [-np.arange(len(c), dtype=np.float64) for c in analysis.group_classes], counts)


def ladder(n: int, round_to: int) -> list[int]:
    """The widths measured for a group of n channels: n, then multiples of ``round_to`` at
    least max(round_to, n / 16) apart (as PRO steps), down to ``round_to``."""
    return allowed_counts(n, round_to, max(round_to, n // 16))


def profile(normalized: onnx.ModelProto, analysis: Analysis, channels: Counts, target: Target, round_to: int,
            runs: int = 30, seed: int = 0) -> LatencyTable:
    """Measure the latency table of ``normalized`` for the groups in ``channels`` on ``target``."""
    start = time.perf_counter()
    feeds = _feeds(normalized, target, seed)
    values = _activations(normalized, feeds, target)
    with failing(f"onnxruntime failed while timing at batch {target.batch} ({describe_feeds(feeds)})"):
        steps, scale, full_ms, checks = _timed(normalized, analysis, channels, target, round_to, runs, seed, values)
    meta = {"model_sha256": model_hash(normalized), "providers": list(target.providers),
            "threads": target.threads, "batch": target.batch,
            "input_shapes": {name: list(value.shape) for name, value in feeds.items()},
            "round_to": round_to, "runs": runs, "onnxruntime": ort.__version__, "cpu": _cpu(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "made": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": round(time.perf_counter() - start, 1)}
    return LatencyTable(meta, full_ms, steps, scale, checks)


def _timed(normalized: onnx.ModelProto, analysis: Analysis, channels: Counts, target: Target, round_to: int,
           runs: int, seed: int, values: dict[str, np.ndarray]) -> tuple[dict, float, float, list[dict]]:
    """``profile``'s measurements: each group's staircase, the scale, the whole model's time and the checks."""
    steps = {}
    step = steps_of(analysis, channels, round_to)
    for g, n in channels.items():
        nodes = touched_nodes(analysis, g)
        widths = ladder(n, step[g])
        segments = [_segment(prune_channels(normalized, analysis, timed_keep(analysis, {g: k})) if k < n
                             else normalized, nodes, values) for k in widths]
        runs_ = [session(s, target.providers, threads=target.threads) for s, _ in segments]
        times = medians_ms(interleaved(runs_, [f for _, f in segments], runs))
        steps[g] = staircase(dict(zip(widths, times)))
    checks = {r: uniform(channels, r, step) for r in CHECK_RATIOS}
    checks = {r: c for r, c in checks.items() if any(c[g] < n for g, n in channels.items())}
    models = [prune_channels(normalized, analysis, timed_keep(analysis, c)) for c in checks.values()]
    full_ms, *measured = measure(normalized, models, target, runs, seed)
    unscaled = LatencyTable({}, 0.0, steps)
    predicted_saving = np.array([-unscaled.predict(c) for c in checks.values()])
    measured_saving = full_ms - np.array(measured)
    scale = float(predicted_saving @ measured_saving / (predicted_saving @ predicted_saving)) \
        if np.any(predicted_saving > 0) else 1.0
    scale = min(max(scale, 0.1), 10.0)  # a check drowned in noise must not make the table absurd
    fitted = LatencyTable({}, full_ms, steps, scale)
    return steps, scale, full_ms, [{"ratio": r, "predicted_ms": fitted.predict(c), "measured_ms": m}
                                   for (r, c), m in zip(checks.items(), measured)]


def measure(original: onnx.ModelProto, models: list[onnx.ModelProto], target: Target, runs: int = 30,
            seed: int = 0, seconds: float = 1.5, rounds: int = 5) -> list[float]:
    """Latency (ms) of ``original`` and then of each of ``models`` (same inputs): ``rounds`` rounds of
    interleaved runs on fresh sessions (``in_rounds``), about ``seconds`` of runs in all (at least
    ``runs`` per model, at most 1,000 per round), since sub-millisecond medians of 30 runs moved by
    25 % from one call to the next and one set of sessions is one draw of their speeds. The
    original's is its median over rounds; each model's is that divided by its median speedup over
    rounds (``round_speedups``), so that their ratios are the speedups."""
    feeds = [_feeds(original, target, seed)] * (1 + len(models))
    make = lambda: [session(m, target.providers, threads=target.threads) for m in [original, *models]]  # noqa: E731
    with failing(f"onnxruntime failed while timing at batch {target.batch} ({describe_feeds(feeds[0])})"):
        spare = [make()]  # timed briefly to size the rounds, then the first round's sessions
        first = medians_ms(interleaved(spare[0], feeds, 3))
        per_round = max(-(-runs // rounds), min(1000, int(seconds * 1000 / sum(first) / rounds)))
        times = in_rounds(lambda: spare.pop() if spare else make(), feeds, per_round, rounds)
    medians, speedups = round_speedups(times)
    return [medians[0] / s for s in speedups]


def _feeds(model: onnx.ModelProto, target: Target, seed: int) -> dict[str, np.ndarray]:
    """The target's inputs at its batch: its sample repeated or cut to it, else random."""
    if target.sample is not None:
        return {name: np.resize(value, (target.batch, *value.shape[1:])) for name, value in target.sample.items()}
    feeds = batch_feeds(model, target.batch, dict(target.input_shapes), seed)
    if feeds is None:
        raise OnnxPruneError("latency: the model has dynamic input dims other than the batch; fix them with "
                             "--input-shape")
    return feeds


def _activations(model: onnx.ModelProto, feeds: dict[str, np.ndarray], target: Target) -> dict[str, np.ndarray]:
    """Every tensor of one run of ``model`` (the segments' real inputs): the first run of the input
    model at the target's batch, whose failure is the input model's, on these inputs."""
    names = [o for n in model.graph.node for o in n.output if o]
    with failing(f"onnxruntime cannot run the input model at batch {target.batch} ({describe_feeds(feeds)})"):
        values = run_all(session(probe_model(model, names), target.providers, optimize=False), feeds)
    return {**feeds, **values}


def _segment(model: onnx.ModelProto, nodes: set[str], values: dict[str, np.ndarray],
             ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The sub-model of ``nodes`` (cut out of ``model``) and its inputs: the tensors they read
    that none of them writes, from the unpruned model's run (their shapes do not depend on
    the group's width). The shapes they read are computed inside (``with_shape_arithmetic``):
    those can hold the width."""
    nodes = with_shape_arithmetic(model, nodes, values)
    inside = [n for n in model.graph.node if n.name in nodes]
    made = {o for n in inside for o in n.output}
    constants = {t.name for t in model.graph.initializer}
    sources = {name: values[name] for n in inside for name in n.input
               if name and name not in made and name not in constants}
    read_outside = {name for n in model.graph.node if n.name not in nodes for name in n.input}
    graph_outputs = {o.name for o in model.graph.output}
    outputs = [o for n in inside for o in n.output if o and (o in read_outside or o in graph_outputs)]
    return probe_model(model, outputs, sources), sources


def with_shape_arithmetic(model: onnx.ModelProto, nodes: set[str], values: dict[str, np.ndarray]) -> set[str]:
    """``nodes`` and the producers of the integer tensors they read, back to float tensors, graph
    inputs and constants: the shape arithmetic of their Reshapes. Torch exports an attention's
    split as Reshape(x, Concat(Shape(x)[0:2], [H], [d])); with heads removed, H is the kept count
    in the pruned model, while the unpruned run's Concat would still ask for all of them."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    nodes = set(nodes)
    todo = [n for n in model.graph.node if n.name in nodes]
    while todo:
        for name in todo.pop().input:
            node = producer.get(name)
            if node is not None and node.name not in nodes and np.issubdtype(values[name].dtype, np.integer):
                nodes.add(node.name)
                todo.append(node)
    return nodes


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class LatencyGoal:
    """--keep-latency: keep at most ``fraction`` of the original's latency on ``target``."""

    fraction: float
    target: Target
    round_to: int
    table: str | None = None  # a table made elsewhere (`onnxprune profile`); None: measure here
    pro: bool = False
    pro_samples: int = 256
    pro_pooled: bool = False  # PRO's error on the output mean-pooled over real tokens (pro.py)


@dataclass
class LatencyFit:
    """What --keep-latency did: the table's source and fit, predicted and measured latencies."""

    goal: LatencyGoal
    table: LatencyTable
    counts: Counts
    predicted_ms: float
    measured_here: bool
    attempts: list[dict] = field(default_factory=list)  # each fitted budget and what it measured
    measured_original_ms: float | None = None  # the final model against the original (``measure``)
    measured_ms: float | None = None
    rankings: dict[str, float] = field(default_factory=dict)  # with PRO: each ranking's error at the table's budget
    ranking: str | None = None  # with PRO: the ranking whose widths were kept
    unchecked: list[str] = field(default_factory=list)  # settings a table from elsewhere does not record

    def measure_result(self, original: onnx.ModelProto, pruned: onnx.ModelProto) -> None:
        """Time the pruned model against the original, where the table was measured here."""
        if self.measured_here:
            self.measured_original_ms, self.measured_ms = measure(original, [pruned], self.goal.target)

    def to_json(self) -> dict:
        table = self.table
        return {
            "target": self.goal.fraction, "batch": self.goal.target.batch, "threads": self.goal.target.threads,
            "providers": list(self.goal.target.providers),
            "table": self.goal.table or "measured here", "table_meta": table.meta, "table_scale": table.scale,
            "table_checks": table.checks, "table_unchecked": self.unchecked,
            "original_ms": table.full_ms, "predicted_ms": self.predicted_ms,
            "predicted_fraction": self.predicted_ms / table.full_ms,
            "measured_original_ms": self.measured_original_ms, "measured_ms": self.measured_ms,
            "measured_fraction": (self.measured_ms / self.measured_original_ms
                                  if self.measured_ms is not None and self.measured_original_ms else None),
            "attempts": self.attempts,
            "pro_rankings": self.rankings,
            "pro_ranking": self.ranking,
            "groups": [{"group": g, "channels": k, "ms": table.group_ms(g, k),
                        "full_ms": table.group_ms(g, max(table.steps[g]))} for g, k in sorted(self.counts.items())],
        }


FASTER_THAN_ASKED = 0.92  # a whole model measured below 0.92 of the target is refitted to a larger budget


def latency_counts(normalized: onnx.ModelProto, analysis: Analysis, method, channels: Counts, goal: LatencyGoal,
                   calibration, progress: Progress, keep_for: Callable[[Counts], dict[int, np.ndarray]],
                   macs: Callable[[Keep], int]) -> tuple[Counts, list, LatencyFit]:
    """Counts whose latency is at most ``goal.fraction`` of the original's.

    The table is measured here (``profile``) or read from ``goal.table``. Widths are fitted on
    the table's prediction: uniform bisection and give-back, or PRO. PRO runs twice, ranking
    steps by final-output error per microsecond saved and per MAC saved (``macs``), both down
    to the same predicted latency: per microsecond is the natural rank, but it favours the
    layers whose savings the table overestimates, and then per MAC is the better route to the
    same speed. With a table from elsewhere the widths with the smaller error are kept.
    Measured here, both rankings' widths are timed as whole models and the smaller error is
    taken among those within the target (else the faster); while the chosen widths miss the
    target by more than 2 % (5 % with PRO, whose refits cost more), or are more than
    ``FASTER_THAN_ASKED`` faster than asked (speed beyond the target costs accuracy for
    nothing), the budget is scaled by the miss and that ranking's widths fitted again (at most
    3 times), and the widths of the largest budget measured within the target are kept (none
    within: those measured closest to it)."""
    unchecked = []
    if goal.table is None:
        with progress(f"latency: timing {len(channels)} groups' widths", len(channels)) as advance:
            table = profile(normalized, analysis, channels, goal.target, goal.round_to)
            advance(len(channels))
    else:
        table = load_table(goal.table)
        unchecked = check_table(table, normalized, channels, goal.table, goal.target)
    budget = goal.fraction * table.full_ms
    steps = steps_of(analysis, channels, goal.round_to)
    deepest = uniform(channels, 1.0, steps)
    if table.predict(deepest) > budget:
        fastest = table.predict(deepest) / table.full_ms
        if goal.table is None:  # the table may be pessimistic: the deepest pruning measured decides
            full_ms, deepest_ms = measure(normalized, [prune_channels(normalized, analysis, keep_for(deepest))],
                                          goal.target)
            fastest = min(deepest_ms / full_ms, 1.0)  # pruning nothing keeps 1.0: slower widths are noise
            if fastest <= goal.fraction:  # reachable after all: fit in the table's units, scaled to match
                budget = table.predict(deepest) * goal.fraction / fastest
    if table.predict(deepest) > budget:
        raise OnnxPruneError(
            f"--keep-latency {goal.fraction}: unreachable; the fastest pruning allowed (--round-to {goal.round_to}, "
            f"frozen groups untouched) keeps {fastest:.3f} of the latency "
            f"({'measured' if goal.table is None else 'predicted'}, batch {goal.target.batch})")
    # the data method's reconstructions, shared by every PRO run (two per fit, and the refits)
    rebuilt = (Reconstructions(normalized, analysis, method, channels, calibration, progress, ladders(channels, steps))
               if goal.pro and method.reconstructs else None)

    ranks = {"per microsecond": lambda keep: round(1000 * table.predict({g: len(k) for g, k in keep.items()})),
             "per MAC": macs} if goal.pro else {}

    searches: dict[str, ProSearch] = {}  # per ranking, kept for the refits: each continues or reads its path
    errors: dict[tuple, float] = {}  # the candidates' errors, by counts: measured once for both rankings

    def fit(budget_ms: float, names: list[str]) -> dict[str | None, ProChoice]:
        """Widths within ``budget_ms`` for each PRO ranking in ``names``, with PRO's steps and the
        final-output error of the widths; without PRO, the uniform fit (under None)."""
        if not goal.pro:
            return {None: ProChoice(fit_budget(channels, table.predict, budget_ms, steps), [], 0.0)}
        for name in names:
            if name not in searches:
                searches[name] = ProSearch(normalized, analysis, method, channels, ranks["per microsecond"],
                                           calibration, steps, goal.pro_samples, progress, ranks[name], rebuilt,
                                           goal.pro_pooled, errors)
        return {name: searches[name].choose(1000 * budget_ms) for name in names}

    choices = fit(budget, list(ranks))
    name = min(choices, key=lambda n: choices[n].error)  # on the table alone: the smaller error
    choice = choices[name]
    result = LatencyFit(goal, table, choice.counts, table.predict(choice.counts), goal.table is None,
                        rankings={n: c.error for n, c in choices.items() if n}, ranking=name, unchecked=unchecked)
    if goal.table is not None or all(choice.counts[g] == n for g, n in channels.items()):
        return choice.counts, choice.steps, result
    tolerance = 1.05 if goal.pro else 1.02  # PRO's refits cost more: a looser tolerance

    def timed(measured: dict[str | None, ProChoice], budget_ms: float) -> dict[str | None, float]:
        """Each choice's measured latency over the target's (one interleaved measurement), recorded."""
        full_ms, *got = measure(normalized, [prune_channels(normalized, analysis, keep_for(c.counts))
                                             for c in measured.values()], goal.target)
        for (n, c), ms in zip(measured.items(), got):
            result.attempts.append({**({"ranking": n} if n else {}), "budget_ms": budget_ms,
                                    "predicted_ms": table.predict(c.counts), "measured_ms": ms,
                                    "measured_original_ms": full_ms})
        return {n: ms / full_ms / goal.fraction for n, ms in zip(measured, got)}

    # Both rankings' widths are timed first: per microsecond favours the layers whose savings the
    # table overestimates (the optimiser's curse), so the smaller error counts only among widths
    # measured within the target; the refits then follow the ranking chosen.
    misses = timed(choices, budget)
    within = [n for n in choices if misses[n] <= tolerance]
    name = min(within, key=lambda n: choices[n].error) if within else min(misses, key=misses.get)
    choice, miss = choices[name], misses[name]
    kept = None  # (budget, choice) of the largest budget measured within the target
    closest = (miss, choice)  # the widths measured nearest the target, for when none is within it
    for attempt in range(4):
        if attempt:
            miss = timed({name: choice}, budget)[name]
        if miss <= tolerance and (kept is None or budget > kept[0]):
            kept = (budget, choice)
        if abs(miss - 1) < abs(closest[0] - 1):
            closest = (miss, choice)
        if FASTER_THAN_ASKED <= miss <= tolerance or attempt == 3:
            break
        # too slow: a smaller budget; much faster than asked: a larger one, which buys accuracy
        budget = min(budget / max(miss, 1e-3), table.full_ms)
        if table.predict(deepest) > budget:
            break
        choice = fit(budget, [name])[name]
    # else the widths measured closest to it: on a busy machine a refit to a smaller budget can
    # measure slower than the widths before it, and those lose accuracy for nothing
    choice = kept[1] if kept is not None else closest[1]
    result.counts, result.predicted_ms, result.ranking = choice.counts, table.predict(choice.counts), name
    return choice.counts, choice.steps, result
