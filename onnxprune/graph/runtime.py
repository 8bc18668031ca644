"""The one place that makes onnxruntime sessions: options, execution providers, models of any size."""

from __future__ import annotations

import enum
import functools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state

from ..errors import OnnxPruneError
from . import io

ort.set_default_logger_severity(4)  # its notes and error lines are not for our users: its failures become `error:` lines

CPU = ("CPUExecutionProvider",)
# what a session's creation or run raises when onnxruntime fails: its own types (none derives from a
# Python one) and, for what does not fit in memory (a batch of 100,000), MemoryError
RUNTIME_ERRORS = (*(t for t in vars(onnxruntime_pybind11_state).values()
                    if isinstance(t, type) and issubclass(t, Exception)), MemoryError)
OUTSIDE_BYTES = 1 << 20  # in a model over 2 GB, initializers over this stay outside the serialised proto


class Device(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def session(model: onnx.ModelProto, providers: list[str] | tuple[str, ...] | None = None, *, optimize: bool = True,
            threads: int = 0, log_level: int = 4, profile: str | None = None, arena: bool = True,
            ) -> ort.InferenceSession:
    """An onnxruntime session of ``model`` (of any size) on ``providers`` (CPU by default).

    ``optimize``: all graph optimisations (fusions, layouts) or none, which keeps every
    intermediate exact. ``threads``: intra-op threads (0: onnxruntime's choice), one inter-op.
    Idle threads never spin (onnxruntime's default is to busy-wait for the next run):
    calibration's short runs alternate with numpy work that needs the cores, and timings of
    several sessions with spinning pools on a shared machine are bimodal (docs/LATENCY.md),
    while without spinning they are stable and rank models alike. ``profile``: a file prefix for
    onnxruntime's profiler (each kernel's time; ``end_profiling`` writes the file). ``arena``:
    onnxruntime's CPU memory arena, which keeps the largest run's memory until the session goes;
    without it a run's tensors are freed as it ends: calibration runs hand over a gigabyte of
    tensors each, and the arena held as much again beside them (docs/PERFORMANCE.md)."""
    check_threads(threads)
    options = ort.SessionOptions()
    options.log_severity_level = log_level
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = arena
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return _any_size(model, options, list(providers or CPU))


def loaded(model: onnx.ModelProto, what: str, providers: list[str] | tuple[str, ...] | None = None,
           **options) -> ort.InferenceSession:
    """``session``, with onnxruntime's refusal of ``model`` (an op it does not have, a type it
    cannot run) as an error naming ``what``: "onnxruntime cannot load the reference model: ..."."""
    try:
        return session(model, providers, **options)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OnnxPruneError(f"onnxruntime cannot load {what}: {runtime_reason(exc)}") from None


def check_threads(threads: int) -> None:
    """``threads`` (--threads) must be 0 (onnxruntime's choice) up to the machine's cores: more only
    compete for them, and onnxruntime makes every thread asked for (100,000 grew its memory
    without bound, deaf to Ctrl-C)."""
    cores = os.cpu_count() or 1
    if not 0 <= threads <= cores:
        raise OnnxPruneError(f"--threads {threads}: must be 0 (onnxruntime's choice) to {cores}, this machine's cores")


@contextmanager
def failing(message: str) -> Iterator[None]:
    """onnxruntime's failures inside the block (an input it rejects, a kernel it lacks, memory it
    cannot get) as one error: "{message}: {its reason}", the message saying what failed on which
    inputs ("onnxruntime failed while timing at batch 2 (input 'x' float32 [2, 3, 8, 8])")."""
    try:
        yield
    except RUNTIME_ERRORS as exc:
        raise OnnxPruneError(f"{message}: {runtime_reason(exc)}") from None


def describe_feeds(feeds: dict[str, np.ndarray]) -> str:
    """"input 'x' float32 [2, 3, 8, 8], input 'ids' int64 [2, 16] in [0, 99]"."""
    def one(name: str, value: np.ndarray) -> str:
        values = f" in [{value.min()}, {value.max()}]" if value.size and np.issubdtype(value.dtype, np.integer) else ""
        return f"input '{name}' {value.dtype} {list(value.shape)}{values}"
    return ", ".join(one(name, value) for name, value in feeds.items())


def runtime_reason(exc: BaseException) -> str:
    """onnxruntime's message without the status code and the source location and C++ signature it
    starts with ("[ONNXRuntimeError] : 1 : FAIL : ... model.cc:256 onnxruntime::Model::Model(...)
    Unsupported model IR version: 14, ...")."""
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", io.first_line(exc))  # its status code
    return line.rsplit(") ", 1)[-1] if re.search(r"\.(cc|h):\d+ ", line) else line


def _any_size(model: onnx.ModelProto, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    """A session however large the model: protobuf cannot serialise 2 GiB, so a model with
    more weights than that is passed with its initializers over 1 MiB as OrtValues
    (SessionOptions.add_external_initializers); the serialised model keeps their entries,
    marked external. ``model`` is changed only while it is serialised, and given back as it was."""
    if io.weight_bytes(model) <= io.EXTERNAL_DATA_BYTES:
        return _unheld(ort.InferenceSession(model.SerializeToString(), options, providers=providers), providers)
    large = [t for t in model.graph.initializer if t.ByteSize() > OUTSIDE_BYTES]
    arrays = [numpy_helper.to_array(t) for t in large]
    try:
        for t in large:
            stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims,
                                    data_location=onnx.TensorProto.EXTERNAL)
            stub.external_data.add(key="location", value="onnxprune-in-memory")
            t.CopyFrom(stub)
        serialised = model.SerializeToString()
    finally:
        for t, array in zip(large, arrays):
            t.CopyFrom(numpy_helper.from_array(array, t.name))
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
    options.add_external_initializers([t.name for t in large], values)
    made = ort.InferenceSession(serialised, options, providers=providers)
    made.onnxprune_weights = values  # onnxruntime reads them in place: they live as long as the session
    return made


def _unheld(made: ort.InferenceSession, providers: list[str]) -> ort.InferenceSession:
    """``made`` without the serialised model that onnxruntime's Python session holds for as long as
    it lives (to build itself again on its fallback providers after a failed run): a CPU session's
    fallback is the CPU itself, so it is never needed there, and the bytes are the model's size
    again (100 MB a session for ResNet-50, several sessions at a time). A CUDA session keeps them."""
    if set(providers) <= set(CPU) and getattr(made, "_model_bytes", None) is not None:
        made.disable_fallback()
        made._model_bytes = None
    return made


def providers(device: Device) -> list[str]:
    """onnxruntime execution providers for ``device`` (CUDA where onnxruntime-gpu finds a GPU)."""
    if device is Device.CPU:
        return list(CPU)
    if cuda_works():
        return ["CUDAExecutionProvider", *CPU]
    if device is Device.CUDA:
        raise OnnxPruneError("--device cuda: onnxruntime cannot use CUDA here (it needs onnxruntime-gpu, "
                             "a GPU and the CUDA libraries)")
    return list(CPU)


@functools.cache
def cuda_works() -> bool:
    """Whether a session really gets the CUDA provider: onnxruntime-gpu lists it even
    where the CUDA libraries or the GPU are missing, then falls back with loud errors."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    try:
        probe = session(model, ("CUDAExecutionProvider", *CPU))
        return "CUDAExecutionProvider" in probe.get_providers()
    except Exception:  # any failure to start CUDA means: not here
        return False


def run_all(run: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of a session by name, fed the ``feeds`` that are its inputs (extra ones are ignored)."""
    names = [o.name for o in run.get_outputs()]
    inputs = {i.name for i in run.get_inputs()}
    return dict(zip(names, run.run(names, {k: v for k, v in feeds.items() if k in inputs})))
