"""Normalisation is exact: BN folding, constants to initializers, Identity removal, explicit biases."""

import numpy as np
import onnx
import pytest
from builders import FACTORIES, NetBuilder, cnn_models, random_feeds, run
from checks import assert_same_outputs
from hypothesis import given, settings
from onnx import helper, numpy_helper

from onnxprune import PruneConfig, normalize, prune


def ops(model):
    return [n.op_type for n in model.graph.node]


def node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def initializers(model):
    """Initializer name -> array."""
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def attrs(model, name):
    return {a.name: helper.get_attribute_value(a) for a in node(model, name).attribute}


def set_attrs(model, name, **values):
    """Sets attributes of the node ``name`` in place (None: removes it) and returns the model."""
    n = node(model, name)
    kept = [a for a in n.attribute if a.name not in values]
    del n.attribute[:]
    n.attribute.extend([*kept, *(helper.make_attribute(k, v) for k, v in values.items() if v is not None)])
    return model


def constant(name, **value):
    return helper.make_node("Constant", [], [name], **value)


def filled(x):
    """The value attribute of a ConstantOfShape: a one-element float32 tensor."""
    return numpy_helper.from_array(np.array([x], np.float32))


def sparse(dense):
    """A SparseTensorProto of a 1-D array, with linear indices."""
    at = np.flatnonzero(dense)
    return helper.make_sparse_tensor(numpy_helper.from_array(dense[at], "values"),
                                     numpy_helper.from_array(at.astype(np.int64), "indices"), dense.shape)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_normalize_is_exact_on_every_factory(name):
    model = FACTORIES[name]()
    normalized, _ = normalize(model)
    onnx.checker.check_model(normalized, full_check=True)
    assert_same_outputs(model, normalized, random_feeds(model))


def test_batchnorm_after_conv_is_folded():
    model = FACTORIES["conv_chain"](bn=True)
    normalized, report = normalize(model)
    assert report.folded_batchnorms == 3
    assert "BatchNormalization" not in ops(normalized)


def test_batchnorm_folds_into_gemm_conv_transpose_and_grouped_conv():
    b = NetBuilder(3, seed=1)
    x = b.bn(b.conv("input", 8, bias=False))
    x = b.bn(b.conv(x, 8, group=2))
    x = b.relu(b.bn(b.conv_transpose(x, 6)))
    x = b.bn(b.conv_transpose(x, 6, k=1, stride=1, group=2))  # W [6, 3, 1, 1]
    x = b.bn(b.gemm(b.flatten(b.gap(x)), 12))  # gemm0, with beta 0.5 below
    x = b.bn(b.gemm(x, 5, trans_b=False))  # gemm1: B [12, 5]
    model = set_attrs(b.model(b.gemm(x, 4)), "gemm0", beta=0.5)
    onnx.checker.check_model(model, full_check=True)
    normalized, report = normalize(model)
    assert report.folded_batchnorms == 6
    assert "BatchNormalization" not in ops(normalized)
    assert_same_outputs(model, normalized, random_feeds(model))


def test_batchnorm_with_nothing_foldable_before_it_stays():
    b = NetBuilder(3)
    x = b.relu(b.conv("input", 8))
    model = b.model(b.bn(x))  # after a Relu: not foldable
    normalized, report = normalize(model)
    assert report.folded_batchnorms == 0
    assert "BatchNormalization" in ops(normalized)


def test_batchnorms_that_cannot_be_folded_stay_and_later_ones_still_fold():
    b = NetBuilder(3, seed=4)
    x = b.bn("input")  # bn0: reads the graph input, no producer
    x = b.bn(b.conv(x, 4))  # bn1: conv0's weight becomes a graph input below
    x = b.bn(b.conv(x, 4))  # bn2: training mode below (batch statistics, not the running ones)
    model = b.model(b.bn(b.conv(x, 4)))  # bn3: folds
    weight = next(i for i in model.graph.initializer if i.name == "conv0.weight")
    model.graph.initializer.remove(weight)
    model.graph.input.append(helper.make_tensor_value_info(weight.name, weight.data_type, weight.dims))
    set_attrs(model, "bn2", training_mode=1)
    node(model, "bn2").output.extend(["bn2.running_mean", "bn2.running_var"])
    onnx.checker.check_model(model, full_check=True)
    normalized, report = normalize(model)
    assert report.folded_batchnorms == 1
    assert sorted(n.name for n in normalized.graph.node if n.op_type == "BatchNormalization") == ["bn0", "bn1", "bn2"]
    assert_same_outputs(model, normalized, random_feeds(model))


def test_batchnorm_whose_input_is_shared_stays():
    b = NetBuilder(3)
    y = b.conv("input", 8)
    model = b.model([b.bn(y), b.relu(y)])
    normalized, _ = normalize(model)
    assert "BatchNormalization" in ops(normalized)
    assert_same_outputs(model, normalized, random_feeds(model))


def test_shared_weight_is_copied_not_changed_for_other_readers():
    b = NetBuilder(3)
    x = b.conv("input", 8)
    model = b.model([b.bn(x), b.relu(b.conv("input", 8))])
    # make the second conv read the first conv's weight initializer
    second = [n for n in model.graph.node if n.op_type == "Conv"][1]
    second.input[1] = "conv0.weight"
    normalized, _ = normalize(model)
    assert_same_outputs(model, normalized, random_feeds(model))


def test_every_conv_conv_transpose_and_gemm_gets_a_bias_vector_with_gemm_beta_folded_in():
    b = NetBuilder(3, seed=2)
    x = b.conv("input", 4, bias=False)  # conv0
    x = b.conv_transpose(x, 6, bias=False)  # convtranspose0: W [4, 6, 2, 2]
    x = b.conv_transpose(x, 6, k=1, stride=1, group=2, bias=False)  # convtranspose1: W [6, 3, 1, 1]
    h = b.flatten(b.gap(x))
    model = b.model([b.gemm(h, 5, trans_b=False, bias=False), b.gemm(h, 5), b.gemm(h, 5)])
    set_attrs(model, "gemm0", transB=None)  # no transB attribute: B [6, 5]
    set_attrs(model, "gemm1", beta=0.5)  # C a scalar
    next(i for i in model.graph.initializer if i.name == "gemm1.bias").CopyFrom(
        numpy_helper.from_array(np.array(0.3, np.float32), "gemm1.bias"))
    set_attrs(model, "gemm2", beta=0.5)  # C [5]
    onnx.checker.check_model(model, full_check=True)
    c = initializers(model)["gemm2.bias"]
    normalized, _ = normalize(model)
    biases = {"conv0": np.zeros(4), "convtranspose0": np.zeros(6), "convtranspose1": np.zeros(6),
              "gemm0": np.zeros(5), "gemm1": np.full(5, 0.15), "gemm2": 0.5 * c}
    values = initializers(normalized)
    for name, bias in biases.items():
        got = values[node(normalized, name).input[2]]
        assert got.dtype == np.float32 and got.shape == bias.shape, name
        np.testing.assert_allclose(got, bias, rtol=1e-6, err_msg=name)
        assert attrs(normalized, name).get("beta", 1.0) == 1.0
    assert_same_outputs(model, normalized, random_feeds(model))


def test_gemm_with_trans_a_gets_no_bias_and_later_nodes_still_do():
    b = NetBuilder(3, seed=3)
    model = b.model(b.conv("input", 4, bias=False))
    weight = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    model.graph.node.insert(0, helper.make_node("Gemm", ["a", "gemm.weight"], ["t"], name="gemm", transA=1))
    model.graph.initializer.append(numpy_helper.from_array(weight, "gemm.weight"))
    model.graph.input.append(helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [4, 2]))
    model.graph.output.append(helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2, 3]))
    onnx.checker.check_model(model, full_check=True)
    normalized, _ = normalize(model)
    assert len(node(normalized, "gemm").input) == 2
    assert initializers(normalized)[node(normalized, "conv0").input[2]].shape == (4,)
    assert_same_outputs(model, normalized, random_feeds(model))


def test_bias_vectors_already_explicit_are_kept_as_they_are():
    model = FACTORIES["conv_chain"](bn=False)  # Convs with a bias [m], a Gemm with C [m]
    normalized, _ = normalize(model)
    before, after = initializers(model), initializers(normalized)
    assert sorted(after) == sorted(before)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)


def test_constants_become_initializers_and_identities_go():
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
        helper.make_node("Identity", ["w"], ["w2"]),
        helper.make_node("Conv", ["input", "w2"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["y"], ["y2"]),
        helper.make_node("Relu", ["y2"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    normalized, report = normalize(model)
    assert ops(normalized) == ["Conv", "Relu"]
    assert report.removed_identities >= 1
    assert [o.name for o in normalized.graph.output] == ["out"]
    assert normalized.ir_version == 7 and normalized.opset_import[0].version == 13
    assert_same_outputs(model, normalized, random_feeds(model))


def test_constant_nodes_of_every_form_become_initializers_of_their_dtype():
    rng = np.random.default_rng(0)
    row = rng.standard_normal(8).astype(np.float32)
    nodes = [
        constant("c", value=numpy_helper.from_array(rng.standard_normal((1, 3, 1, 1)).astype(np.float32))),
        constant("f", value_float=2.0),
        constant("fs", value_floats=row.tolist()),
        constant("sp", sparse_value=sparse(np.where(row > 0, row, 0))),
        constant("shape", value_ints=[1, 3, 1, 1]),
        helper.make_node("ConstantOfShape", ["shape"], ["half"], value=filled(0.5)),
        helper.make_node("Shape", ["input"], ["s"]),  # the batch size is dynamic: the next node stays
        helper.make_node("ConstantOfShape", ["s"], ["ones"], value=filled(1.0)),
        helper.make_node("Add", ["input", "c"], ["a"]),
        helper.make_node("Mul", ["a", "f"], ["b"]),
        helper.make_node("Mul", ["b", "fs"], ["d"]),
        helper.make_node("Mul", ["d", "half"], ["e"]),
        helper.make_node("Add", ["e", "ones"], ["o"]),
        helper.make_node("Add", ["o", "sp"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    normalized, report = normalize(model)
    assert report.constants_folded == 6
    assert sorted(ops(normalized)) == ["Add", "Add", "Add", "ConstantOfShape", "Mul", "Mul", "Mul", "Shape"]
    assert {i.data_type for i in normalized.graph.initializer} == {onnx.TensorProto.FLOAT}
    assert_same_outputs(model, normalized, random_feeds(model))


def test_string_constants_and_initializers_survive_folding_and_pruning():
    """A string Constant, or an Identity of a string initializer, is folded into a numpy array of
    strings, which graphsurgeon's export cannot write (it crashed normalisation); they are
    written back as STRING tensors, and the model still prunes."""
    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32), rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["a"], name="c1", pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["b"], name="r"),
        helper.make_node("Conv", ["b", "w2"], ["out"], name="c2", pads=[1] * 4),
        constant("label", value=numpy_helper.from_array(np.array(["cat", "dog"], dtype=object))),
        helper.make_node("Identity", ["names"], ["names_out"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", 4, 8, 8]),
         helper.make_tensor_value_info("label", onnx.TensorProto.STRING, [2]),
         helper.make_tensor_value_info("names_out", onnx.TensorProto.STRING, [1])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(np.array(["x"], dtype=object), "names")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    normalized, _ = normalize(model)
    assert ops(normalized) == ["Conv", "Relu", "Conv"]
    feeds = random_feeds(model)
    for got in (run(normalized, feeds), run(prune(model, PruneConfig(ratio=0.5, round_to=1)).model, feeds)):
        assert got[1].tolist() == ["cat", "dog"] and got[2].tolist() == ["x"]
    np.testing.assert_allclose(run(normalized, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-6)


def test_constant_nodes_in_subgraphs_keep_their_values():
    row = np.random.default_rng(1).standard_normal(8).astype(np.float32)
    positive = np.where(row > 0, row, 0)
    branches = [
        helper.make_graph([constant(name, **value)], name, [],
                          [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [8])])
        for name, value in [("then", {"sparse_value": sparse(positive)}), ("else", {"value_floats": row.tolist()})]
    ]
    nodes = [
        helper.make_node("If", ["cond"], ["branch"], then_branch=branches[0], else_branch=branches[1]),
        helper.make_node("Add", ["input", "branch"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 8, 8]),
                     helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    normalized, _ = normalize(model)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for cond, branch in [(True, positive), (False, row)]:  # onnxruntime runs no sparse Constant in a subgraph
        np.testing.assert_allclose(run(normalized, {"input": x, "cond": np.array(cond)})[0], x + branch, rtol=1e-6)


def test_constant_subgraph_onnxruntime_cannot_evaluate_stays_and_the_rest_is_normalised():
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(3, np.float32))),
        helper.make_node("Plugin", ["c"], ["p"], domain="custom"),  # constant folding fails on it
        helper.make_node("Conv", ["input", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in ("p", "y")],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    normalized, report = normalize(model)
    assert sorted(ops(normalized)) == ["Conv", "Plugin"]
    assert report.constants_folded == 1
    assert initializers(normalized)[node(normalized, "conv").input[2]].shape == (4,)


@pytest.mark.parametrize("read_elsewhere", [False, True])
def test_identity_feeding_a_graph_output_keeps_the_output_name(read_elsewhere):
    b = NetBuilder(3)
    y = b.relu(b.conv("input", 4))
    model = b.model([b.identity(y)] + ([b.conv(y, 4)] if read_elsewhere else []))
    normalized, _ = normalize(model)
    assert "Identity" not in ops(normalized)
    assert [o.name for o in normalized.graph.output] == [o.name for o in model.graph.output]
    assert_same_outputs(model, normalized, random_feeds(model))


def test_input_model_is_not_modified():
    model = FACTORIES["basic_block_net"]()
    before = model.SerializeToString()
    normalize(model)
    assert model.SerializeToString() == before


@settings(max_examples=25, deadline=None)
@given(cnn_models())
def test_normalize_is_exact_on_generated_graphs(model):
    normalized, _ = normalize(model)
    onnx.checker.check_model(normalized, full_check=True)
    feeds = random_feeds(model, seed=3)
    for x, y in zip(run(model, feeds), run(normalized, feeds)):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)
