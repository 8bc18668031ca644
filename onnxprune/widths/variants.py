"""PRO's candidates on its samples: the one path of the calibration data through PRO's search.

``first_samples`` takes the samples from the calibration data once; ``KeptActivations``
keeps their activations at cuts of the graph, so that a candidate runs only from where it
differs; ``Variants`` runs a data method's candidates, weight variants of one model, and
``Cuts`` runs l1's, pruned models.

PRO measures the final output of hundreds of candidates that differ from the current
model only in the weights of one group's consumers. Removed channels need not be cut
out for that: the data methods' reconstructed weights keep the original shapes with
zero rows for removed channels (methods/sequential.py), and a consumer whose rows for a
channel are zero ignores it, so a candidate computes the same function as any model
that still has those channels (the original, or one pruned to fewer removals) with its
weights written in. Here every consumer's weight and bias become graph inputs: the model
of the segment after each cut is cut out once, and a candidate only binds its weights
into it as initializers (milliseconds; no graph is rebuilt). The activations before each
cut are kept for the current weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from ..analysis.consumers import Consumer
from ..calibration.statistics import Calibration
from ..graph.convert import to_graph, to_model, unique_name
from ..graph.probe import cuttable, live_tensors, probe_model
from ..graph.runtime import run_all, session
from ..methods.weights import fold_alpha, param_slots, theta_params
from .recent import recent

Params = dict[str, np.ndarray]  # graph input name -> value


def weights_as_inputs(model: onnx.ModelProto, consumers: list[Consumer],
                      ) -> tuple[onnx.ModelProto, dict[str, tuple[str, str, bool]], Params]:
    """``model`` with each consumer's weight and bias read from new graph inputs.

    Returns the model; per consumer node, the names of its weight and bias inputs and
    whether its weight is transposed (Gemm transB); and the inputs' original values. A
    Gemm's alpha is folded into its weight, as ``write_theta`` does.
    """
    graph = to_graph(model)
    nodes = {n.name: n for n in graph.nodes}
    slots: dict[str, tuple[str, str, bool]] = {}
    values: Params = {}
    for c in {c.node: c for c in consumers}.values():  # a Concat's consumer serves several groups
        node = nodes[c.node]
        names = []
        for (holder, index), role in zip(param_slots(node, c), ("weight", "bias")):
            value = np.asarray(holder.inputs[index].values)
            if c.op == "Gemm" and role == "weight":
                value = fold_alpha(node, value)
            name = unique_name(graph, f"{c.node}/{role}")
            holder.inputs[index] = gs.Variable(name, value.dtype, value.shape)  # other readers keep the constant
            graph.inputs.append(holder.inputs[index])
            values[name] = value
            names.append(name)
        slots[c.node] = (names[0], names[1], bool(node.attrs.get("transB", 0)))
    return to_model(graph, model), slots, values


SEGMENTS = 8  # cut segments a Variants keeps


class Variants:
    """The outputs of weight variants of ``model`` on fixed samples (each session runs once: no
    memory arena, which would only hold a run's memory until the session goes).

    ``run(changed)`` gives the outputs with some consumers' parameters replaced, running
    only from the first node that reads them; ``commit(changed)`` makes them current and
    forgets the activations they invalidate. Above ``budget_bytes`` of kept activations,
    only those at the latest cut asked for are kept.
    """

    def __init__(self, model: onnx.ModelProto, consumers: list[Consumer], feeds: dict[str, np.ndarray],
                 outputs: list[str], providers: list[str], budget_bytes: int):
        self.model, self.slots, self.current = weights_as_inputs(model, consumers)
        self.original = dict(self.current)
        self.outputs, self.providers = outputs, providers
        nodes = self.model.graph.node
        self.producer = {o: i for i, n in enumerate(nodes) for o in n.output}
        self.reader = {}  # parameter input -> position of its first reader
        for i, n in reversed(list(enumerate(nodes))):
            self.reader.update({name: i for name in n.input if name in self.current})
        self._live: dict[int, list[str]] = {}
        self.kept = KeptActivations(feeds, budget_bytes)  # activations of the current weights
        # the latest SEGMENTS cut segments (parameters still inputs): each holds its own copy of the
        # weights after its cut, and ResNet-50's 37 cuts held hundreds of MB of them
        self._segments: dict[tuple[int, tuple[str, ...]], onnx.ModelProto] = {}

    def params(self, c: Consumer, theta: np.ndarray, outputs: np.ndarray) -> Params:
        """The inputs that give consumer ``c`` the weights ``theta`` for its ``outputs`` columns."""
        weight, bias, trans_b = self.slots[c.node]
        w, b = theta_params(c, theta, outputs, self.original[weight], self.original[bias], trans_b)
        return {weight: w, bias: b}

    def run(self, changed: Params) -> list[np.ndarray]:
        """The outputs with ``changed`` parameters, the others as committed (nothing changed:
        the whole model runs)."""
        start = self._cut(changed)
        values = self._run(start, tuple(self.outputs), self.kept.at(start, self.live, self._run_current),
                           {**self.current, **changed})
        return [values[n] for n in self.outputs]

    def commit(self, changed: Params) -> None:
        start = self._cut(changed)
        self.current.update(changed)
        self.kept.forget(lambda name: self.producer[name] >= start)

    def _cut(self, changed: Params) -> int:
        return min((self.reader[name] for name in changed if name in self.reader), default=0)

    def live(self, position: int) -> list[str]:
        """Activations crossing the cut before node ``position`` (parameters are not activations)."""
        if position not in self._live:
            self._live[position] = [n for n in live_tensors(self.model, position) if n not in self.current]
        return self._live[position]

    def _run_current(self, start: int, outputs: tuple[str, ...], inputs: dict[str, np.ndarray],
                     ) -> dict[str, np.ndarray]:
        return self._run(start, outputs, inputs, self.current)

    def _run(self, start: int, outputs: tuple[str, ...], inputs: dict[str, np.ndarray], params: Params,
             ) -> dict[str, np.ndarray]:
        segment = recent(self._segments, (start, outputs),
                         lambda: probe_model(self.model, list(outputs), {**inputs, **params}), SEGMENTS)
        return run_all(session(bind(segment, params), self.providers, arena=False), inputs)


def bind(model: onnx.ModelProto, params: Params) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs named in ``params`` are initializers with those values:
    onnxruntime pre-packs constant weights (a weight fed as an input runs 2-3x slower)."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    graph = bound.graph
    names = {i.name for i in graph.input}
    if bound.ir_version > 3:  # IR 3 lists initializers among the inputs
        kept = [i for i in graph.input if i.name not in params]
        del graph.input[:]
        graph.input.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in params.items() if n in names)
    return bound


class KeptActivations:
    """Activations of a model on fixed samples, kept at the cuts asked for.

    ``at(p, live, compute)`` gives the live tensors before node ``p`` (``live(p)``), computing
    the missing ones from the latest cut whose tensors are all known (the inputs at worst) with
    ``compute(start, names, inputs)``. Above the byte budget only the latest cut asked for
    is kept. The owner forgets what a change of the model invalidates (``forget``). The owner's
    functions come with each call, not kept: a kept one would tie the owner, its model, session
    and activations in a reference cycle that outlives it until the garbage collector runs.
    """

    def __init__(self, feeds: dict[str, np.ndarray], budget_bytes: int):
        self.feeds, self.budget = feeds, budget_bytes
        self.values: dict[str, np.ndarray] = {}

    def at(self, position: int, live: Callable[[int], list[str]],
           compute: Callable[[int, tuple[str, ...], dict[str, np.ndarray]], dict[str, np.ndarray]],
           ) -> dict[str, np.ndarray]:
        known = {**self.feeds, **self.values}
        wanted = live(position)
        missing = tuple(n for n in wanted if n not in known)
        if missing:
            start = max((p for p in range(position, 0, -1) if all(n in known for n in live(p))), default=0)
            self.values.update(compute(start, missing, {n: known[n] for n in live(start)}))
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
        self.kept = KeptActivations(feeds, budget_bytes)
        self.update(model, 0)

    def update(self, model: onnx.ModelProto, changed: int) -> None:
        self.model = model
        self.producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
        self.kept.forget(lambda name: self.producer.get(name, -1) >= changed)

    def _live(self, position: int) -> list[str]:
        return live_tensors(self.model, position)

    def _compute(self, start: int, names: tuple[str, ...], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if start:
            model = probe_model(self.model, list(names), inputs)
        else:
            inputs, model = self.feeds, probe_model(self.model, list(names))
        return run_all(session(model, self.providers, arena=False), inputs)

    def run(self, variant: onnx.ModelProto, position: int, outputs: list[str]) -> list[np.ndarray]:
        """``outputs`` of ``variant``, a model equal to the current one before node ``position``."""
        position = position if cuttable(variant) else 0
        inputs = self.kept.at(position, self._live, self._compute) if position else None
        model = probe_model(variant, outputs, inputs)
        values = run_all(session(model, self.providers, arena=False), self.feeds if inputs is None else inputs)
        return [values[n] for n in outputs]


def first_samples(calib: Calibration, samples: int) -> dict[str, np.ndarray]:
    """The first ``samples`` calibration samples (all there are, if fewer), one array per input;
    only the batches they need are drawn."""
    parts: dict[str, list[np.ndarray]] = {}
    have = 0
    for feeds in calib.batches():
        for k, v in feeds.items():
            parts.setdefault(k, []).append(v)
        have += len(next(iter(feeds.values())))
        if have >= samples:
            break
    return {k: np.concatenate(v)[:samples] for k, v in parts.items()}
