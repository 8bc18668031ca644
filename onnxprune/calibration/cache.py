"""Activations kept at cuts of the graph, so that a changed model runs only from where it changed.

Sequential pruning runs a model up to a few tensors once per group, and between two
runs the model changes only from the group just pruned onwards. Running from the
input every time costs O(L^2) layers over a network of L layers. A ``SegmentRunner``
keeps, for every calibration batch, the tensors that cross a cut (produced before a
given node, read at or after it), so the next run starts at that cut: O(L) in all.

The caller promises that the nodes before the cut it asks to keep are the same, with
the same weights, in the next model it runs. The runner checks that the node NAMES
before the cut agree and otherwise starts from the input again; the cache also gives
way (and runs start from the input) when it would exceed its byte budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import zip_longest

import numpy as np
import onnx

from ..graph.probe import probe_model
from ..graph.runtime import run_all, session
from .statistics import Batches


def cuttable(model: onnx.ModelProto) -> bool:
    """Whether cuts are safe: no If/Loop/Scan, whose subgraphs read outer tensors unseen here."""
    return not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for n in model.graph.node for a in n.attribute)


def live_tensors(model: onnx.ModelProto, position: int) -> list[str]:
    """Activations that cross the cut before node ``position``: produced before it (or graph
    inputs), read by a node at or after it. Initializers are not activations."""
    constants = {t.name for t in model.graph.initializer}
    before = {i.name for i in model.graph.input} - constants
    for node in model.graph.node[:position]:
        before.update(o for o in node.output if o)
    live: dict[str, None] = {}
    for node in model.graph.node[position:]:
        for name in node.input:
            if name in before:
                live[name] = None
    return list(live)


class SegmentRunner:
    """Runs models over the calibration batches, resuming from the activations kept last time."""

    def __init__(self, batches: Batches, providers: list[str], budget_bytes: int):
        self.batches = batches
        self.providers = providers
        self.budget = budget_bytes
        self.cut: int = 0  # position of the cut the cache holds (0: nothing kept)
        self.before: frozenset[str] = frozenset()  # names of the nodes before the cut
        self.cache: list[dict[str, np.ndarray]] = []  # per batch: the live tensors at the cut

    def run(self, model: onnx.ModelProto, wanted: list[str], keep_before: str | None = None,
            ) -> Iterator[dict[str, np.ndarray]]:
        """Per calibration batch, the ``wanted`` tensors of ``model``. With ``keep_before``
        (a node name), the live tensors before that node are kept for the next run."""
        names = [n.name for n in model.graph.node]
        position = {name: i for i, name in enumerate(names)}
        start = self.cut if self.cut and frozenset(names[:self.cut]) == self.before else 0
        producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
        cached = set(self.cache[0]) if start and self.cache else set()
        if any(name not in cached and producer.get(name, -1) < start for name in wanted):
            start, cached = 0, set()  # a wanted tensor lies before the cut
        save = position.get(keep_before, 0) if keep_before is not None and cuttable(model) else 0
        inputs = {i.name for i in model.graph.input}
        keep = live_tensors(model, save) if save >= max(start, 1) else []
        if keep:  # wanted graph inputs (the attention mask) stay with the cut: later runs need not start over
            keep += [n for n in wanted if n in inputs and n not in keep]
        if start:
            sources = _drain(self.cache)  # each kept batch is freed once used: old and new cut never both whole
            self.cut, self.before = 0, frozenset()
            computed = [n for n in dict.fromkeys(wanted + keep) if n not in cached]
            segment = probe_model(model, computed, self.cache[0]) if computed else None
        else:
            sources = self.batches()
            computed = [n for n in dict.fromkeys(wanted + keep) if n not in inputs]
            segment = probe_model(model, computed) if computed else None
        run = session(segment, self.providers) if segment is not None else None
        kept, size = [], 0
        for feeds in sources:
            values = dict(feeds)
            if run is not None:
                values.update(run_all(run, feeds))
            if keep:
                kept.append({n: values[n] for n in keep})
                size += sum(v.nbytes for v in kept[-1].values())
                if size > self.budget:  # will not fit: free it now, the next run starts from the input
                    keep, kept = [], []
            yield {n: values[n] for n in wanted}
        if keep and kept:
            self.cut, self.before, self.cache = save, frozenset(names[:save]), kept
        else:
            self.cut, self.before, self.cache = 0, frozenset(), []


def _drain(items: list) -> Iterator:
    items.reverse()
    while items:
        yield items.pop()


def pairs(first: Iterable, second: Iterable) -> Iterator[tuple]:
    """zip() that runs both iterables to their end: a runner keeps its cut only once its
    run is complete, and zip() stops the second one a step short."""
    end = object()
    for a, b in zip_longest(first, second, fillvalue=end):
        if a is end or b is end:
            raise AssertionError("the two runs gave different numbers of batches")
        yield a, b


class KeptActivations:
    """Activations of a model on fixed samples, kept at the cuts asked for.

    ``at(p)`` gives the live tensors before node ``p`` (``live(p)``), computing the missing
    ones from the latest cut whose tensors are all known (the inputs at worst) with
    ``compute(start, names, inputs)``. Above the byte budget only the latest cut asked for
    is kept. The owner forgets what a change of the model invalidates (``forget``).
    """

    def __init__(self, feeds: dict[str, np.ndarray], budget_bytes: int, live: Callable[[int], list[str]],
                 compute: Callable[[int, tuple[str, ...], dict[str, np.ndarray]], dict[str, np.ndarray]]):
        self.feeds, self.budget, self.live, self.compute = feeds, budget_bytes, live, compute
        self.values: dict[str, np.ndarray] = {}

    def at(self, position: int) -> dict[str, np.ndarray]:
        known = {**self.feeds, **self.values}
        wanted = self.live(position)
        missing = tuple(n for n in wanted if n not in known)
        if missing:
            start = max((p for p in range(position, 0, -1) if all(n in known for n in self.live(p))), default=0)
            self.values.update(self.compute(start, missing, {n: known[n] for n in self.live(start)}))
            if sum(v.nbytes for v in self.values.values()) > self.budget:
                self.values = {n: self.values[n] for n in wanted if n in self.values}
            known = {**self.feeds, **self.values}
        return {n: known[n] for n in wanted}

    def forget(self, produced_from: Callable[[str], bool]) -> None:
        """Drop the kept tensors for which ``produced_from(name)`` is true."""
        self.values = {k: v for k, v in self.values.items() if not produced_from(k)}


class Cuts:
    """Activations of a changing model on a fixed set of samples, kept at cuts, so that a
    variant of the model that differs only from some node on can be run from there.

    ``update(model, changed)`` replaces the model by one whose nodes before position
    ``changed`` are the same; tensors produced from there on are forgotten.
    """

    def __init__(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], providers: list[str],
                 budget_bytes: int):
        self.feeds, self.providers = feeds, providers
        self.kept = KeptActivations(feeds, budget_bytes, lambda p: live_tensors(self.model, p), self._compute)
        self.update(model, 0)

    def update(self, model: onnx.ModelProto, changed: int) -> None:
        self.model = model
        self.producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
        self.kept.forget(lambda name: self.producer.get(name, -1) >= changed)

    def _compute(self, start: int, names: tuple[str, ...], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if start:
            model = probe_model(self.model, list(names), inputs)
        else:
            inputs, model = self.feeds, probe_model(self.model, list(names))
        return run_all(session(model, self.providers), inputs)

    def run(self, variant: onnx.ModelProto, position: int, outputs: list[str]) -> list[np.ndarray]:
        """``outputs`` of ``variant``, a model equal to the current one before node ``position``."""
        position = position if cuttable(variant) else 0
        inputs = self.kept.at(position) if position else None
        model = probe_model(variant, outputs, inputs)
        values = run_all(session(model, self.providers), self.feeds if inputs is None else inputs)
        return [values[n] for n in outputs]
