"""Work spread over the cores: independent eliminations one per core, each on one BLAS thread.

REAP's elimination is hundreds of small and medium products per layer (a K-column block
against the layer's p x p inverse Gram). Threaded BLAS pays a synchronisation for each, and
numpy and scipy each bring their own OpenBLAS, whose idle threads spin for a while after a
call: on 2 cores, one numpy thread, one scipy thread and the caller fight over them. Measured
(tools/bench_reap_threads.py, alone on 2 cores, medians of 3): one 2,305-column elimination took
1.97 s on one BLAS thread and 2.89 s on two (11.8 s in another round: the spinning is erratic);
two of them 6.05 s in turn on two threads, 3.90 s in turn on one, 2.80 s side by side. So
independent eliminations (PRO's removal orders of different groups) run side by side, one per
core, each on one BLAS thread (numpy releases the GIL inside its products), and the sequential
pass's eliminations and PRO's search (its refits) on one thread. Large products (the statistics' Gram matrices) keep every
thread: there threading pays (1.8x on 2 cores for a 50,000 x 2,305 Gram).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from threadpoolctl import threadpool_limits

T = TypeVar("T")
R = TypeVar("R")


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def single_blas() -> Iterator[None]:
    """BLAS and LAPACK on one thread inside (for every thread of the process: the limit is global)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def each(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
         memory: Callable[[T], int] | None = None, budget: int = 0) -> Iterator[R]:
    """fn(item) for every item, in order, ``workers`` (default: the cores) at a time on one BLAS
    thread each. With ``memory`` (the bytes a call holds, about), a call starts beside others only
    while theirs and its own fit in ``budget`` bytes (alone, any call starts): the first waiting
    item that fits goes next. Results come back in the items' order as they finish; an exception
    in fn is raised here."""
    items = list(items)
    workers = min(workers or cores(), len(items))
    with single_blas():
        if workers <= 1:
            yield from map(fn, items)
        else:
            needs = [0] * len(items) if memory is None else [memory(item) for item in items]
            yield from _packed(fn, items, workers, needs, budget)


def _packed(fn: Callable[[T], R], items: list[T], workers: int, needs: list[int], budget: int) -> Iterator[R]:
    """``each`` on threads: each worker takes the first waiting item that fits beside the running
    ones (every item of need 0 fits); the caller gets the results in order."""
    state = threading.Condition()
    waiting = list(range(len(items)))
    done: dict[int, tuple[bool, object]] = {}
    held, running = [0], [0]  # bytes and calls running

    def fits(i: int) -> bool:
        return running[0] == 0 or held[0] + needs[i] <= budget

    def work() -> None:
        while True:
            with state:
                state.wait_for(lambda: not waiting or any(fits(i) for i in waiting))
                if not waiting:
                    return
                i = next(i for i in waiting if fits(i))
                waiting.remove(i)
                held[0] += needs[i]
                running[0] += 1
            try:
                out: tuple[bool, object] = (True, fn(items[i]))
            except BaseException as exc:  # handed to the caller, raised there
                out = (False, exc)
            with state:
                held[0] -= needs[i]
                running[0] -= 1
                done[i] = out
                state.notify_all()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    try:
        for i in range(len(items)):
            with state:
                state.wait_for(lambda: i in done)
                ok, value = done.pop(i)
            if not ok:
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
    finally:
        with state:
            waiting.clear()  # after a failure or an early stop: nothing more starts
            state.notify_all()
        for t in threads:
            t.join()
