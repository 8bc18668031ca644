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
