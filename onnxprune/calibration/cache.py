"""Activations kept at cuts of the graph, so that a changed model runs only from where it changed.

Sequential pruning runs a model up to a few tensors once per group, and between two
runs the model changes only from the group just pruned onwards. Running from the
input every time costs O(L^2) layers over a network of L layers. A ``SegmentRunner``
keeps, for every calibration batch, the tensors that cross a cut (produced before a
given node, read at or after it), so the next run starts at that cut: O(L) in all.

The caller promises that the nodes before the cut it asks to keep are the same, with
the same weights, in the next model it runs. The runner checks that the node NAMES
before the cut agree and otherwise starts from the input again.

Memory: the kept tensors stay in memory up to a byte budget; beyond it they go to files
in a temporary folder (``spill``), read back memory-mapped: 256 images at 640 px of a
YOLOv8n hold a gigabyte or more at a cut, where a rerun from the input costs a forward
pass per group. Each file is unlinked as soon as it is mapped, so its space returns when
its part has been used, however the run ends. Without a folder (or where the disk
refuses), the cache gives way and the next run starts from the input.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from itertools import zip_longest

import numpy as np
import onnx

from ..graph.probe import cuttable, live_tensors, probe_model
from ..graph.runtime import run_all, session
from .statistics import Part

SPILL_BYTES = 1 << 16  # smaller tensors stay in memory
Parts = Callable[[], Iterable[tuple[Part, dict[str, np.ndarray]]]]


class SegmentRunner:
    """Runs models over the calibration data, resuming from the activations kept last time.
    ``parts()`` yields the data as (``Part``, feeds): whole batches or slices (statistics.slices)."""

    def __init__(self, parts: Parts, providers: list[str], budget_bytes: int, spill: str | None = None):
        self.parts = parts
        self.providers = providers
        self.budget = budget_bytes
        self.spill = spill if os.name == "posix" else None  # a mapped file can be unlinked on POSIX only
        self.cut: int = 0  # position of the cut the cache holds (0: nothing kept)
        self.before: frozenset[str] = frozenset()  # names of the nodes before the cut
        self.cache: list[tuple[Part, dict[str, np.ndarray]]] = []  # per part: the live tensors at the cut

    def run(self, model: onnx.ModelProto, wanted: list[str], keep_before: str | None = None,
            ) -> Iterator[tuple[Part, dict[str, np.ndarray]]]:
        """Per part of the data, the ``wanted`` tensors of ``model``. With ``keep_before``
        (a node name), the live tensors before that node are kept for the next run."""
        names = [n.name for n in model.graph.node]
        position = {name: i for i, name in enumerate(names)}
        start = self.cut if self.cut and frozenset(names[:self.cut]) == self.before else 0
        producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
        cached = set(self.cache[0][1]) if start and self.cache else set()
        if any(name not in cached and producer.get(name, -1) < start for name in wanted):
            start, cached = 0, set()  # a wanted tensor lies before the cut
        save = position.get(keep_before, 0) if keep_before is not None and cuttable(model) else 0
        inputs = {i.name for i in model.graph.input}
        keep = live_tensors(model, save) if save >= max(start, 1) else []
        if keep:  # wanted graph inputs (the attention mask) stay with the cut: later runs need not start over
            keep += [n for n in wanted if n in inputs and n not in keep]
        if start:
            sources = _drain(self.cache)  # each kept part is freed once used: old and new cut never both whole
            self.cut, self.before = 0, frozenset()
            computed = [n for n in dict.fromkeys(wanted + keep) if n not in cached]
            segment = probe_model(model, computed, self.cache[0][1]) if computed else None
        else:
            sources = self.parts()
            computed = [n for n in dict.fromkeys(wanted + keep) if n not in inputs]
            segment = probe_model(model, computed) if computed else None
        run = session(segment, self.providers) if segment is not None else None
        kept, size = [], 0
        for part, feeds in sources:
            values = dict(feeds)
            if run is not None:
                values.update(run_all(run, feeds))
            if keep:
                live = {n: values[n] for n in keep}
                size += sum(v.nbytes for v in live.values())
                if size > self.budget:
                    live = _spilled(live, self.spill)
                if live is None:  # will not fit: free it now, the next run starts from the input
                    keep, kept = [], []
                else:
                    kept.append((part, live))
            yield part, {n: values[n] for n in wanted}
        if keep and kept:
            self.cut, self.before, self.cache = save, frozenset(names[:save]), kept
        else:
            self.cut, self.before, self.cache = 0, frozenset(), []


def _spilled(tensors: dict[str, np.ndarray], folder: str | None) -> dict[str, np.ndarray] | None:
    """``tensors`` written to files in ``folder`` and mapped back read-only, each file unlinked at once
    (its space returns with the mapping); None without a folder or where the disk refuses."""
    if folder is None:
        return None
    mapped = {}
    for name, value in tensors.items():
        if value.ndim == 0 or value.nbytes < SPILL_BYTES or value.dtype.hasobject:  # a map of a scalar is 1-D
            mapped[name] = value
            continue
        try:
            fd, path = tempfile.mkstemp(prefix="onnxprune-", suffix=".npy", dir=folder)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "wb") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)
            mapped[name] = np.load(path, mmap_mode="r")
        except OSError:  # a full disk
            return None
        finally:
            os.remove(path)
    return mapped


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
