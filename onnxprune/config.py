"""Typed configuration of a pruning run; the CLI's choices come from here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from . import methods
from .errors import OnnxPruneError
from .graph.runtime import Device, check_threads

DEFAULT_ROUND_TO = 8
DEFAULT_METHOD = "l1"  # without calibration data (and the library's PruneConfig default)
DATA_METHOD = "reap"  # the CLI's method when --calib is given without --method
# Targets PRO can aim at (PruneConfig fields). With calibration data and one of them, PRO is on
# unless --no-pro: a further target joins the rule by its name here.
PRO_TARGETS = ("keep_flops", "keep_params", "keep_latency")

class _Named(str, enum.Enum):
    """A registered channel-selection method (onnxprune.methods), by name."""

    @property
    def needs_data(self) -> bool:
        return methods.get(self.value).needs_data


# The registered selection methods as an enum (Method.L1, Method.REAP, ...): values are the names.
Method = _Named("Method", {name.upper(): name for name in methods.names()})


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how far.

    Exactly one target is set: ``ratio`` (fraction of channels removed from every prunable
    group, 0 <= ratio < 1), or the fraction of the original's MACs (``keep_flops``),
    parameters (``keep_params``) or measured onnxruntime latency (``keep_latency``) to keep
    (0 < F <= 1). Kept channel counts are multiples of ``round_to`` (onnxruntime's fast
    CPU convolutions want multiples of 8 or 16). Latency is measured with ``threads``
    intra-op threads (0: onnxruntime's choice) at batch ``latency_batch``, or read from a
    ``latency_table`` made by ``onnxprune profile``.
    """

    method: Method = Method(DEFAULT_METHOD)
    ratio: float | None = None
    keep_flops: float | None = None
    round_to: int = DEFAULT_ROUND_TO
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    srn: bool = False  # serialise residual blocks first (targets stay relative to the original)
    keep_params: float | None = None
    pro: bool = False  # per-group widths from the final-output error (needs calibration data)
    pro_samples: int = 0  # 0: as many as one pass of PASS_MACS allows (widths/pro.py sample_count)
    exclude: tuple[str, ...] = ()  # glob patterns: groups produced by matching nodes are left alone
    keep_latency: float | None = None
    latency_batch: int = 1
    threads: int = 0
    latency_table: str | None = None  # a table made by `onnxprune profile` (elsewhere); None: measure here
    device: Device = Device.AUTO  # where latency is measured (calibration has its own providers)
    pro_pooled: bool = False  # PRO measures a per-token output mean-pooled over real tokens (widths/pro.py)

    def __post_init__(self):
        targets = [t for t in (self.ratio, self.keep_flops, self.keep_params, self.keep_latency) if t is not None]
        if len(targets) != 1:
            raise OnnxPruneError("give exactly one of --ratio, --keep-flops, --keep-params and --keep-latency")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise OnnxPruneError(f"--ratio {self.ratio}: must be at least 0 and below 1")
        for name, value in (("--keep-flops", self.keep_flops), ("--keep-params", self.keep_params),
                            ("--keep-latency", self.keep_latency)):
            if value is not None and not 0.0 < value <= 1.0:
                raise OnnxPruneError(f"{name} {value}: must be above 0 and at most 1")
        if self.pro and self.ratio is not None:
            raise OnnxPruneError("--pro chooses the ratios itself: give --keep-flops, --keep-params or --keep-latency, "
                                 "not --ratio")
        if self.keep_latency is None and self.latency_table is not None:
            raise OnnxPruneError("--latency-table is for --keep-latency")
        if self.keep_latency is not None and self.srn:
            raise OnnxPruneError("--keep-latency with --srn is not supported yet: prune the serial model "
                                 "(`onnxprune srn`) with --keep-latency instead")
        if self.latency_batch < 1:
            raise OnnxPruneError(f"--latency-batch {self.latency_batch}: must be a positive integer")
        check_threads(self.threads)
        if self.pro_samples < 0:
            raise OnnxPruneError(f"--pro-samples {self.pro_samples}: must be a positive integer, or 0 for automatic")
        if self.pro_pooled and not self.pro:
            raise OnnxPruneError("--pro-pooled says which output error PRO measures: it needs PRO (not --no-pro)")
        if self.round_to < 1:
            raise OnnxPruneError(f"--round-to {self.round_to}: must be a positive integer")
        object.__setattr__(self, "method", Method(self.method))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "device", Device(self.device))

    @property
    def selection(self) -> methods.SelectionMethod:
        """The registered method that ``method`` names."""
        return methods.get(self.method.value)


def default_method(has_data: bool) -> str:
    """The method when none is named: reap with calibration data, l1 (no data) without."""
    return DATA_METHOD if has_data else DEFAULT_METHOD


def pro_by_default(has_data: bool, **targets: float | None) -> bool:
    """Whether PRO is on when neither --pro nor --no-pro is given: with calibration data and a
    target PRO can aim at (``PRO_TARGETS``, given as keyword arguments by field name)."""
    return has_data and any(targets.get(name) is not None for name in PRO_TARGETS)

