"""Weight variants of one model (PRO's candidates), each run from the first node it changes.

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

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from ..analysis.consumers import Consumer
from ..calibration.cache import KeptActivations, live_tensors
from ..graph.convert import to_graph, to_model, unique_name
from ..graph.probe import probe_model
from ..graph.runtime import run_all, session
from ..methods.weights import fold_alpha, param_slots, theta_params

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


class Variants:
    """The outputs of weight variants of ``model`` on fixed samples.

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
        self.kept = KeptActivations(feeds, budget_bytes, self.live,  # activations of the current weights
                                    lambda start, names, inputs: self._run(start, names, inputs, self.current))
        self._segments: dict[tuple[int, tuple[str, ...]], onnx.ModelProto] = {}  # parameters still inputs

    def params(self, c: Consumer, theta: np.ndarray, outputs: np.ndarray) -> Params:
        """The inputs that give consumer ``c`` the weights ``theta`` for its ``outputs`` columns."""
        weight, bias, trans_b = self.slots[c.node]
        w, b = theta_params(c, theta, outputs, self.original[weight], self.original[bias], trans_b)
        return {weight: w, bias: b}

    def run(self, changed: Params) -> list[np.ndarray]:
        """The outputs with ``changed`` parameters, the others as committed (nothing changed:
        the whole model runs)."""
        start = self._cut(changed)
        values = self._run(start, tuple(self.outputs), self.kept.at(start), {**self.current, **changed})
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

    def _run(self, start: int, outputs: tuple[str, ...], inputs: dict[str, np.ndarray], params: Params,
             ) -> dict[str, np.ndarray]:
        key = (start, outputs)
        if key not in self._segments:
            self._segments[key] = probe_model(self.model, list(outputs), {**inputs, **params})
        return run_all(session(bind(self._segments[key], params), self.providers), inputs)


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
