"""Data readers: .npz, .npy and image folders, batching, limits, and every way data can be wrong."""

import io
import os
import zipfile
import zlib

import numpy as np
import pytest
from builders import FACTORIES
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxprune.data import ImageOptions, open_data, parse_image_options
from onnxprune.errors import OnnxPruneError

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _own_generator(request):
    """Each test draws from its own generator, seeded by its name: the same data whichever tests
    run and in whatever order (a shared module-level generator gave each test what the tests
    before it left)."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.name.encode()))


def tiny_model(inputs):
    """Each input (name -> (onnx elem type, dims)) is Cast to float, flattened and projected to 4
    logits; the projections are summed into the output "logits"."""
    nodes, inits, projected = [], [], []
    for name, (elem, dims) in inputs.items():
        features = int(np.prod(dims[1:]))
        inits.append(numpy_helper.from_array(RNG.standard_normal((features, 4)).astype(np.float32), f"{name}.w"))
        nodes += [
            helper.make_node("Cast", [name], [f"{name}.f"], to=TensorProto.FLOAT),
            helper.make_node("Flatten", [f"{name}.f"], [f"{name}.flat"]),
            helper.make_node("MatMul", [f"{name}.flat", f"{name}.w"], [f"{name}.y"]),
        ]
        projected.append(f"{name}.y")
    nodes.append(helper.make_node("Sum", projected, ["logits"]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(n, e, d) for n, (e, d) in inputs.items()],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def reduce_model(dims, elem=TensorProto.FLOAT):
    """Input "x" with ``dims`` (None: rank unknown), any of them symbolic, reduced to its mean."""
    return helper.make_model(helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], keepdims=0)], "g",
        [helper.make_tensor_value_info("x", elem, dims)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    ), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def model():
    """Input "input" [N, 3, 8, 8] float32."""
    return FACTORIES["conv_chain"]()


def samples(n=10, shape=(3, 8, 8), dtype=np.float32):
    return RNG.standard_normal((n, *shape)).astype(dtype)


def gather(source):
    """All batches of a source, concatenated: (feeds, labels or None, batch sizes)."""
    batches = list(source)
    feeds = {k: np.concatenate([b.feeds[k] for b in batches]) for k in batches[0].feeds}
    labels = None if batches[0].labels is None else np.concatenate([b.labels for b in batches])
    return feeds, labels, [len(b.labels if b.labels is not None else next(iter(b.feeds.values()))) for b in batches]


def error(path, model, **kwargs):
    with pytest.raises(OnnxPruneError) as info:
        list(open_data(path, model, **kwargs))
    return str(info.value)


# -- formats


def test_npz_named_with_labels_streams_in_batches(model, tmp_path):
    x, labels = samples(10), np.arange(10) % 4
    np.savez(tmp_path / "d.npz", input=x, labels=labels)
    source = open_data(tmp_path / "d.npz", model, batch_size=4)
    assert len(source) == 10 and source.has_labels and source.input_names == ["input"]
    feeds, got_labels, sizes = gather(source)
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(feeds["input"], x)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_labels.dtype == np.int64 and feeds["input"].dtype == np.float32


@pytest.mark.parametrize("write, layout, read_whole", [
    (np.savez, "C", False),  # uncompressed: read from the file a batch at a time
    (np.savez_compressed, "C", True),  # deflated: loaded when opened
    (np.savez, "F", True),  # Fortran order: a batch's samples are not one run of the file
])
def test_npz_arrays_are_read_a_batch_at_a_time_where_the_file_allows(model, tmp_path, monkeypatch, write, layout,
                                                                    read_whole):
    """An uncompressed .npz member is read from the file one batch at a time (a pass over the data
    holds a batch, not the data set); any other is loaded whole. The batches are the same."""
    x, labels = np.asarray(samples(10), order=layout), np.arange(10) % 4
    write(tmp_path / "d.npz", input=x, labels=labels)
    loaded = []
    real = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: loaded.append(key) or real(self, key))
    source = open_data(tmp_path / "d.npz", model, batch_size=4)
    assert sorted(loaded) == (["input", "labels"] if read_whole else ["labels"])
    feeds, got_labels, sizes = gather(source)
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(feeds["input"], x)
    np.testing.assert_array_equal(got_labels, labels)
    again, _, _ = gather(open_data(tmp_path / "d.npz", model, batch_size=3, limit=7))  # other bounds
    np.testing.assert_array_equal(again["input"], x[:7])


def test_npz_read_in_batches_that_changes_while_in_use_is_a_clear_error(model, tmp_path):
    """An uncompressed .npz is read on every pass over the data: a file removed or cut short since
    it was opened is an error naming it, not a traceback."""
    np.savez(tmp_path / "d.npz", input=samples(10))
    source = open_data(tmp_path / "d.npz", model, batch_size=4)
    with open(tmp_path / "d.npz", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "d.npz") - 3 * 8 * 8 * 4 * 4)
    with pytest.raises(OnnxPruneError, match="fewer samples than when it was opened"):
        gather(source)
    os.remove(tmp_path / "d.npz")
    with pytest.raises(OnnxPruneError, match=r"d\.npz: cannot read samples 0\.\.3"):
        gather(source)


def test_npz_read_in_batches_converts_other_dtypes_and_byte_orders(model, tmp_path):
    """A stored member of another dtype or byte order reads as np.load would give it, then converts."""
    x = samples(6).astype(">f8")
    np.savez(tmp_path / "d.npz", input=x)
    feeds, _, _ = gather(open_data(tmp_path / "d.npz", model, batch_size=4))
    assert feeds["input"].dtype == np.float32
    np.testing.assert_array_equal(feeds["input"], x.astype(np.float32))


def test_npz_single_unnamed_array(model, tmp_path):
    x = samples(5)
    np.savez(tmp_path / "d.npz", x)  # key arr_0
    source = open_data(tmp_path / "d.npz", model)
    assert not source.has_labels
    np.testing.assert_array_equal(gather(source)[0]["input"], x)


def test_npz_several_inputs(tmp_path):
    two = tiny_model({"a": (TensorProto.FLOAT, ["N", 2]), "b": (TensorProto.INT64, ["N", 3])})
    a, b = samples(6, (2,)), np.arange(18).reshape(6, 3)
    np.savez(tmp_path / "d.npz", b=b, a=a)
    feeds, _, _ = gather(open_data(tmp_path / "d.npz", two, batch_size=5))
    np.testing.assert_array_equal(feeds["a"], a)
    np.testing.assert_array_equal(feeds["b"], b)


def test_npy_is_memory_mapped_and_streamed(model, tmp_path):
    x = samples(7)
    np.save(tmp_path / "d.npy", x)
    source = open_data(tmp_path / "d.npy", model, batch_size=3)
    feeds, labels, sizes = gather(source)
    assert labels is None and sizes == [3, 3, 1]
    np.testing.assert_array_equal(feeds["input"], x)


def test_limit_keeps_the_first_samples(model, tmp_path):
    x, labels = samples(10), np.arange(10)
    np.savez(tmp_path / "d.npz", input=x, labels=labels)
    source = open_data(tmp_path / "d.npz", model, batch_size=4, limit=6)
    feeds, got_labels, sizes = gather(source)
    assert len(source) == 6 and sizes == [4, 2]
    np.testing.assert_array_equal(feeds["input"], x[:6])
    np.testing.assert_array_equal(got_labels, labels[:6])
    assert len(open_data(tmp_path / "d.npz", model, limit=100)) == 10


def test_lossless_dtypes_are_converted(model, tmp_path):
    np.save(tmp_path / "f64.npy", samples(2, dtype=np.float64))
    np.save(tmp_path / "int.npy", np.ones((2, 3, 8, 8), np.int32))
    for name in ("f64.npy", "int.npy"):
        assert gather(open_data(tmp_path / name, model))[0]["input"].dtype == np.float32


def test_fixed_batch_dim_sets_the_batch_size(tmp_path):
    fixed = tiny_model({"x": (TensorProto.FLOAT, [2, 5])})
    np.save(tmp_path / "d.npy", samples(6, (5,)))
    assert gather(open_data(tmp_path / "d.npy", fixed, batch_size=32))[2] == [2, 2, 2]
    np.save(tmp_path / "odd.npy", samples(5, (5,)))
    assert "fixed to 2; 5 samples is not a multiple (use --limit 4)" in error(tmp_path / "odd.npy", fixed)
    np.save(tmp_path / "one.npy", samples(1, (5,)))
    assert "fixed to 2; 1 samples is not a multiple (too few samples)" in error(tmp_path / "one.npy", fixed)


def test_other_dynamic_dims_take_any_size(tmp_path):
    np.save(tmp_path / "d.npy", samples(2, (3, 5, 7)))
    assert gather(open_data(tmp_path / "d.npy", reduce_model(["N", 3, "H", "W"])))[0]["x"].shape == (2, 3, 5, 7)


@pytest.mark.parametrize("dims, shape", [(["N", 3, "H", "W"], (1, 3, 5, 7)), ([2, 3, "H", "W"], (2, 3, 5, 7)),
                                         (None, (1, 3, 5, 7)), (["N", 3, 5, 7], None)])
def test_input_shapes_take_dynamic_dims_from_the_data(tmp_path, dims, shape):
    """Dims beyond the batch that are dynamic (or a rank unknown) in the model come from the data;
    the batch is the model's fixed size, else 1; an input the model fixes needs no shape."""
    np.save(tmp_path / "d.npy", samples(2, (3, 5, 7)))
    source = open_data(tmp_path / "d.npy", reduce_model(dims))
    assert source.input_shapes() == ({} if shape is None else {"x": shape})
    assert source.input_shapes({"x": (4, 3, 5, 7)}) == {"x": (4, 3, 5, 7)}  # given, agreeing: kept


def test_input_shape_disagreeing_with_the_data_is_an_error_naming_both(tmp_path):
    np.save(tmp_path / "d.npy", samples(2, (3, 5, 7)))
    source = open_data(tmp_path / "d.npy", reduce_model(["N", 3, "H", "W"]))
    for given in [(1, 3, 5, 8), (1, 3, 35)]:
        with pytest.raises(OnnxPruneError) as info:
            source.input_shapes({"x": given})
        assert str(info.value) == (
            f"--input-shape x={','.join(map(str, given))} disagrees with --calib {tmp_path / 'd.npy'}: its samples of"
            " 'x' are [3, 5, 7] (the array of shape [2, 3, 5, 7]); drop --input-shape or make them agree")


# -- image folders


def write_image(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_image_folder_with_classes(model, tmp_path):
    pixels = RNG.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    for i, name in enumerate(["cat/a.png", "cat/b.png", "dog/c.png", "dog/deeper/d.png", "emu/e.png"]):
        write_image(tmp_path / name, pixels[i])
    source = open_data(tmp_path, model, batch_size=2)
    feeds, labels, sizes = gather(source)
    assert sizes == [2, 2, 1]
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2])
    np.testing.assert_allclose(feeds["input"], pixels.transpose(0, 3, 1, 2) / 255, atol=1e-6)


def test_image_options_resize_normalise_layout_channels(tmp_path):
    nhwc = tiny_model({"x": (TensorProto.FLOAT, ["N", 4, 6, 1])})
    pixels = RNG.integers(0, 256, (3, 8, 12), dtype=np.uint8)
    for i in range(3):
        write_image(tmp_path / f"{i}.png", pixels[i])
    options = parse_image_options(resize="4,6", mean="0.5", std="0.25", layout="nhwc", channels=1)
    assert options == ImageOptions((4, 6), (0.5,), (0.25,), "NHWC", 1)
    feeds, labels, _ = gather(open_data(tmp_path, nhwc, image_options=options))
    assert labels is None
    resized = np.stack([np.asarray(Image.fromarray(p).resize((6, 4), Image.Resampling.BILINEAR)) for p in pixels])
    np.testing.assert_allclose(feeds["x"][..., 0], (resized / 255 - 0.5) / 0.25, atol=1e-5)


def test_image_folder_for_uint8_model_gives_raw_pixels(tmp_path):
    gray = tiny_model({"image": (TensorProto.UINT8, ["N", 1, 4, 4])})
    pixels = RNG.integers(0, 256, (2, 4, 4), dtype=np.uint8)
    for i in range(2):
        write_image(tmp_path / f"{i}.jpg", np.repeat(pixels[i][..., None], 3, axis=2))
    feeds, _, _ = gather(open_data(tmp_path, gray))  # channels from the model: 1
    assert feeds["image"].dtype == np.uint8 and feeds["image"].shape == (2, 1, 4, 4)
    decoded = [np.asarray(Image.open(tmp_path / f"{i}.jpg").convert("L")) for i in range(2)]  # JPEG is lossy
    np.testing.assert_array_equal(feeds["image"][:, 0], decoded)
    with pytest.raises(OnnxPruneError, match="takes uint8 pixels as they are"):
        open_data(tmp_path, gray, image_options=ImageOptions(mean=(0.5,)))


def test_image_channels_follow_the_model(tmp_path):
    """Without --channels, grayscale if the model's channel dim (by --layout) is 1, else RGB."""
    pixels = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", pixels)
    gray = np.asarray(Image.fromarray(pixels).convert("L"))
    nhwc = gather(open_data(tmp_path, reduce_model(["N", 4, 4, 1]), image_options=ImageOptions(layout="NHWC")))[0]
    np.testing.assert_allclose(nhwc["x"], gray[None, :, :, None] / 255, atol=1e-6)
    rgb = gather(open_data(tmp_path, reduce_model(["N", "C", 4, 4])))[0]
    np.testing.assert_allclose(rgb["x"], pixels.transpose(2, 0, 1)[None] / 255, atol=1e-6)


# -- malformed data: one clear error each


@pytest.mark.parametrize("case, arrays, message", [
    ("wrong shape", {"input": samples(4, (3, 4, 4))},
     "array 'input' of shape [4, 3, 4, 4] does not match the model input 'input' [N, 3, 8, 8]"),
    ("wrong rank", {"input": samples(4, (3, 8))},
     "array 'input' of shape [4, 3, 8] does not match the model input 'input' [N, 3, 8, 8]"),
    ("unnamed wrong shape", {"x": samples(4, (1, 28, 28))},
     "array 'x' of shape [4, 1, 28, 28] does not match the model input 'input' [N, 3, 8, 8]"),
    ("scalar", {"input": np.float32(1)}, "array 'input' is a scalar"),
    ("missing input", {"labels": np.arange(4)}, "no array for the model input(s) 'input' (model inputs: 'input')"),
    ("unknown key", {"input": samples(4), "extra": samples(4)}, "unknown array(s) 'extra'"),
    ("label count", {"input": samples(4), "labels": np.arange(3)},
     "different sample counts (array 'input': 4, 'labels': 3)"),
    ("float labels", {"input": samples(4), "labels": np.zeros(4)}, "'labels' must be a 1-D integer array"),
    ("complex", {"input": samples(4).astype(np.complex64)},
     "array 'input': dtype complex64, the model input 'input' takes float32; cannot convert without loss"),
    ("pickled objects", {"input": np.array([None] * 4, dtype=object)}, "not a readable .npz file"),
    ("zero samples", {"input": samples(0)}, "no samples"),
    ("NaN", {"input": np.where(np.arange(5)[:, None, None, None] == 3, np.nan, samples(5))},
     "array 'input' for 'input': NaN in sample 3"),
    ("Inf", {"input": np.where(np.arange(5)[:, None, None, None] == 4, -np.inf, samples(5))},
     "array 'input' for 'input': Inf in sample 4"),
])
def test_malformed_npz(model, tmp_path, case, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    assert f"{tmp_path / 'd.npz'}: {message}" in error(tmp_path / "d.npz", model, batch_size=2)


@pytest.mark.parametrize("shape, dtype, stored, sizes", [
    ((10**6, 3, 8, 8), "<f4", 1000, "(768.0 MB) but holds 1.0 kB"),
    ((2**32, 2**32), "|u1", 0, "(18446744.1 TB) but holds 0 bytes"),  # 2**64 elements: no int64 product
])
def test_npz_declaring_more_data_than_it_holds(model, tmp_path, shape, dtype, stored, sizes):
    """Refused from its header, before numpy allocates what the header declares."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.writestr("input.npy", member.getvalue() + bytes(stored))
    assert (f"d.npz: array 'input' declares shape {list(shape)} of {np.dtype(dtype)} {sizes}"
            in error(tmp_path / "d.npz", model))


def test_npz_too_large_for_memory_points_to_npy(model, tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", input=samples(2))

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(np, "load", out_of_memory)
    assert "d.npz: its arrays do not fit in memory (a .npy file is read batch by batch)" \
        in error(tmp_path / "d.npz", model)


def test_wrong_dtype(tmp_path):
    gray = tiny_model({"image": (TensorProto.UINT8, ["N", 1, 4, 4])})
    np.save(tmp_path / "d.npy", samples(2, (1, 4, 4)))
    assert "the array: dtype float32, the model input 'image' takes uint8; cannot convert" \
        in error(tmp_path / "d.npy", gray)


def test_unnamed_dynamic_dims_show_as_question_marks(tmp_path):
    np.save(tmp_path / "d.npy", samples(2, (4,)))
    assert "the array of shape [2, 4] does not match the model input 'x' [?, 3]" \
        in error(tmp_path / "d.npy", reduce_model([None, 3]))


def test_string_inputs_are_fed_as_they_are(tmp_path):
    text = np.array([["a", "bc"], ["d", "e"], ["f", "g"]])
    np.save(tmp_path / "d.npy", text)
    feeds = gather(open_data(tmp_path / "d.npy", reduce_model(["N", 2], TensorProto.STRING), batch_size=2))[0]
    assert feeds["x"].dtype == object and feeds["x"].tolist() == text.tolist()


def test_bad_files(model, tmp_path):
    assert "no such file or folder" in error(tmp_path / "absent.npz", model)
    (tmp_path / "empty.npz").write_bytes(b"")
    assert "empty file" in error(tmp_path / "empty.npz", model)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert "not a readable .npz file" in error(tmp_path / "junk.npz", model)
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    assert "not a readable .npy file" in error(tmp_path / "junk.npy", model)
    (tmp_path / "d.csv").write_text("1,2")
    assert "expected a .npz or .npy file, a .txt of sentences or a folder of images" in error(tmp_path / "d.csv", model)
    os.mkfifo(tmp_path / "pipe.npz")
    assert "not a file" in error(tmp_path / "pipe.npz", model)


def test_bad_options(model, tmp_path):
    np.save(tmp_path / "d.npy", samples(2))
    assert "apply to image folders only" in error(tmp_path / "d.npy", model, image_options=ImageOptions())
    assert "--batch-size 0" in error(tmp_path / "d.npy", model, batch_size=0)
    assert gather(open_data(tmp_path / "d.npy", model, batch_size=1))[2] == [1, 1]  # the smallest batch
    assert "--limit 0" in error(tmp_path / "d.npy", model, limit=0)
    for kwargs, message in [({"resize": "28"}, "expected H,W"), ({"mean": "a,b"}, "comma-separated numbers"),
                            ({"std": "0"}, "must be positive")]:
        with pytest.raises(OnnxPruneError, match=message):
            parse_image_options(**kwargs)
    assert parse_image_options() is None


def test_model_without_inputs(tmp_path):
    constant = helper.make_model(helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value_float=1.0)], "g", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    ), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert error(tmp_path / "d.npz", constant) == "the model has no inputs to feed"


def test_npy_needs_a_single_input_model(tmp_path):
    two = tiny_model({"a": (TensorProto.FLOAT, ["N", 2]), "b": (TensorProto.FLOAT, ["N", 2])})
    np.save(tmp_path / "d.npy", samples(2, (2,)))
    assert "a .npy file holds one array, the model has inputs 'a', 'b': use a .npz" in error(tmp_path / "d.npy", two)


def test_bad_image_folders(model, tmp_path):
    assert "no PNG or JPEG images" in error(tmp_path, model)
    write_image(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "b.png", np.zeros((9, 8, 3), np.uint8))
    assert "b.png: image of shape [3, 9, 8], the first is [3, 8, 8] (use --resize H,W)" in error(tmp_path, model)
    assert "--mean: 3 values for 1 channel(s)" in error(tmp_path, model,
                                                        image_options=ImageOptions(mean=(0, 0, 0), channels=1))
    assert "--std: 2 values for 3 channel(s); give 1 or 3" in error(tmp_path, model,
                                                                    image_options=ImageOptions(std=(1, 2)))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert "broken.png: not a readable image" in error(tmp_path, model)
    write_image(tmp_path / "cls" / "c.png", np.zeros((8, 8, 3), np.uint8))
    assert "holds both images and sub-folders" in error(tmp_path, model)
