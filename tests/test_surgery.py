"""Surgery is consistent: every member of a group is cut the same way.

The proof: give the channels to be removed all-zero consumer weights, so they
influence nothing; cutting them must then leave every output unchanged. A
member that was forgotten or cut at the wrong offset breaks the equality (or
the model).
"""

import numpy as np
import onnx
import pytest
from builders import FACTORIES, cnn_models, random_feeds, run
from checks import assert_same_outputs, random_keep, zero_consumer_weights
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune import OnnxPruneError, analyze, cost_of, normalize, prune_channels
from onnxprune.analysis.cost import MacPredictor, model_cost
from onnxprune.methods.l1 import l1_scores, select


def prepared(model):
    normalized, _ = normalize(model)
    return normalized, analyze(normalized)


def check_cut(model, seed):
    normalized, analysis = prepared(model)
    keep = random_keep(analysis, np.random.default_rng(seed))
    zeroed = zero_consumer_weights(normalized, analysis, keep)
    pruned = prune_channels(zeroed, analysis, keep)
    onnx.checker.check_model(pruned, full_check=True)
    feeds = random_feeds(model, seed=seed)
    assert_same_outputs(zeroed, pruned, feeds)
    # the MAC prediction used by --keep-flops equals a recount of the rewritten model
    predicted = MacPredictor(analysis, model_cost(analysis.graph, analysis.shapes)).macs(analysis.removed_mask(keep))
    assert predicted == cost_of(pruned).macs
    return normalized, analysis, keep, pruned, feeds


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("seed", [0, 1])
def test_cutting_channels_with_zero_consumer_weights_changes_nothing(name, seed):
    check_cut(FACTORIES[name](seed=seed), seed)


@settings(max_examples=40, deadline=None)
@given(cnn_models(), st.integers(0, 1000))
def test_cutting_is_consistent_on_generated_graphs(model, seed):
    check_cut(model, seed)


def test_the_check_is_not_vacuous():
    """Without zeroing, cutting channels does change the outputs."""
    normalized, analysis, keep, pruned, feeds = check_cut(FACTORIES["basic_block_net"](), 0)
    plain = prune_channels(normalized, analysis, keep)
    assert not np.allclose(run(normalized, feeds)[0], run(plain, feeds)[0], rtol=1e-3, atol=1e-4)
    assert sum(len(k) for k in keep.values()) < sum(analysis.groups[g].channels for g in keep)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_keeping_every_channel_is_an_exact_identity(name):
    normalized, analysis = prepared(FACTORIES[name]())
    keep = {g.id: np.arange(g.channels) for g in analysis.groups if g.prunable}
    pruned = prune_channels(normalized, analysis, keep)
    feeds = random_feeds(normalized)
    for x, y in zip(run(normalized, feeds), run(pruned, feeds)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_deepest_selection_never_empties_a_tensor(name):
    normalized, analysis = prepared(FACTORIES[name]())
    counts = {g.id: 1 for g in analysis.groups if g.prunable}
    keep = select(analysis, l1_scores(analysis), counts)
    removed = analysis.removed_mask(keep)
    assert all(analysis.channel_count(t, removed) > 0 for t in analysis.layouts)
    pruned = prune_channels(normalized, analysis, keep)
    if counts:
        assert cost_of(pruned).params < cost_of(normalized).params
    run(pruned)


def test_refuses_to_empty_or_cut_frozen_groups():
    normalized, analysis = prepared(FACTORIES["conv_chain"]())
    with pytest.raises(OnnxPruneError, match="lose all"):
        prune_channels(normalized, analysis, {0: np.array([], dtype=int)})
    frozen = next(g for g in analysis.groups if not g.prunable)
    with pytest.raises(OnnxPruneError, match="frozen"):
        prune_channels(normalized, analysis, {frozen.id: np.array([0])})
    with pytest.raises(OnnxPruneError, match="distinct"):
        prune_channels(normalized, analysis, {0: np.array([0, 0])})


def test_split_part_that_would_be_emptied_is_refused():
    normalized, analysis = prepared(FACTORIES["c2f_like"](channels=8))
    g = next(g for g in analysis.groups if len(g.producers) == 3)
    # the Split's first half holds channels 0..3 of this group: dropping all of them empties it
    with pytest.raises(OnnxPruneError, match="no channels"):
        prune_channels(normalized, analysis, {g.id: np.arange(4, g.channels)})
