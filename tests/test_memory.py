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
