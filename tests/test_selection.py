"""The linear algebra of selection and reconstruction, checked against brute force on data."""

import numpy as np
import pytest
from builders import FACTORIES, NetBuilder
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from onnxprune import analyze, normalize
from onnxprune.calibration.layer_stats import LayerStats, stats_from_data
from onnxprune.methods.least_squares import (ALPHA_GRID, SELECTION_ALPHA, choose_alpha, columns, error, refit,
                                             ridge_solve)
from onnxprune.methods.nu import nu_apply, nu_plan
from onnxprune.methods.reap import reap_order, reap_steps
from onnxprune.methods.scores import l1_scores, select
from onnxprune.methods.thinet import thinet_order
from oracles import reap_order_naive, thinet_order_naive

SMALL = settings(max_examples=20, deadline=None)
FEW = settings(max_examples=5, deadline=None)
seeds = st.integers(0, 2**32 - 1)


def with_ones(x):
    return np.hstack([x, np.ones((len(x), 1))])


def correlated(rng, rows, cols, rank, noise=0.1):
    """Columns mixed from a few latent factors (X = Z A + noise), like real activations."""
    mixed = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols))
    return mixed + noise * rng.standard_normal((rows, cols))


def consumer(rng, x, m, noise=0.1):
    """Statistics, theta0 and Y for patches x: Y from true weights plus noise, theta0 near them."""
    true = rng.standard_normal((x.shape[1] + 1, m))
    y = with_ones(x) @ true + noise * rng.standard_normal((len(x), m))
    return stats_from_data(x, y), true + 0.3 * rng.standard_normal(true.shape), y


def problem(seed, n, ks, m=5):
    """Consumers of different K reading the same n channels, with about 2 rows per column."""
    rng = np.random.default_rng(seed)
    consumers, xs = [], []
    for k in ks:
        x = correlated(rng, 2 * n * k + 10, n * k, rank=max(1, n * k // 2))
        stats, theta0, _ = consumer(rng, x, m)
        consumers.append((stats, k, theta0))
        xs.append(x)
    return consumers, xs


def channel(x, c, k):
    return x[:, c * k:(c + 1) * k]


def relative(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# statistics -------------------------------------------------------------------------------------

@SMALL
@given(seed=seeds, rows=st.integers(2, 60), cuts=st.lists(st.floats(0, 1), max_size=4))
def test_stats_of_batches_sum_to_the_whole(seed, rows, cuts):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((rows, 7)), rng.standard_normal((rows, 3))
    bounds = [0, *sorted(int(c * rows) for c in cuts), rows]
    merged = sum((stats_from_data(x[a:b], y[a:b]) for a, b in zip(bounds, bounds[1:])),
                 LayerStats(np.zeros((8, 8)), np.zeros((8, 3)), 0.0, 0))
    whole = stats_from_data(x, y)
    np.testing.assert_allclose(merged.gram, whole.gram, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.cross, whole.cross, rtol=1e-12, atol=1e-12)
    assert merged.yy == pytest.approx(whole.yy, rel=1e-12)
    assert merged.rows == whole.rows


def test_error_and_columns_match_the_data():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 12)), rng.standard_normal((50, 2))
    theta = rng.standard_normal((13, 2))
    assert error(stats_from_data(x, y), theta) == pytest.approx(np.sum((y - with_ones(x) @ theta) ** 2), rel=1e-12)
    np.testing.assert_array_equal(columns([2, 0], 3), [6, 7, 8, 0, 1, 2, -1])


# ridge ------------------------------------------------------------------------------------------

def test_ridge_without_alpha_is_least_squares():
    rng = np.random.default_rng(1)
    n, k = 5, 4
    x = correlated(rng, 200, n * k, rank=10)
    stats, theta0, y = consumer(rng, x, 3)
    keep = [0, 2, 3]
    cols = columns(keep, k)
    expected = np.zeros_like(theta0)
    expected[cols] = np.linalg.lstsq(with_ones(x)[:, cols], y, rcond=None)[0]
    assert relative(ridge_solve(stats, keep, k, theta0, 0.0), expected) < 1e-9


def test_ridge_pulls_toward_the_original_weights_but_not_the_bias():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((100, 6))
    stats, theta0, _ = consumer(rng, x, 2)
    strong = ridge_solve(stats, range(6), 1, theta0, 1e8)
    np.testing.assert_allclose(strong[:-1], theta0[:-1], atol=1e-5)
    assert not np.allclose(strong[-1], theta0[-1], atol=1e-2)


def test_ridge_strength_is_alpha_times_the_mean_channel_energy():
    """lam = alpha * mean(diag G) over the channel columns only (the bias column's diagonal is the
    row count, which would make the ridge depend on how much data there is)."""
    rng = np.random.default_rng(6)
    x = 0.1 * rng.standard_normal((500, 8))  # channel energy far from the bias column's (500)
    stats, theta0, _ = consumer(rng, x, 2)
    keep, alpha = [0, 1, 3, 4, 6, 7], 0.3
    lam = alpha * np.mean(np.diag(stats.gram)[:8])
    cols = columns(keep, 1)
    extended = stats.gram[np.ix_(cols, cols)] + np.diag(np.append(np.full(len(keep), lam), 0.0))
    rhs = stats.cross[cols] + np.append(np.full(len(keep), lam), 0.0)[:, None] * theta0[cols]
    expected = np.zeros_like(theta0)
    expected[cols] = np.linalg.solve(extended, rhs)
    assert relative(ridge_solve(stats, keep, 1, theta0, alpha), expected) < 1e-10


def test_plain_least_squares_is_chosen_when_the_data_determine_the_weights():
    """Noise-free targets and more rows than columns: least squares recovers the weights exactly
    and any ridge toward a far-off theta0 only adds error, so alpha 0 is among the choices and wins."""
    rng = np.random.default_rng(7)
    n, k, m = 4, 4, 3
    true = rng.standard_normal((n * k + 1, m))
    theta0 = true + 2 * rng.standard_normal(true.shape)

    def stats(rows):
        x = correlated(rng, rows, n * k, rank=n * k)
        return stats_from_data(x, with_ones(x) @ true)

    fit, holdout = stats(300), stats(100)
    assert choose_alpha(fit, holdout, range(n), k, theta0) == 0
    theta, alpha = refit(fit, holdout, np.arange(n), k, theta0)
    assert alpha == 0 and relative(theta, true) < 1e-8


@pytest.mark.parametrize("eps", [0.0, 1e-7], ids=["exact", "rounding"])
def test_a_numerically_singular_gram_is_regularised(eps):
    """Channel 3 = channel 0 + channel 2 (+ eps noise): the Gram matrix is singular, exactly (its
    factorisation fails) or numerically (it factors with a pivot ~1e-15 of its diagonal). Either
    way the jitter keeps the weights of the weights' size and the fit as good as without channel 3."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((400, 6))
    x[:, 3] = x[:, 0] + x[:, 2] + eps * rng.standard_normal(400)
    true = rng.standard_normal((7, 2))
    stats = stats_from_data(x, with_ones(x) @ true + 0.1 * rng.standard_normal((400, 2)))
    theta = ridge_solve(stats, range(6), 1, np.zeros_like(true), 0.0)
    without = ridge_solve(stats, [0, 1, 2, 4, 5], 1, np.zeros_like(true), 0.0)
    assert np.abs(theta).max() < 10 * np.abs(true).max()
    assert error(stats, theta) == pytest.approx(error(stats, without), rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 1e-7], ids=["exact", "rounding"])
@pytest.mark.parametrize("dead", [False, True], ids=["live", "dead0"])
@pytest.mark.parametrize("scale", [1e-4, 1e8])
def test_the_singularity_test_and_the_jitter_follow_the_scale_of_the_data(scale, dead, eps):
    """The same singular problem as above with activations 1e-4 or 1e8 times larger, and channel 0
    dead or not: both the pivot test (L_ii^2 against a_ii) and the jitter (relative to the mean
    channel energy, not to channel 0's nor to an absolute 1) are relative, so the weights stay of
    the weights' size and the fit as good as without the dependent channels, at any scale."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((400, 6))
    if dead:
        x[:, 0] = 0.0
    x[:, 3] = x[:, 1] + x[:, 2] + eps * rng.standard_normal(400)
    x *= scale
    true = rng.standard_normal((7, 2))
    true[:-1] /= scale  # outputs of order one whatever the scale
    stats = stats_from_data(x, with_ones(x) @ true + 0.1 * rng.standard_normal((400, 2)))
    theta = ridge_solve(stats, range(6), 1, np.zeros_like(true), 0.0)
    without = ridge_solve(stats, [1, 2, 4, 5] if dead else [0, 1, 2, 4, 5], 1, np.zeros_like(true), 0.0)
    assert np.abs(theta[:-1]).max() < 10 * np.abs(true[:-1]).max()
    assert error(stats, theta) == pytest.approx(error(stats, without), rel=1e-6)


def test_choose_alpha_regularises_only_when_rows_are_few():
    rng = np.random.default_rng(3)
    n, k, m = 6, 16, 4  # a conv feeding Flatten -> Gemm: many columns per row
    true = rng.standard_normal((n * k + 1, m))
    theta0 = true + 0.1 * rng.standard_normal(true.shape)

    def stats(rows):
        x = correlated(rng, rows, n * k, rank=20, noise=0.3)
        return stats_from_data(x, with_ones(x) @ true + rng.standard_normal((rows, m)))

    few, holdout = stats(40), stats(2000)
    alpha = choose_alpha(few, holdout, range(n), k, theta0)
    assert alpha > 0
    ridge, plain = (error(holdout, ridge_solve(few, range(n), k, theta0, a)) for a in (alpha, 0.0))
    assert ridge < plain
    unrelated = rng.standard_normal(true.shape)  # theta0 far from the truth, and plenty of rows
    assert choose_alpha(stats(5000), holdout, range(n), k, unrelated) <= 1e-4


@pytest.mark.parametrize("fit_rows, holdout_rows", [(40, 2000), (2000, 40)])
@pytest.mark.parametrize("seed", range(2))
def test_refit_chooses_the_ridge_on_the_holdout_and_fits_on_everything(seed, fit_rows, holdout_rows):
    """refit: alpha = argmin over the grid of the HOLDOUT error of the ridge fitted on the FIT
    batches; the weights are then the ridge with that alpha on fit + holdout. With few fit rows
    per column the ridge generalises better than plain least squares; with many, it does not."""
    rng = np.random.default_rng(seed)
    n, k, m = 6, 16, 4
    true = rng.standard_normal((n * k + 1, m))
    theta0 = true + rng.standard_normal(true.shape)  # a poor prior: the ridge pays only with few fit rows

    def stats(rows):
        x = correlated(rng, rows, n * k, rank=20, noise=0.3)
        return stats_from_data(x, with_ones(x) @ true + rng.standard_normal((rows, m)))

    fit, holdout = stats(fit_rows), stats(holdout_rows)
    keep = np.array([0, 2, 3, 5])
    theta, alpha = refit(fit, holdout, keep, k, theta0)
    on_holdout = [error(holdout, ridge_solve(fit, keep, k, theta0, a)) for a in ALPHA_GRID]
    assert alpha == ALPHA_GRID[int(np.argmin(on_holdout))]
    assert alpha >= 1e-3 if fit_rows < holdout_rows else alpha <= 1e-4
    np.testing.assert_allclose(theta, ridge_solve(fit + holdout, keep, k, theta0, alpha), rtol=1e-10, atol=1e-12)
    assert np.all(theta[columns([1, 4], k)[:-1]] == 0)
    theta, alpha = refit(fit, None, keep, k, theta0)  # no holdout: the selection's ridge, on the fit
    assert alpha == SELECTION_ALPHA
    np.testing.assert_allclose(theta, ridge_solve(fit, keep, k, theta0, SELECTION_ALPHA), rtol=1e-10, atol=1e-12)


# REAP -------------------------------------------------------------------------------------------

@FEW
@pytest.mark.parametrize("ks", [(1,), (9,), (9, 4)], ids=["K1", "K9", "K9+K4"])
@pytest.mark.parametrize("alpha", [0.0, 0.05], ids=["ls", "ridge"])
@given(seed=seeds, n=st.integers(2, 7))
def test_fast_reap_equals_naive_resolving(ks, alpha, seed, n):
    consumers, _ = problem(seed, n, ks)
    naive = reap_order_naive(consumers, n, alpha)
    steps = [(c, e, [theta.copy() for theta in thetas]) for c, e, thetas in reap_steps(consumers, n, alpha)]
    np.testing.assert_array_equal([c for c, _, _ in steps], naive.order)
    np.testing.assert_allclose([e for _, e, _ in steps], naive.errors, rtol=1e-8)
    for step, (_, _, thetas) in enumerate(steps, start=1):
        keep = np.setdiff1d(np.arange(n), naive.order[:step])
        for (stats, k, theta0), theta in zip(consumers, thetas):
            assert relative(theta, ridge_solve(stats, keep, k, theta0, alpha)) < 1e-8
    fast = reap_order(consumers, n, alpha, target=n // 2 + 1)
    np.testing.assert_array_equal(fast.order, naive.order[:n - n // 2 - 1])
    unscored = reap_order(consumers, n, alpha, errors=False)  # as plan() runs it: the same order
    np.testing.assert_array_equal(unscored.order, naive.order)
    assert unscored.errors is None


def with_other_channels(seed, n, ks, extra):
    """Consumers reading the n channels first, then ``extra[i]`` channels of other groups (a Concat)."""
    rng = np.random.default_rng(seed)
    consumers = []
    for k, e in zip(ks, extra):
        x = correlated(rng, 2 * (n + e) * k + 10, (n + e) * k, rank=max(1, (n + e) * k // 2))
        stats, theta0, _ = consumer(rng, x, 4)
        consumers.append((stats, k, theta0))
    return consumers


@FEW
@pytest.mark.parametrize("ks, extra", [((1,), (3,)), ((9,), (2,)), ((9, 1), (0, 4))], ids=["K1", "K9", "K9+K1"])
@given(seed=seeds, n=st.integers(2, 6))
def test_fast_reap_keeps_other_groups_channels_and_equals_naive(ks, extra, seed, n):
    consumers = with_other_channels(seed, n, ks, extra)
    naive = reap_order_naive(consumers, n, 0.01)
    steps = [(c, e, [theta.copy() for theta in thetas]) for c, e, thetas in reap_steps(consumers, n, 0.01)]
    np.testing.assert_array_equal([c for c, _, _ in steps], naive.order)
    np.testing.assert_allclose([e for _, e, _ in steps], naive.errors, rtol=1e-8)
    for step, (_, _, thetas) in enumerate(steps, start=1):
        for (stats, k, theta0), theta, e in zip(consumers, thetas, extra):
            keep = np.concatenate([np.setdiff1d(np.arange(n), naive.order[:step]), np.arange(n, n + e)])
            assert relative(theta, ridge_solve(stats, keep, k, theta0, 0.01)) < 1e-8


@SMALL
@given(seed=seeds, n=st.integers(2, 6))
def test_thinet_and_nu_choose_among_the_first_n_channels_only(seed, n):
    """Other groups' channels never change ThiNet's or NU's choice: both see the group's channels only."""
    consumers = with_other_channels(seed, n, (9, 1), (2, 3))
    alone = []
    for stats, k, theta0 in consumers:
        p = np.append(np.arange(n * k), len(stats.gram) - 1)
        alone.append((LayerStats(stats.gram[np.ix_(p, p)], stats.cross[p], stats.yy, stats.rows), k, theta0[p]))
    np.testing.assert_array_equal(thinet_order(consumers, n).order, thinet_order(alone, n).order)
    with_others, by_itself = nu_plan(consumers, n), nu_plan(alone, n)
    np.testing.assert_array_equal(with_others.order, by_itself.order)
    np.testing.assert_array_equal(with_others.stand_in, by_itself.stand_in)


@pytest.mark.parametrize("k", [1, 9])
def test_reap_removes_linear_combinations_first(k):
    rng = np.random.default_rng(4)
    x = correlated(rng, 400, 6 * k, rank=6 * k)
    blocks = [channel(x, c, k) for c in range(6)]
    blocks += [0.7 * blocks[1] - 1.3 * blocks[4], blocks[2] + 2 * blocks[5]]  # channels 6 and 7
    x = np.hstack(blocks)
    true = rng.standard_normal((8 * k + 1, 3))
    stats = stats_from_data(x, with_ones(x) @ true)
    result = reap_order([(stats, k, true + 0.3 * rng.standard_normal(true.shape))], 8)
    assert np.all(result.errors[:2] < 1e-8 * stats.energy)
    assert result.errors[2] > 1e-6 * stats.energy
    assert sorted(result.order[:2] % 3) == [1, 2]  # one of {1, 4, 6}, one of {2, 5, 7}


def test_reap_removes_a_dead_channel_first():
    rng = np.random.default_rng(5)
    x = correlated(rng, 300, 6, rank=4)
    x[:, 3] = 0  # a dead ReLU: its Gram row is zero and the Gram matrix singular
    stats, theta0, _ = consumer(rng, x, 2)
    result = reap_order([(stats, 1, theta0)], 6)
    assert result.order[0] == 3
    assert result.errors[0] == pytest.approx(error(stats, ridge_solve(stats, range(6), 1, theta0, 0.0)), rel=1e-6)


def test_target_bounds():
    consumers, _ = problem(0, 3, (1,))
    assert len(reap_order(consumers, 3, target=3).order) == 0
    with pytest.raises(ValueError):
        reap_order(consumers, 3, target=0)


# ThiNet -----------------------------------------------------------------------------------------

@SMALL
@given(seed=seeds, n=st.integers(2, 8), ks=st.sampled_from([(1,), (9,), (9, 4)]))
def test_thinet_matches_brute_force(seed, n, ks):
    consumers, _ = problem(seed, n, ks)
    order, errors = thinet_order_naive(consumers, n)
    result = thinet_order(consumers, n)
    np.testing.assert_array_equal(result.order, order)
    np.testing.assert_allclose(result.errors, errors, rtol=1e-9)


# NU ---------------------------------------------------------------------------------------------

def fold(theta, k, j, i, alpha, beta):
    w = theta[:-1].reshape(-1, k, theta.shape[1]).copy()
    bias = theta[-1] + beta * w[j].sum(axis=0)
    w[i] += alpha * w[j]
    w[j] = 0
    return np.vstack([w.reshape(-1, theta.shape[1]), bias])


def nu_brute(consumers, xs, n):
    """Greedy NU from the data: every pair j -> i fitted by lstsq over all positions and taps of all
    consumers, its added error measured as the change of every consumer's output."""
    thetas = [theta0 for _, _, theta0 in consumers]
    alive, steps, total = list(range(n)), [], 0.0
    for _ in range(n - 1):
        best = None
        for j in alive:
            for i in (i for i in alive if i != j):
                a_i = np.concatenate([channel(x, i, k).ravel() for (_, k, _), x in zip(consumers, xs)])
                a_j = np.concatenate([channel(x, j, k).ravel() for (_, k, _), x in zip(consumers, xs)])
                alpha, beta = np.linalg.lstsq(np.stack([a_i, np.ones_like(a_i)], 1), a_j, rcond=None)[0]
                trial = [fold(t, k, j, i, alpha, beta) for (_, k, _), t in zip(consumers, thetas)]
                cost = sum(np.sum((with_ones(x) @ (new - old)) ** 2) for x, new, old in zip(xs, trial, thetas))
                if best is None or cost < best[0]:
                    best = (cost, j, i, alpha, beta, trial)
        cost, j, i, alpha, beta, thetas = best
        total += cost
        alive.remove(j)
        steps.append((j, i, alpha, beta, total, thetas))
    return steps


@SMALL
@given(seed=seeds, n=st.integers(2, 6), ks=st.sampled_from([(1,), (4,), (9, 4)]))
def test_nu_matches_brute_force(seed, n, ks):
    consumers, xs = problem(seed, n, ks)
    plan = nu_plan(consumers, n)
    steps = nu_brute(consumers, xs, n)
    np.testing.assert_array_equal(plan.order, [s[0] for s in steps])
    np.testing.assert_array_equal(plan.stand_in, [s[1] for s in steps])
    np.testing.assert_allclose(plan.alpha, [s[2] for s in steps], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(plan.beta, [s[3] for s in steps], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(plan.errors, [s[4] for s in steps], rtol=1e-7)
    for count, step in enumerate(steps, start=1):
        for (_, k, theta0), theta in zip(consumers, step[5]):
            assert relative(nu_apply(theta0, plan, k, count), theta) < 1e-8


def test_nu_unifies_a_duplicated_channel_first_and_exactly():
    rng = np.random.default_rng(6)
    n, i, j = 6, 1, 4
    consumers, xs = [], []
    for k in (9, 4):
        x = correlated(rng, 300, n * k, rank=3 * k)
        x[:, j * k:(j + 1) * k] = 2 * channel(x, i, k) + 0.5
        stats, theta0, _ = consumer(rng, x, 3)
        consumers.append((stats, k, theta0))
        xs.append(x)
    plan = nu_plan(consumers, n)
    assert {plan.order[0], plan.stand_in[0]} == {i, j}
    scale = sum(np.sum((with_ones(x) @ theta0) ** 2) for x, (_, _, theta0) in zip(xs, consumers))
    assert plan.errors[0] < 1e-10 * scale
    assert plan.errors[1] > 1e-4 * scale
    for x, (_, k, theta0) in zip(xs, consumers):
        before, after = with_ones(x) @ theta0, with_ones(x) @ nu_apply(theta0, plan, k, 1)
        np.testing.assert_allclose(after, before, rtol=1e-9, atol=1e-9 * np.abs(before).max())


# l1 scores and select (methods/scores.py) -------------------------------------------------------

def l1_oracle(model, analysis):
    """Per group whose producers each write all of its channels in order (a chain or a residual
    Add; not a Concat), the sum over them of each output channel's mean |weight|, from the
    weights as onnx stores them (Conv: output channels first; ConvTranspose: second)."""
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    expected = {}
    for g in analysis.groups:
        total = np.zeros(g.channels)
        for p in g.producers:
            w = weights[nodes[p].input[1]]
            w = np.swapaxes(w, 0, 1) if nodes[p].op_type == "ConvTranspose" else w
            if len(w) != g.channels:
                break
            total += np.abs(w.reshape(len(w), -1).astype(np.float64)).mean(axis=1)
        else:
            expected[g.id] = total
    return expected


@pytest.mark.parametrize("name", ["conv_chain", "basic_block_net", "convtranspose_net", "bottleneck_net"])
def test_l1_scores_are_the_mean_absolute_weight_summed_over_the_producers(name):
    model, _ = normalize(FACTORIES[name]())
    analysis = analyze(model)
    scores, expected = l1_scores(analysis), l1_oracle(model, analysis)
    assert len(scores) == len(analysis.groups) and len(expected) >= 2
    if name in ("basic_block_net", "bottleneck_net"):  # residual groups: more than one producer
        assert any(len(analysis.groups[g].producers) > 1 for g in expected)
    for g, values in expected.items():
        np.testing.assert_allclose(scores[g], values, rtol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
def test_select_keeps_the_best_scoring_channels_sorted_and_the_first_of_equals(ties):
    """The k best channels of each group, as sorted indices; among equal scores at the cut the
    lowest indices (a stable sort: numpy's default one reorders ties in arrays this long)."""
    analysis = analyze(normalize(FACTORIES["conv_chain"](widths=(64, 64, 8)))[0])
    rng = np.random.default_rng(0)
    scores = [rng.integers(0, 3, g.channels).astype(float) if ties else rng.random(g.channels)
              for g in analysis.groups]
    counts = {g.id: 13 + g.id for g in analysis.groups if g.prunable}
    keep = select(analysis, scores, counts)
    assert sorted(keep) == sorted(counts)
    for g, k in counts.items():
        best = sorted(range(len(scores[g])), key=lambda c: (-scores[g][c], c))[:k]
        assert keep[g].tolist() == sorted(best)


def test_select_gives_a_split_part_that_would_be_emptied_its_best_channel():
    analysis = analyze(normalize(FACTORIES["c2f_like"](channels=8))[0])
    g = next(g for g in analysis.groups if len(g.producers) == 3)  # the Split's first half: 0..3
    scores = [np.ones(h.channels) for h in analysis.groups]
    scores[g.id] = np.array([0.1, 0.3, 0.2, 0.0, 5.0, 6.0, 7.0, 8.0])
    others = {h.id: h.channels for h in analysis.groups if h.prunable and h.id != g.id}
    keep = select(analysis, scores, {g.id: 2} | others)
    assert keep[g.id].tolist() == [1, 6, 7]
    assert all(keep[h].tolist() == list(range(n)) for h, n in others.items())
    removed = analysis.removed_mask(keep)
    assert all(analysis.channel_count(t, removed) > 0 for t in analysis.layouts)


def test_select_refills_every_part_it_empties_even_a_one_channel_part():
    """conv (8 channels) -> Relu, read as a Split [1, 7] and as a Slice of channels 2..6: keeping
    only channel 7 empties the Split's one-channel part and the Slice; each gets its best one."""
    b = NetBuilder(3)
    x = b.relu(b.conv("input", 8))
    part0, part1 = b.split(x, [1, 7])
    sliced = b.slice_channels(x, 2, 7)
    model = b.model(b.conv(b.concat([b.conv(part0, 4), b.conv(part1, 4), b.conv(sliced, 4)]), 2))
    analysis = analyze(normalize(model)[0])
    g = next(g for g in analysis.groups if g.producers == ("conv0",))
    scores = [np.ones(h.channels) for h in analysis.groups]
    scores[g.id] = np.array([0.5, 0.1, 0.0, 0.3, 0.2, 0.4, 0.0, 9.0])
    keep = select(analysis, scores, {g.id: 1})
    assert keep[g.id].tolist() == [0, 5, 7]


@settings(max_examples=30, deadline=None)
@given(p=st.integers(1, 700), rows=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_symmetrized_in_place_is_the_expressions_numbers(p, rows, seed):
    """REAP's inverse Gram is made symmetric in place, a block at a time, without the two p x p
    temporaries of (h + h^T) / 2: to the bit the same numbers."""
    from onnxprune.methods.reap import symmetrized

    h = np.random.default_rng(seed).standard_normal((p, p))
    want = (h + h.T) / 2
    got = symmetrized(h, rows)
    assert got is h
    np.testing.assert_array_equal(got, want)
