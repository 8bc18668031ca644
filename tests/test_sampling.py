"""Sampled calibration rows (calibration/sampling.py) and the float32 products of the host statistics."""

import numpy as np
import pytest
from builders import FACTORIES, random_feeds
from checks import assert_refused
from click.testing import CliRunner
from test_statistics import assert_same_stats, batches_of, setup

from onnxprune.analysis.consumers import Consumer
from onnxprune.calibration.layer_stats import RunningSums, stats_from_data
from onnxprune.calibration.sampling import ALL_ROWS, RowSampling
from onnxprune.calibration.statistics import StatsMode, collect, host_stats
from onnxprune.cli import main
from onnxprune.methods.least_squares import ALPHA_GRID, error, ridge_solve

CONV = Consumer("conv", "Conv", "x", "y", channels=2, taps=9, kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
                dilations=(1, 1))


def test_rows_per_sample_by_hand():
    rows = RowSampling(per_column=64, samples=1024)
    assert rows.per_sample(columns=145, positions=784) == 10  # ceil(64 * 145 / 1024) = ceil(9.06)
    assert rows.per_sample(columns=577, positions=49) == 37  # ceil(36.06)
    assert rows.per_sample(columns=577, positions=36) == 36  # never more than a sample has
    assert RowSampling(1, 10**6).per_sample(columns=10, positions=50) == 1  # at least one
    assert RowSampling(64, 16).per_sample(columns=4, positions=16) == 16  # exactly all: nothing drawn
    assert RowSampling(64, 16).draw("n", 0, 3, 16, 4) is None
    assert ALL_ROWS.per_sample(columns=1000, positions=7) == 7
    assert ALL_ROWS.draw("n", 0, 3, 7, 1000) is None


def test_draws_are_distinct_per_sample_reproducible_and_seeded_by_node_and_batch():
    rows = RowSampling(per_column=1, samples=20)  # 1 * 37 / 20: 2 of 25 positions per sample
    pick, weight = rows.draw("a", 3, n=5, positions=25, columns=37)
    assert weight == 25 / 2
    per = pick.reshape(5, 2)
    assert np.all(per // 25 == np.arange(5)[:, None])  # each sample's own rows, in order
    assert np.all(np.diff(per, axis=1) > 0)  # distinct and ascending
    np.testing.assert_array_equal(rows.draw("a", 3, 5, 25, 37)[0], pick)
    assert not np.array_equal(rows.draw("b", 3, 5, 25, 37)[0], pick)
    assert not np.array_equal(rows.draw("a", 4, 5, 25, 37)[0], pick)


def conv_batch(seed=0, n=6, hw=5, m=3):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 2, hw, hw), dtype=np.float32) + 0.5
    y = rng.standard_normal((n, m, hw, hw)).astype(np.float32)
    return x, y


def test_a_budget_covering_every_row_gives_the_full_statistics_exactly():
    x, y = conv_batch()
    full = host_stats(x, y, CONV)
    covered = host_stats(x, y, CONV, RowSampling(per_column=10**6, samples=6), batch=7)
    np.testing.assert_array_equal(covered.gram, full.gram)
    np.testing.assert_array_equal(covered.cross, full.cross)
    assert covered.rows == full.rows == 6 * 25 and covered.drawn is None


def test_sampled_statistics_are_unbiased_and_keep_the_row_count():
    """Averaged over many seeded draws, the weighted statistics of 5 rows per sample (of 25)
    approach the full ones within a few standard errors; every draw has the full row count."""
    x, y = conv_batch(1)
    full = host_stats(x, y, CONV)
    rows = RowSampling(per_column=1, samples=2)  # ceil(19 / 2) = 10 of 25 positions
    grams, crosses = [], []
    for batch in range(400):
        s = host_stats(x, y, CONV, rows, batch)
        assert s.rows == full.rows and s.drawn == 6 * 10
        grams.append(s.gram)
        crosses.append(s.cross)
    for draws, exact in ((np.array(grams), full.gram), (np.array(crosses), full.cross)):
        mean, se = draws.mean(axis=0), draws.std(axis=0) / np.sqrt(len(draws))
        assert np.all(np.abs(mean - exact) <= 4.5 * se + 1e-9 * np.abs(exact).max())
        assert np.abs(draws[0] - exact).max() > 10 * se.max()  # one draw alone is far off: the test can fail


def test_sampled_rows_are_the_patches_at_the_drawn_positions():
    """The drawn rows are exactly rows of the full im2col (host == a brute-force gather)."""
    from onnxprune.calibration.statistics import augmented, targets

    x, y = conv_batch(2)
    pick, weight = RowSampling(1, 2).draw("conv", 0, 6, 25, CONV.columns)
    np.testing.assert_array_equal(augmented(x, CONV, np.dtype(np.float32), pick),
                                  augmented(x, CONV, np.dtype(np.float32))[pick])
    np.testing.assert_array_equal(targets(y, CONV, pick), targets(y, CONV)[pick])
    s = host_stats(x, y, CONV, RowSampling(1, 2))
    reference = stats_from_data(augmented(x, CONV, np.dtype(np.float64))[pick, :-1], targets(y, CONV)[pick])
    np.testing.assert_allclose(s.gram, weight * reference.gram, rtol=1e-5)
    np.testing.assert_allclose(s.cross, weight * reference.cross, rtol=1e-5, atol=1e-5 * np.abs(s.cross).max())


@pytest.mark.parametrize("factory", ["basic_block_net", "densenet_like", "unet_like"])
def test_sampled_host_statistics_equal_the_graphs_and_split_alike(factory):
    """Host and graph draw the same rows; the draws follow the batch's index, so the same
    batches give the same statistics in either mode."""
    normalized, _, consumers = setup(FACTORIES[factory]())
    feeds = random_feeds(normalized, batch=8, seed=5)
    rows = RowSampling(per_column=1, samples=8)
    host, _ = collect(normalized, normalized, consumers, batches_of(feeds, [3, 5]), rows=rows)
    graph, _ = collect(normalized, normalized, consumers, batches_of(feeds, [3, 5]), StatsMode.GRAPH, rows=rows)
    assert_same_stats(graph, host, consumers)
    assert any(host[c.node].drawn is not None for c in consumers)


@pytest.mark.parametrize("offset, noise, parts", [(50.0, 1e-3, 1), (0.1, 0.0, 1), (50.0, 1e-3, 40), (0.1, 0.0, 40)])
def test_float32_products_keep_the_reconstruction_of_an_ill_conditioned_layer(offset, noise, parts):
    """A layer whose 4th input is (nearly or exactly) a combination of three others, far from
    zero-mean or not: condition number above 1e11. Ridge reconstructions from the float32
    statistics fit the float64 statistics as well as the float64 ones do, at every ridge of
    the grid, to 1e-6 of the output energy; also when the rows come in 40 parts (a batch run in
    slices) whose means drift away from the first part's, the shift of all of them."""
    rng = np.random.default_rng(0)
    r, q = 20000, 12
    x = rng.random((r, q)) * 2 + offset + np.linspace(0, offset / 2, r)[:, None]  # drifting means
    x[:, 3] = x[:, 1] + x[:, 2] - x[:, 0] + noise * rng.standard_normal(r)
    x = x.astype(np.float32)
    theta = rng.standard_normal((q + 1, 4))
    y = (x @ theta[:-1] + theta[-1] + 0.01 * rng.standard_normal((r, 4))).astype(np.float32)
    exact = stats_from_data(x.astype(np.float64), y.astype(np.float64))
    sums = RunningSums(q, 4)
    for part in np.array_split(np.arange(r), parts):
        sums.add(x[part], y[part])
    fast = sums.stats()
    assert np.linalg.cond(exact.gram) > 1e11
    keep, theta0 = np.arange(q), np.zeros_like(theta)
    for alpha in ALPHA_GRID:
        best = error(exact, ridge_solve(exact, keep, 1, theta0, alpha))
        got = error(exact, ridge_solve(fast, keep, 1, theta0, alpha))
        assert abs(got - best) <= 1e-6 * exact.energy


def test_running_sums_of_parts_are_the_statistics_of_all_their_rows():
    """Parts of any size (empty ones too), each of weight w, sum to the float64 statistics of all
    rows weighted by w, to float32 rounding; the rows read are counted, the weighted count is exact;
    a part of another weight counts as that weight; finished sums take no more parts."""
    rng = np.random.default_rng(3)
    x = (rng.random((500, 7)) * 3 + 10).astype(np.float32)
    y = (rng.standard_normal((500, 3)) + 2).astype(np.float32)
    sums = RunningSums(7, 3)
    for a, b in [(0, 0), (0, 1), (1, 120), (120, 120), (120, 500)]:
        sums.add(x[a:b], y[a:b], 4.0)
    got, exact = sums.stats(), stats_from_data(x.astype(np.float64), y.astype(np.float64))
    for name in ("gram", "cross", "yy"):
        np.testing.assert_allclose(getattr(got, name), 4.0 * getattr(exact, name), rtol=1e-5)
    assert (got.rows, got.drawn) == (2000, 500)
    with pytest.raises(ValueError, match="finished"):  # stats() finishes the sums in place
        sums.add(x[:10], y[:10], 4.0)
    sums = RunningSums(7, 3)
    sums.add(x, y, 4.0)
    sums.add(x[:10], y[:10], 2.0)
    mixed = sums.stats()
    whole = 4.0 * exact.gram + 2.0 * stats_from_data(x[:10].astype(np.float64), y[:10].astype(np.float64)).gram
    np.testing.assert_allclose(mixed.gram, whole, rtol=1e-5)
    assert (mixed.rows, mixed.drawn) == (2020, 510)
    empty = RunningSums(7, 3).stats()
    assert empty.gram.shape == (8, 8) and empty.cross.shape == (8, 3) and empty.rows == 0 and not empty.gram.any()


def test_calib_rows_must_not_be_negative(tmp_path):
    import onnx

    model = FACTORIES["basic_block_net"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **random_feeds(model, batch=4))
    result = CliRunner().invoke(main, ["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--calib",
                                       str(tmp_path / "c.npz"), "--keep-flops", "0.5", "--calib-rows", "-1"])
    assert_refused(result, "--calib-rows -1: must be 0 (every row) or more")
    assert not (tmp_path / "o.onnx").exists()
