"""PRO (Pruning Ratio Optimizer, Kamma and Wada): per-group channel counts chosen by their effect on the network's FINAL output.

Each group's removal order comes from its method (data methods: calibration
statistics of the original model, ``Reconstructions``; l1: filter norms). Then, greedily:

    for every group g: candidate = one more step of g's order removed (its consumers
                       reconstructed independently, from the original model's statistics)
    increase(g) = mean ||f(x) - f_candidate(x)||^2 - mean ||f(x) - f_current(x)||^2
    commit argmin_g increase(g) / (rank(current) - rank(candidate))

until the cost (MACs, parameters or predicted latency) is within the target; ``rank`` is
the cost itself unless another is given (--keep-latency also tries ranking by MACs and
keeps whichever ends with the smaller error: per microsecond, a noisy table can favour
steps that cost more accuracy). Lazy evaluation keeps it
fast: a step is measured again right before it is committed, the committed group's next step
is first guessed to cost what its last did, and every group is re-measured every few commits
(the others' increases change little). For a
method that reconstructs, a candidate is a weight variant (variants.py: zero rows for
removed channels) of a model pruned to an earlier commit's widths, run from its group's
first consumer on (``VariantCandidates``); for one that does not (l1), it is the pruned
model, run from the first node its group touches (``PrunedCandidates``).
A consumer that reads several groups (a Concat) is fitted, for a candidate, on the other
groups' channels that the base still has; a grouped conv block by block (methods/grouped.py),
its rows restricted to the base's channels block by block.
Channels are then given back, ``round_to`` at a time, while the cost stays within the
target, and the real method prunes to the chosen counts (sequentially, for data methods).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import onnx

from ..analysis.consumers import Consumer, kept_outputs, reconstructable, touched_nodes
from ..analysis.groups import Analysis
from ..calibration.statistics import HOLDOUT_EVERY, MASK, Calibration, collect
from ..errors import OnnxPruneError
from ..methods.base import DataMethod, SelectionMethod
from ..methods.grouped import Piece, join, pieces, restrict, rounds
from ..methods.scores import keep_every_tensor
from ..methods.sequential import group_first
from ..memory import release
from ..methods.weights import overlay_weights, stored, theta_of
from ..passes.surgery import prune_channels
from ..parallel import each, single_blas
from ..progress import Progress, no_progress
from .budget import Steps, step_of
from .recent import recent
from .variants import Cuts, Variants, first_samples

REFRESH_EVERY = 8  # commits between full re-measurements of every group, at least (refresh_interval)
# Removal orders run side by side only while their eliminations hold less than this together: two of
# ResNet-50's 4,609-column convs side by side held PRO's peak at 4.5 GB
SIDE_BY_SIDE_BYTES = 1 << 30
# Weights kept per group: its base's and its candidates' (a search moves each group a rung at a time;
# every rung kept held ResNet-50's consumers' weights many times over)
KEPT_WEIGHTS = 3
REBASE = 0.85  # candidates run on a model pruned to the current widths once they cost 15 % less
RUNGS = 256  # ladder rungs of all groups together, about (rungs_per_group)
PASS_MACS = 32e9  # MACs of one forward pass over PRO's samples, at most, when their number is automatic
MIN_SAMPLES, MAX_SAMPLES = 16, 256

Counts = dict[int, int]
Keep = dict[int, np.ndarray]
Weights = dict[str, tuple[Consumer, np.ndarray, np.ndarray]]  # consumer node -> (consumer, theta, output columns)


@dataclass(frozen=True)
class ProStep:
    group: int
    channels: int  # the group's count after this step
    cost: int
    error: float  # mean squared final-output error after this step


@dataclass(frozen=True)
class ProChoice:
    counts: Counts
    steps: list[ProStep]  # the commits, before channels were given back
    error: float  # mean squared final-output error at ``counts`` (independent reconstruction)


def lateness(order: np.ndarray, n: int) -> np.ndarray:
    """Each of n channels' place in a removal ``order`` (the never removed last): the later it
    goes, the more it is worth keeping."""
    late = np.full(n, float(len(order)))
    late[order] = np.arange(len(order))
    return late


def refresh_interval(groups: int) -> int:
    """Commits between full re-measurements: max(REFRESH_EVERY, groups). A full one costs an
    evaluation per group, a commit about two (the lazy re-measurement and its own next step): so
    refreshing costs at most half of what the commits cost however many groups there are (a
    detector has dozens; between refreshes the lazy greedy re-measures any stale candidate
    before committing it), and a model of up to 8 groups refreshes every 8 commits."""
    return max(REFRESH_EVERY, groups)


def rungs_per_group(groups: int) -> int:
    """How many steps a group's ladder has at most: clip(RUNGS / groups, 4, 16). The search's
    commits, about two forward passes each, grow with the rungs of all groups together: 16 a
    group (a sixteenth of its channels a step) for up to 16 groups, 8 for 32, and a quarter of
    its channels a step from 64 groups on (a detector); the channels given back after the
    search refine the last steps by --round-to."""
    return int(np.clip(RUNGS // max(groups, 1), 4, 16))


def ladders(channels: Counts, round_to: Steps) -> dict[int, list[int]]:
    """Each group's counts on its way down: steps of --round-to, a 1/rungs_per_group of it at least."""
    rungs = rungs_per_group(len(channels))
    steps = {g: step_of(round_to, g) for g in channels}
    return {g: allowed_counts(n, steps[g], max(steps[g], n // rungs)) for g, n in channels.items()}


def floors(channels: Counts, round_to: Steps) -> Counts:
    """The fewest channels the search may leave each group: its ladder's last rung."""
    return {g: ladder[-1] for g, ladder in ladders(channels, round_to).items()}


def sample_count(macs_per_sample: float, requested: int = 0) -> int:
    """How many samples PRO measures the final output on: ``requested``, or for 0 as many as keep
    one forward pass within PASS_MACS, clip(PASS_MACS / macs_per_sample, MIN_SAMPLES, MAX_SAMPLES).
    Every candidate is a forward pass (hundreds of them), and the candidates are compared on the
    same samples, so their ranking needs far fewer samples than an accuracy does: 256 for the
    reference CNNs (at most 96 MMAC a sample), 29 for YOLOv8n at 320 px, 16 for ResNet-50."""
    if requested:
        return requested
    return int(np.clip(PASS_MACS // max(macs_per_sample, 1), MIN_SAMPLES, MAX_SAMPLES))


def allowed_counts(n: int, round_to: int, step: int) -> list[int]:
    """Counts a group may take on its way down: n, then multiples of round_to, ``step`` apart at least."""
    counts, k = [n], n
    while True:
        k = (k - step) // round_to * round_to
        if k < max(round_to, 1):
            return counts
        counts.append(k)


class Candidates(Protocol):
    """The final outputs of candidate widths on PRO's samples."""

    def evaluate(self, counts: Counts, group: int | None) -> np.ndarray:
        """The output with ``counts``, which differ from the committed ones in ``group`` only
        (None: nothing changed, the committed model)."""

    def commit(self, counts: Counts, group: int) -> None:
        """Make ``counts`` (changed in ``group``) the committed widths."""

    def at(self, counts: Counts) -> np.ndarray:
        """The output with ``counts``, which may differ from the committed ones anywhere; the committed
        widths stay as they were."""


def optimize_counts(normalized: onnx.ModelProto, analysis: Analysis, method: SelectionMethod, channels: Counts,
                    cost: Callable[[Keep], int], budget: float, calib: Calibration, round_to: Steps, samples: int,
                    progress: Progress = no_progress, rank: Callable[[Keep], int] | None = None,
                    rebuilt: Reconstructions | None = None, pooled: bool = False) -> ProChoice:
    """Counts per group (of ``channels``) whose cost is within ``budget``, chosen by PRO with
    steps ranked by error added per ``rank`` saved (default: per ``cost`` saved). ``rebuilt``:
    the data method's reconstructions, when a caller runs PRO more than once; ``pooled``: the
    error of the output mean-pooled over real tokens (``Pooling``)."""
    return ProSearch(normalized, analysis, method, channels, cost, calib, round_to, samples, progress, rank,
                     rebuilt, pooled).choose(budget)


class ProSearch:
    """PRO's greedy search, kept between budgets.

    Which step it commits next depends on the errors and ranks measured, never on the budget:
    the budget only says where it stops. So one search answers several budgets as a fresh
    search for each would: a budget its path already passed reads the path up to the first
    commit within it, and a smaller one continues the path from where it stopped
    (--keep-latency fits several budgets with each ranking). ``errors``: the final-output error
    of every counts measured, by counts; searches over the same data may share it (--keep-latency's
    two rankings walk the same path for a while, and then each measures what the other did).
    """

    def __init__(self, normalized: onnx.ModelProto, analysis: Analysis, method: SelectionMethod, channels: Counts,
                 cost: Callable[[Keep], int], calib: Calibration, round_to: Steps, samples: int,
                 progress: Progress = no_progress, rank: Callable[[Keep], int] | None = None,
                 rebuilt: Reconstructions | None = None, pooled: bool = False,
                 errors: dict[tuple, float] | None = None):
        self.channels, self.cost, self.progress = channels, cost, progress
        self.errors = {} if errors is None else errors
        self.rank = cost if rank is None else rank
        feeds = first_samples(calib, samples)
        output = measured_output(normalized)
        if method.reconstructs:
            if rebuilt is None:
                rebuilt = Reconstructions(normalized, analysis, method, channels, calib, progress,
                                          ladders(channels, round_to))
            self.orders = rebuilt.orders
        else:
            self.orders = method.orders(analysis, channels)
        # not a bound method: the candidates keep it, and a cycle back to the search would keep
        # every statistic alive after PRO until the garbage collector happens to run
        self.keep_of = KeepOf(analysis, channels, self.orders)
        self.steps = {g: step_of(round_to, g) for g in channels}
        self.ladders = ladders(channels, round_to)
        self.position = {g: 0 for g in channels}  # index into the group's ladder
        self.candidates: Candidates = (
            VariantCandidates(normalized, analysis, channels, rebuilt, self.keep_of, cost, feeds, output, calib)
            if method.reconstructs else PrunedCandidates(normalized, analysis, channels, self.keep_of, feeds, output,
                                                         calib))
        self.view = Pooling(feeds.get(MASK), output, pooled)
        self.reference = self.view(self.candidates.evaluate({}, None)).astype(np.float64)
        start = self.keep_of(self.counts_at(self.position))
        self.current_cost, self.current_rank, self.current_error = cost(start), self.rank(start), 0.0
        self.start_cost = self.current_cost
        self.commits = 0
        # group -> (increase per rank saved, cost, rank, error, commits when measured)
        self.measured: dict[int, tuple[float, int, int, float, int]] = {}
        self.trace: list[ProStep] = []  # the path: every commit so far
        self.refresh = refresh_interval(len(channels))

    def counts_at(self, pos: dict[int, int]) -> Counts:
        return {g: self.ladders[g][i] for g, i in pos.items()}

    def distance(self, out: np.ndarray) -> float:
        """Mean squared distance of final outputs from the original's, per sample, as ``Pooling``
        sees them (real tokens only, or pooled over them)."""
        diff = (self.view(out) - self.reference).reshape(len(self.reference), -1)  # float64, as the reference
        return float(np.mean(np.einsum("ij,ij->i", diff, diff)))  # no squared copy of a detector's output

    def measure(self, g: int) -> None:
        if self.position[g] + 1 >= len(self.ladders[g]):
            self.measured.pop(g, None)
            return
        trial = self.counts_at({**self.position, g: self.position[g] + 1})
        keep = self.keep_of(trial)
        key = tuple(sorted(trial.items()))
        if key not in self.errors:
            self.errors[key] = self.distance(self.candidates.evaluate(trial, g))
        c, e = self.cost(keep), self.errors[key]
        r = c if self.rank is self.cost else self.rank(keep)
        self.measured[g] = ((e - self.current_error) / max(self.current_rank - r, 1), c, r, e, self.commits)

    def _advance_to(self, budget: float) -> None:
        """Commit steps until the cost is within ``budget``."""
        if self.current_cost <= budget:
            return
        with self.progress("PRO: choosing per-layer widths", max(1, int(self.current_cost - budget))) as advance:
            while self.current_cost > budget:
                if self.commits % self.refresh == 0:
                    for g in self.channels:
                        self.measure(g)
                while True:  # lazy greedy: the best candidate is re-measured before it is committed
                    if not self.measured:
                        raise OnnxPruneError("PRO cannot reach the target: every group is at its smallest width")
                    g = min(self.measured, key=lambda k: self.measured[k][0])
                    if self.measured[g][4] == self.commits:
                        break
                    self.measure(g)
                increase, new_cost, self.current_rank, self.current_error, _ = self.measured.pop(g)
                advance(int(self.current_cost - new_cost))
                self.current_cost = new_cost
                self.position[g] += 1
                self.commits += 1
                self.candidates.commit(self.counts_at(self.position), g)
                self.trace.append(ProStep(g, self.ladders[g][self.position[g]], self.current_cost,
                                          self.current_error))
                if self.position[g] + 1 < len(self.ladders[g]):
                    # its next step, guessed to cost what this one did and measured before it is
                    # committed (stale): a group's steps cost more as it narrows, so the guess is low
                    self.measured[g] = (increase, 0, 0, 0.0, -1)

    def choose(self, budget: float) -> ProChoice:
        """The counts PRO chooses for ``budget``: along the path to the first commit within it,
        then channels given back, latest-cut groups first, while the cost stays within it (the
        last step may overshoot)."""
        with single_blas():  # the candidates' refits: medium products, faster on one thread (parallel.py)
            return self._choose(budget)

    def _choose(self, budget: float) -> ProChoice:
        self._advance_to(budget)
        within = (i + 1 for i, step in enumerate(self.trace) if step.cost <= budget)
        trace = self.trace[:0 if self.start_cost <= budget else next(within)]
        counts = dict(self.channels)
        for step in trace:
            counts[step.group] = step.channels
        path_counts, path_error = dict(counts), trace[-1].error if trace else 0.0
        grew = True
        while grew:
            grew = False
            for g in dict.fromkeys(step.group for step in reversed(trace)):
                if counts[g] < self.channels[g]:
                    trial = {**counts, g: min(self.channels[g], counts[g] + self.steps[g])}
                    if self.cost(self.keep_of(trial)) <= budget:
                        counts, grew = trial, True
        given_back = counts != path_counts
        return ProChoice(counts, trace, self.distance(self.candidates.at(counts)) if given_back else path_error)


class KeepOf:
    """The channels each group keeps at given counts: all but the first of its removal order;
    where that would empty a part of a group read in parts (a C2f's Split), the part's last
    channel in the order stays too, as the sequential pass keeps every part."""

    def __init__(self, analysis: Analysis, channels: Counts, orders: dict[int, np.ndarray]):
        self.analysis, self.channels, self.orders = analysis, channels, orders
        self.lateness = [lateness(orders[g], channels[g]) if g in channels else None
                         for g in range(len(analysis.groups))]

    def __call__(self, counts: Counts) -> Keep:
        keep = {g: np.sort(np.setdiff1d(np.arange(self.channels[g]), self.orders[g][: self.channels[g] - k]))
                for g, k in counts.items()}
        return keep_every_tensor(self.analysis, self.lateness, keep)


class Reconstructions:
    """A data method's full removal order of every group, and its consumers' weights at any
    count, reconstructed independently from the ORIGINAL model's statistics."""

    def __init__(self, normalized: onnx.ModelProto, analysis: Analysis, method: DataMethod, channels: Counts,
                 calib: Calibration, progress: Progress, ladders: dict[int, list[int]] | None = None):
        """``ladders``: the search's (``ladders``): each group's order stops at its last rung, and
        its consumers' ridges are chosen at its first candidate (``_first_fits``)."""
        self.analysis, self.method, self.channels = analysis, method, channels
        ladders = ladders or {}
        self.floors = {g: ladder[-1] for g, ladder in ladders.items()}  # the fewest channels the search may leave
        plans, _ = reconstructable(analysis)
        self.consumers = {g: plans[g] for g in channels}
        everyone = list({c.node: c for g in channels for c in plans[g]}.values())
        with progress("PRO: calibrating", calib.samples) as advance:
            self.fit, self.holdout = collect(normalized, normalized, everyone, calib.batches, calib.mode,
                                             list(calib.providers), HOLDOUT_EVERY, advance, calib.sampling)
        release(collect=False)  # the statistics runs' tensors
        self.nodes = {n.name: n for n in analysis.graph.nodes}
        self.nothing = np.zeros(len(analysis.class_group), dtype=bool)
        with progress("PRO: removal orders", len(channels)) as advance:
            plans = {}
            # the dearest first, so that the last to finish on a core is a cheap one
            dearest = sorted(channels, key=lambda g: -self._elimination_cost(g))
            for g, plan in zip(dearest, each(lambda g: self._plan(g, channels[g]), dearest,
                                             memory=self._elimination_bytes, budget=SIDE_BY_SIDE_BYTES)):
                plans[g] = plan
                advance(1)
            self.plans = {g: plans[g] for g in channels}
        self.orders = {g: plan.order for g, plan in self.plans.items()}
        # Classes of other groups that g's consumers read (a Concat): the weights depend on which stay.
        self.others = {g: np.setdiff1d(np.concatenate([analysis.atom_class[analysis.layouts[c.input].atoms]
                                                       for c in self.consumers[g]]), analysis.group_classes[g])
                       for g in channels}
        self._cache: dict[int, dict[tuple[int, bytes], Weights]] = {}  # per group, the latest KEPT_WEIGHTS
        self._alphas: dict[tuple[str, int], float] = {}  # per consumer piece, chosen at its first fit
        self._first_fits(ladders, progress)

    def _first_fits(self, ladders: dict[int, list[int]], progress: Progress) -> None:
        """The search's first candidates, fitted now: group by group, one rung down from the original
        widths, as its first round of measurements asks for them (so they are the fits it reads from
        the cache, to the bit). A piece's ridge is chosen on the holdout at its first fit, and then its
        fit and holdout statistics become one sum: every holdout Gram (half of the statistics: 1.1 GB
        on ResNet-50) is gone before the search's candidates and models come."""
        first = {g: ladder[1] for g, ladder in ladders.items() if len(ladder) > 1}
        if not first or not self.holdout:
            return
        with progress("PRO: ridges", len(first)) as advance:
            for g, k in first.items():
                self.weights(g, k)
                advance(1)
        release(collect=False)  # the holdouts' and the ridge choices' arrays

    def _elimination_bytes(self, g: int) -> int:
        """What group g's elimination holds, about: five p x p float64 arrays a consumer (its Gram,
        inverse Gram, downdates, the set-up's two)."""
        return 40 * sum(c.columns ** 2 for c in self.consumers[g])

    def _elimination_cost(self, g: int) -> int:
        """Sum of p^3 over group g's consumers (p weight columns): what its elimination costs, about."""
        return sum(c.columns ** 3 for c in self.consumers[g])

    def _plan(self, g: int, n: int):
        """Group g's removal order down to its floor (in rounds, down to one channel per block, for
        a group that grouped convs cut), chosen on its consumers' pieces (``_pieces``). A REAP step
        costs more the more channels are gone: the steps below the floor would be the dearest."""
        problems = [p.problem() for c in self.consumers[g] for p in self._pieces(c, g, self.nothing)]
        blocks = rounds(self.analysis, g, self.analysis.groups[g].blocks)
        if blocks is None:
            return self.method.plan(problems, n, target=self.floors.get(g, 1))
        return self.method.plan(problems, n, target=self.analysis.groups[g].blocks, parts=blocks)

    def _pieces(self, c: Consumer, g: int, removed: np.ndarray) -> list[Piece]:
        """c's problems for group g (grouped.pieces): statistics of the original model, the group's
        channels first, then the other channels it reads that ``removed`` keeps (group_first)."""
        _, shape, columns_, rows, copies = group_first(self.analysis, c, g, removed, sequential=False)
        theta = theta_of(self.nodes[c.node], c)
        return pieces(self.analysis, c, shape, columns_, rows, copies, self.fit[c.node], self.holdout.get(c.node),
                      theta, np.arange(theta.shape[1]))

    def _rebuild(self, g: int, piece: tuple[str, int], p: Piece, kept: np.ndarray) -> np.ndarray:
        """A piece's weights on ``kept``, with the ridge chosen on the holdout at the piece's first
        fit and kept after: the search fits every consumer of a group again for each of its
        candidates, and one ridge costs one factorisation where choosing it costs one per ridge
        of the grid (the sequential pass that follows PRO chooses the ridge of every fit)."""
        theta, alpha = self.method.rebuild(self.plans[g], p.consumer_fit(), kept, self.channels[g],
                                           self._alphas.get(piece))
        self._alphas.setdefault(piece, alpha)
        return theta

    def weights(self, g: int, k: int, removed: np.ndarray | None = None) -> Weights:
        """Group g's consumers at k channels, the other groups' channels that ``removed`` (a
        class mask) drops left out of the fit."""
        removed = self.nothing if removed is None else removed
        return recent(self._cache.setdefault(g, {}), (k, removed[self.others[g]].tobytes()),
                      lambda: self._weights(g, k, removed), KEPT_WEIGHTS)

    def _weights(self, g: int, k: int, removed: np.ndarray) -> Weights:
        n = self.channels[g]
        kept = np.sort(np.setdiff1d(np.arange(n), self.orders[g][: n - k]))
        result = {}
        for c in self.consumers[g]:
            parts = self._pieces(c, g, removed)
            thetas = [self._rebuild(g, (c.node, i), p, kept) for i, p in enumerate(parts)]
            m = sum(len(p.outputs) for p in parts)
            # kept as they will be written: the cache holds every group's consumers, KEPT_WEIGHTS times
            result[c.node] = (c, stored(self.nodes[c.node], c, join(c, parts, thetas, m)), np.arange(m))
            if c.node in self.holdout:  # its ridges are chosen: fits read fit + holdout only, one sum
                self.fit[c.node] = self.fit[c.node] + self.holdout.pop(c.node)
        return result


class VariantCandidates:
    """Candidates as weight variants (variants.py): a group's reconstructed consumers with zero
    rows for its removed channels, nothing cut out.

    The variants are of a BASE model, pruned to the counts of some earlier commit, so runs
    take its widths: a candidate's weights are restricted to the base's kept rows and
    columns. The base is rebuilt once the current cost has fallen below ``REBASE`` of its own.
    """

    def __init__(self, normalized: onnx.ModelProto, analysis: Analysis, channels: Counts, rebuilt: Reconstructions,
                 keep_of: Callable[[Counts], Keep], cost: Callable[[Keep], int], feeds: dict[str, np.ndarray],
                 output: str, calib: Calibration):
        self.normalized, self.analysis, self.channels, self.rebuilt = normalized, analysis, channels, rebuilt
        self.keep_of, self.cost, self.feeds, self.output, self.calib = keep_of, cost, feeds, output, calib
        self.consumers = list({c.node: c for g in channels for c in rebuilt.consumers[g]}.values())
        self.rebase(dict(channels))

    def rebase(self, counts: Counts) -> None:
        self.variants = None  # the old base (its model, kept activations) goes before the new one comes
        keep = self.keep_of(counts)
        removed = self.analysis.removed_mask(keep)
        thetas: Weights = {}
        for g, k in counts.items():
            if k < self.channels[g]:
                thetas.update(self.rebuilt.weights(g, k, removed))
        model = (prune_channels(overlay_weights(self.normalized, thetas), self.analysis, keep) if thetas
                 else self.normalized)
        self.removed, self.base_cost = removed, self.cost(keep)
        self.variants = Variants(model, self.consumers, self.feeds, [self.output], list(self.calib.providers),
                                 self.calib.cache_bytes)
        del model, thetas
        release()  # the copies and graphs the new base was made through (graphs are cycles)

    def params(self, counts: Counts, g: int):
        changed = {}
        analysis = self.analysis
        for c, theta, _ in self.rebuilt.weights(g, counts[g], self.removed).values():
            classes = analysis.atom_class[analysis.layouts[c.input].atoms]
            present = np.flatnonzero(~self.removed[classes])
            outputs = kept_outputs(analysis, c, self.removed)
            theta = restrict(c, theta, present, len(classes))[:, outputs]
            changed.update(self.variants.params(c, theta, np.arange(len(outputs))))
        return changed

    def evaluate(self, counts: Counts, group: int | None) -> np.ndarray:
        return self.variants.run(self.params(counts, group) if group is not None else {})[0]

    def commit(self, counts: Counts, group: int) -> None:
        if self.cost(self.keep_of(counts)) < REBASE * self.base_cost:
            self.rebase(counts)
        else:
            self.variants.commit(self.params(counts, group))

    def at(self, counts: Counts) -> np.ndarray:
        committed = self.removed, self.base_cost, self.variants
        self.rebase(counts)
        out = self.evaluate(counts, None)
        self.removed, self.base_cost, self.variants = committed  # the search may go on from its commits
        return out


class PrunedCandidates:
    """Candidates as pruned models, each run from the first node its group touches."""

    def __init__(self, normalized: onnx.ModelProto, analysis: Analysis, channels: Counts,
                 keep_of: Callable[[Counts], Keep], feeds: dict[str, np.ndarray], output: str, calib: Calibration):
        self.normalized, self.analysis, self.keep_of, self.output = normalized, analysis, keep_of, output
        node_at = {n.name: i for i, n in enumerate(normalized.graph.node)}
        self.cut = {g: min(node_at[name] for name in touched_nodes(analysis, g)) for g in channels}
        self.cuts = Cuts(normalized, feeds, list(calib.providers), calib.cache_bytes)

    def evaluate(self, counts: Counts, group: int | None) -> np.ndarray:
        if group is None:
            return self.cuts.run(self.normalized, 0, [self.output])[0]
        pruned = prune_channels(self.normalized, self.analysis, self.keep_of(counts))
        return self.cuts.run(pruned, self.cut[group], [self.output])[0]

    def commit(self, counts: Counts, group: int) -> None:
        self.cuts.update(prune_channels(self.normalized, self.analysis, self.keep_of(counts)), self.cut[group])

    def at(self, counts: Counts) -> np.ndarray:
        return self.cuts.run(prune_channels(self.normalized, self.analysis, self.keep_of(counts)), 0, [self.output])[0]


FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


class Pooling:
    """The final output as PRO's error sees it: padded tokens zeroed (``real_tokens``), or with
    ``pooled`` the mean over real tokens, [batch, sequence, ...] -> [batch, ...]: a sentence
    embedding's error, where per-token errors that cancel in the mean do not count:

        pooled(y)_b = sum_s mask_bs y_bs / sum_s mask_bs
    """

    def __init__(self, mask: np.ndarray | None, output: str, pooled: bool):
        self.mask, self.output, self.pooled = mask, output, pooled

    def __call__(self, out: np.ndarray) -> np.ndarray:
        real = real_tokens(self.mask, out.shape)
        if not self.pooled:
            return out if np.ndim(real) == 0 else out * real  # every entry counts: no copy
        if np.ndim(real) == 0:
            raise OnnxPruneError(
                f"--pro-pooled: PRO's output '{self.output}' of shape {list(out.shape)} is not per token under an "
                f"'{MASK}' input ({'none given' if self.mask is None else list(self.mask.shape)}): "
                "nothing to pool; leave --pro-pooled out")
        return np.sum(out.astype(np.float64) * real, axis=1) / np.maximum(np.sum(real, axis=1), 1)


def real_tokens(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | float:
    """Weights of the output's entries in PRO's error: 0 for the outputs of padded tokens where the
    output is per token ([batch, sequence, ...] under an ``attention_mask`` of [batch, sequence]):
    nothing downstream reads them (mean pooling over real tokens), so they must not steer the
    widths; 1 (everything counts) for any other output."""
    if mask is None or tuple(shape[:2]) != mask.shape or len(shape) < 3:
        return 1.0
    return (mask != 0).reshape(mask.shape + (1,) * (len(shape) - 2)).astype(np.float64)


def measured_output(model: onnx.ModelProto) -> str:
    """The graph output whose error PRO measures: the first of a floating-point type (torch's export
    of a sentence encoder lists copies of its int64 input_ids and attention_mask first)."""
    floats = [o.name for o in model.graph.output if o.type.tensor_type.elem_type in FLOATS]
    return floats[0] if floats else model.graph.output[0].name
