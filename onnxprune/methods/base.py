"""The interface every channel-selection method implements, and the registry that finds methods by name.

A method answers two questions for a group of channels: in which order are they removed,
and what do the layers that read them (the consumers) become. ``l1`` ranks channels by
filter weights and leaves the consumers as they are; the data methods (``reap``,
``thinet``, ``nu``) rank them from calibration statistics and rewrite the consumers.
Adding a method is one new module that subclasses ``SelectionMethod`` (or ``DataMethod``)
and calls ``register``: the pipeline, PRO and the CLI's choices and help come from here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Iterable, Protocol, Sequence

import numpy as np
import onnx

from ..analysis.consumers import reconstructable
from ..analysis.groups import Analysis
from ..calibration.statistics import Calibration
from ..errors import OnnxPruneError
from ..progress import Progress
from .least_squares import ConsumerFit, Parts, Problem, refit
from .scores import Keep  # group id -> the kept channels' indices, sorted
from .sequential import prune_sequential



@dataclass(frozen=True)
class Pruned:
    """A method's result: the pruned model, the channels kept per group, and per reconstructed
    consumer what the least squares did (``sequential.LayerNote``; empty for l1)."""

    model: onnx.ModelProto
    keep: Keep
    notes: tuple = ()


class SelectionMethod(ABC):
    """A way to choose which channels of a group go (and to rewrite what reads them)."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --help
    needs_data: ClassVar[bool] = False
    reconstructs: ClassVar[bool] = False  # rewrites the consumers' weights (PRO measures weight variants)

    def prunable(self, analysis: Analysis) -> tuple[set[int] | None, dict[int, str]]:
        """The groups this method can prune (None: every prunable group) and why it leaves
        the other prunable groups alone."""
        return None, {}

    @abstractmethod
    def prune(self, normalized: onnx.ModelProto, analysis: Analysis, counts: dict[int, int],
              calibration: Calibration | None, progress: Progress) -> Pruned:
        """``normalized`` with each group of ``counts`` cut to that many channels."""

    def orders(self, analysis: Analysis, groups: Iterable[int]) -> dict[int, np.ndarray]:
        """Each group's full removal order from the model alone (PRO's candidates). A method that
        reconstructs orders from calibration statistics instead (DataMethod.plan)."""
        raise NotImplementedError(f"method {self.name} has no data-free removal order")


class Plan(Protocol):
    """A data method's selection for one group: its removal order (and what rebuilding needs)."""

    order: np.ndarray


class DataMethod(SelectionMethod):
    """A method that chooses from calibration statistics and rebuilds the consumers: it prunes
    group after group (``sequential.prune_sequential``), each from the model pruned so far."""

    needs_data = True
    reconstructs = True

    def prunable(self, analysis: Analysis) -> tuple[set[int] | None, dict[int, str]]:
        plans, skipped = reconstructable(analysis)
        return set(plans), skipped

    @abstractmethod
    def plan(self, problems: Sequence[Problem], n: int, target: int = 1, parts: Parts | None = None) -> Plan:
        """The removal order of the n channels shared by ``problems`` (one per consumer), down to
        ``target`` kept; with ``parts``, only as many from each part as it gives up."""

    def rebuild(self, plan: Plan, consumer: ConsumerFit, kept: np.ndarray, n: int,
                alpha: float | None = None) -> tuple[np.ndarray, float]:
        """The consumer's new weights (zero rows for the removed channels) and the ridge alpha used
        (``alpha`` if given, else chosen on the holdout) when the group keeps ``kept`` of its n
        channels: by default ridge least squares on the kept channels and every other channel the
        consumer reads."""
        keep = np.concatenate([kept, np.arange(n, consumer.channels)])
        return refit(consumer.fit, consumer.holdout, keep, consumer.taps, consumer.theta0, consumer.copies, alpha)

    def prune(self, normalized: onnx.ModelProto, analysis: Analysis, counts: dict[int, int],
              calibration: Calibration | None, progress: Progress) -> Pruned:
        if calibration is None:
            raise OnnxPruneError(f"--method {self.name} needs calibration data: give --calib DATA")
        model, keep, notes = prune_sequential(normalized, analysis, counts, self, calibration, progress)
        return Pruned(model, keep, tuple(notes))


_REGISTRY: dict[str, SelectionMethod] = {}


def register(method: type[SelectionMethod]) -> type[SelectionMethod]:
    """Class decorator: make the method available under its ``name``."""
    if method.name in _REGISTRY:
        raise ValueError(f"a selection method named {method.name!r} is registered already")
    _REGISTRY[method.name] = method()
    return method


def get(name: str) -> SelectionMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OnnxPruneError(f"--method {name}: no such method (choose from {', '.join(_REGISTRY)})") from None


def names() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def all_methods() -> list[SelectionMethod]:
    return list(_REGISTRY.values())
