"""Selections on problems whose channels own several K-blocks or none (repeated and partial reads),
and with quotas per part, checked against brute force."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune.methods.least_squares import Parts, columns, ridge_solve
from onnxprune.methods.nu import nu_apply, nu_plan
from onnxprune.methods.reap import reap_order, reap_steps
from onnxprune.methods.thinet import thinet_order
from oracles import reap_order_naive, thinet_order_naive
from test_selection import consumer, correlated, relative

FEW = settings(max_examples=6, deadline=None)
seeds = st.integers(0, 2**32 - 1)


def copies_problem(seed, n, ks, reads, extra=0, m=4):
    """Consumers of the n channels, consumer i reading channel c reads[i][c] times (0: not at all)
    and then ``extra`` other channels once; columns: each channel's copies in turn."""
    rng = np.random.default_rng(seed)
    problems, xs = [], []
    for k, r in zip(ks, reads):
        copies = np.concatenate([np.asarray(r, dtype=np.intp), np.ones(extra, dtype=np.intp)])
        width = int(copies.sum()) * k
        x = correlated(rng, 2 * width + 10, width, rank=max(1, width // 2))
        stats, theta0, _ = consumer(rng, x, m)
        problems.append((stats, k, theta0, copies))
        xs.append(x)
    return problems, xs


reads = st.lists(st.integers(0, 3), min_size=2, max_size=5).filter(any)  # a consumer reads some channel


@FEW
@given(seed=seeds, first=reads, alpha=st.sampled_from([0.0, 0.05]), extra=st.integers(0, 2))
@pytest.mark.parametrize("ks", [(1,), (4, 1)])
def test_fast_reap_equals_naive_with_repeated_and_partial_reads(ks, seed, first, alpha, extra):
    n = len(first)
    second = [max(1, r) - (i % 2) for i, r in enumerate(first)]  # another consumer, reading others
    problems, _ = copies_problem(seed, n, ks, [first, second][:len(ks)], extra)
    naive = reap_order_naive(problems, n, alpha)
    steps = [(c, e, [t.copy() for t in thetas]) for c, e, thetas in reap_steps(problems, n, alpha)]
    np.testing.assert_array_equal([c for c, _, _ in steps], naive.order)
    np.testing.assert_allclose([e for _, e, _ in steps], naive.errors, rtol=1e-7)
    for step, (_, _, thetas) in enumerate(steps, start=1):
        for (stats, k, theta0, copies), theta in zip(problems, thetas):
            keep = np.concatenate([np.setdiff1d(np.arange(n), naive.order[:step]), np.arange(n, n + extra)])
            assert relative(theta, ridge_solve(stats, keep, k, theta0, alpha, copies)) < 1e-7


@FEW
@given(seed=seeds, n=st.integers(3, 6), cut=st.integers(1, 5))
def test_fast_reap_with_part_quotas_equals_naive(seed, n, cut):
    """A Split read in two parts: the first part read once by both consumers, the second twice
    by the first and not at all by the second; each part gives up its quota."""
    cut = min(cut, n - 1)
    part = (np.arange(n) >= cut).astype(np.intp)
    problems, _ = copies_problem(seed, n, (1, 4), [1 + part, 1 - part])
    quota = Parts(part, np.array([cut - 1, n - cut - 1]))
    target = n - quota.removals.sum()
    naive = reap_order_naive(problems, n, 0.01, target=target, parts=quota)
    fast = reap_order(problems, n, 0.01, target=target, parts=quota)
    np.testing.assert_array_equal(fast.order, naive.order)
    np.testing.assert_allclose(fast.errors, naive.errors, rtol=1e-7)
    assert np.array_equal(np.bincount(part[fast.order], minlength=2), quota.removals)


@FEW
@given(seed=seeds, n=st.integers(2, 5), copies=st.integers(1, 3))
def test_uniform_copies_are_channels_of_copies_times_k_columns(seed, n, copies):
    """Every channel read r times (SPPF): the same as one read of r*K columns per channel."""
    k = 2
    problems, xs = copies_problem(seed, n, (k,), [[copies] * n])
    stats, _, theta0, r = problems[0]
    wide = [(stats, copies * k, theta0)]
    for select in (lambda p: reap_order(p, n, 0.01), lambda p: thinet_order(p, n)):
        np.testing.assert_array_equal(select(problems).order, select(wide).order)
    plan, wide_plan = nu_plan(problems, n), nu_plan(wide, n)
    np.testing.assert_array_equal(plan.order, wide_plan.order)
    np.testing.assert_array_equal(plan.stand_in, wide_plan.stand_in)
    np.testing.assert_allclose(nu_apply(theta0, plan, k, copies=r), nu_apply(theta0, wide_plan, copies * k),
                               rtol=1e-9, atol=1e-12)


@FEW
@given(seed=seeds, first=reads)
def test_thinet_matches_brute_force_with_copies(seed, first):
    n = len(first)
    problems, _ = copies_problem(seed, n, (4, 1), [first, [1] * n])
    order, errors = thinet_order_naive(problems, n)
    result = thinet_order(problems, n)
    np.testing.assert_array_equal(result.order, order)
    np.testing.assert_allclose(result.errors, errors, rtol=1e-9)


def test_copies_of_one_are_the_plain_problem():
    problems, _ = copies_problem(3, 5, (4, 1), [[1] * 5, [1] * 5], extra=2)
    plain = [p[:3] for p in problems]
    assert thinet_order_naive(plain, 5)[0] == thinet_order_naive(problems, 5)[0]
    np.testing.assert_array_equal(reap_order(problems, 5, 0.01).order, reap_order(plain, 5, 0.01).order)
    np.testing.assert_array_equal(nu_plan(problems, 5).order, nu_plan(plain, 5).order)


@FEW
@given(seed=seeds, n=st.integers(3, 6))
def test_nu_unifies_only_channels_read_alike(seed, n):
    """A channel read twice is never folded into one read once: their copies would not line up."""
    reads_ = [1 + (c % 2) for c in range(n)]
    problems, _ = copies_problem(seed, n, (2,), [reads_])
    plan = nu_plan(problems, n)
    for j, i in zip(plan.order, plan.stand_in):
        assert reads_[j] == reads_[i]
    assert len(plan.order) == n - 2  # one channel of each kind stays: no pair is left
    theta0 = problems[0][2]
    theta = nu_apply(theta0, plan, 2, copies=problems[0][3])
    for c in plan.order:
        assert not theta[columns([c], 2, problems[0][3])[:-1]].any()
