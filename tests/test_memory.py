"""Memory handed back between stages: the collector runs, and the C heap is trimmed where glibc can."""

import gc
import weakref

from onnxprune import memory


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the collector frees it


def test_release_collects_cycles_and_trims_where_the_c_library_can(monkeypatch):
    trimmed = []
    monkeypatch.setattr(memory, "_trim", lambda: lambda pad: trimmed.append(pad))
    gc.disable()
    try:
        ref = weakref.ref(Node())
        memory.release(collect=False)
        assert ref() is not None and trimmed == [0]
        memory.release()
        assert ref() is None and trimmed == [0, 0]
    finally:
        gc.enable()


def test_release_runs_without_a_trimming_c_library(monkeypatch):
    monkeypatch.setattr(memory, "_trim", lambda: None)
    memory.release()


def test_the_real_trim_is_found_or_absent_without_error():
    trim = memory._trim()
    assert trim is None or callable(trim)
    memory.release(collect=False)


def test_a_cpu_session_holds_no_copy_of_its_serialised_model():
    """onnxruntime's Python session keeps the bytes it was made from (to rebuild itself on its
    fallback providers): the model's size again for as long as it lives. A CPU session lets them go
    and still runs; one whose providers could fall back keeps them."""
    import numpy as np
    from builders import FACTORIES, random_feeds, run

    from onnxprune.graph import runtime
    model = FACTORIES["conv_chain"]()
    made = runtime.session(model)
    assert made._model_bytes is None
    feeds = random_feeds(model, batch=2)
    got = runtime.run_all(made, feeds)[model.graph.output[0].name]
    np.testing.assert_allclose(got, run(model, feeds)[0], rtol=1e-5, atol=1e-6)

    class Session:  # a CUDA session, as far as _unheld can tell
        _model_bytes = b"model"
    assert runtime._unheld(Session(), ["CUDAExecutionProvider", "CPUExecutionProvider"])._model_bytes == b"model"
