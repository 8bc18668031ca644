"""parallel.py: results in order, errors raised, BLAS on one thread inside and restored after."""

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from onnxprune.parallel import each, single_blas


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_each_keeps_the_order():
    def square(x):
        np.linalg.inv(np.eye(50) * (x + 1))  # a BLAS call inside the worker
        return x * x

    assert list(each(square, range(20), workers=2)) == [x * x for x in range(20)]
    assert list(each(square, [])) == []


def test_each_runs_side_by_side():
    meet = threading.Barrier(2, timeout=10)  # broken unless two items run at once

    def wait(x):
        meet.wait()
        return x

    assert list(each(wait, range(2), workers=2)) == [0, 1]


def test_each_raises_the_workers_error():
    def fail(x):
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        list(each(fail, range(6), workers=2))


def test_blas_runs_on_one_thread_inside_and_as_before_after():
    before = blas_threads()
    with single_blas():
        assert blas_threads() == {1}
    assert blas_threads() == before

    def threads(_):
        return blas_threads()

    assert all(t == {1} for t in each(threads, range(4), workers=2))
    assert blas_threads() == before


def test_each_with_memory_never_runs_together_what_exceeds_the_budget():
    """Items of 6, 6, 1, 1, 1 units with a budget of 8: the two large ones never run at once, the
    small ones run beside a large one, the results come in order and a failure is raised."""
    needs = [6, 6, 1, 1, 1]
    lock, running, peak, pairs = threading.Lock(), {}, [0], []

    def work(i):
        with lock:
            running[i] = needs[i]
            peak[0] = max(peak[0], sum(running.values()))
            if len(running) > 1:
                pairs.append(frozenset(running))
        threading.Event().wait(0.05)
        with lock:
            del running[i]
        return i * 10

    got = list(each(work, range(5), workers=2, memory=needs.__getitem__, budget=8))
    assert got == [0, 10, 20, 30, 40]
    assert peak[0] <= 8 and frozenset({0, 1}) not in pairs and pairs  # side by side, within the budget

    def lonely(i):  # an item over the budget alone still runs, and alone
        with lock:
            running[i] = 1
            peak[0] = max(peak[0], len(running))
        threading.Event().wait(0.02)
        with lock:
            del running[i]
        return i

    peak[0] = 0
    assert list(each(lonely, range(3), workers=2, memory=lambda i: 9, budget=8)) == [0, 1, 2] and peak[0] == 1

    def fail(i):
        if i == 2:
            raise ValueError("two")
        return i

    with pytest.raises(ValueError, match="two"):
        list(each(fail, range(5), workers=2, memory=lambda i: 1, budget=8))
