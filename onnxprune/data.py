"""Calibration and evaluation data: a .npz or .npy file or a folder of images, read in batches.

Samples lie along the first (batch) dim of every model input. ``open_data`` checks the data
against the model's inputs (names, ranks, fixed dims, dtypes, sample counts) before any batch
is handed out; NaN and Inf are found batch by batch while streaming.

Memory: a .npy file is memory-mapped and read one batch at a time, and an image folder is
decoded one batch of files at a time. The arrays of an uncompressed .npz file (np.savez) are
read from the file one batch at a time too (``_Stored``: a pass over the data holds a batch,
not the data set); those of a compressed one (np.savez_compressed) are loaded whole when the
file is opened (a batch in the middle of a deflated stream is reached only by inflating all
before it): data larger than memory belongs in .npy or an uncompressed .npz.
"""

from __future__ import annotations

import stat
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import onnx
from PIL import Image

from .errors import OnnxPruneError
from .graph.files import lookup
from .graph.io import first_line
from .graph.shapes import graph_inputs
from .text import TextOptions, text_feeds

LABELS = "labels"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUTS = ("NCHW", "NHWC")

Dim = int | str | None  # a fixed size, a symbolic name, or unnamed dynamic


@dataclass(frozen=True)
class InputSpec:
    """A model input: its name, numpy dtype and dims (None: rank unknown)."""

    name: str
    dtype: np.dtype
    dims: tuple[Dim, ...] | None

    def describe(self) -> str:
        """'[N, 1, 28, 28]': symbolic dims by name, unnamed dynamic ones as '?'."""
        if self.dims is None:
            return "[any shape]"
        return _fmt("?" if d is None else d for d in self.dims)


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a user feeds, with their dtypes and dims."""
    specs = []
    for vi in graph_inputs(model):
        tt = vi.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError):
            raise OnnxPruneError(f"model input '{vi.name}': unsupported element type {tt.elem_type}") from None
        dims = tuple(_dim(d) for d in tt.shape.dim) if tt.HasField("shape") else None
        specs.append(InputSpec(vi.name, dtype, dims))
    return specs


@dataclass(frozen=True)
class ImageOptions:
    """How images become a model input.

    Pixels are read as ``channels`` (1: grayscale, 3: RGB; None: the model's channel dim if
    it is 1 or 3, else 3), resized to ``resize`` (H, W) if given, and laid out as ``layout``.
    For a floating-point input they are scaled to [0, 1], then normalised per channel as
    (x - mean) / std; an integer input gets the raw 0-255 pixels.
    """

    resize: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str = "NCHW"
    channels: int | None = None


def parse_image_options(resize: str | None = None, mean: str | None = None, std: str | None = None,
                        layout: str | None = None, channels: int | None = None) -> ImageOptions | None:
    """ImageOptions from command-line strings ('H,W', comma-separated floats); None if none given."""
    if resize is None and mean is None and std is None and layout is None and channels is None:
        return None
    size = _numbers("--resize", resize, int)
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise OnnxPruneError(f"--resize {resize!r}: expected H,W with positive integers")
    std_values = _numbers("--std", std, float)
    if std_values is not None and min(std_values) <= 0:
        raise OnnxPruneError(f"--std {std!r}: every value must be positive")
    return ImageOptions(size, _numbers("--mean", mean, float), std_values,
                        (layout or "NCHW").upper(), channels)


class Batch(NamedTuple):
    """Feeds for one run, the samples' labels (or None), and the index of the first sample."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    start: int


@dataclass(frozen=True)
class _Column:
    """One array of samples: how messages name it, its shape and dtype, and a reader of [start, stop)."""

    what: str
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[int, int], np.ndarray]


class DataSource:
    """Checked data for a model: ``len()`` samples, iterated as ``Batch``es of ``batch_size``."""

    def __init__(self, path: Path, columns: dict[str, tuple[_Column, InputSpec]], labels: np.ndarray | None,
                 samples: int, batch_size: int):
        self.path = path
        self._columns = columns
        self._labels = labels
        self._samples = samples
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self._samples

    @property
    def has_labels(self) -> bool:
        return self._labels is not None

    @property
    def input_names(self) -> list[str]:
        return list(self._columns)

    def input_shapes(self, given: dict[str, tuple[int, ...]] | None = None,
                     option: str = "--calib") -> dict[str, tuple[int, ...]]:
        """The model's input shapes with its dynamic dims taken from the data: ``given``
        (``--input-shape``) completed by each input whose dims beyond the batch are dynamic or
        unknown in the model, at the data's sample shape (batch: the model's fixed size, else 1).
        A given shape that disagrees with the data's in rank or in a dim beyond the batch is an
        error naming both."""
        shapes = dict(given or {})
        for name, (column, spec) in self._columns.items():
            sample = tuple(int(d) for d in column.shape[1:])
            if name in shapes:
                have = shapes[name]
                if len(have) != len(column.shape) or tuple(have[1:]) != sample:
                    raise OnnxPruneError(
                        f"--input-shape {name}={','.join(map(str, have))} disagrees with {option} {self.path}:"
                        f" its samples of '{name}' are {_fmt(sample)} ({column.what} of shape {_fmt(column.shape)});"
                        f" drop --input-shape or make them agree")
            elif spec.dims is None or any(not isinstance(d, int) for d in spec.dims[1:]):
                batch = spec.dims[0] if spec.dims and isinstance(spec.dims[0], int) else 1
                shapes[name] = (batch, *sample)
        return shapes

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, self._samples, self.batch_size):
            stop = min(start + self.batch_size, self._samples)
            feeds = {name: _converted(self.path, column, spec, column.read(start, stop), start)
                     for name, (column, spec) in self._columns.items()}
            labels = None if self._labels is None else self._labels[start:stop]
            yield Batch(feeds, labels, start)


def open_data(path: str | Path, model: onnx.ModelProto, *, batch_size: int = 32, limit: int | None = None,
              image_options: ImageOptions | None = None, text_options: TextOptions | None = None) -> DataSource:
    """Open .npz, .npy, an image folder or a text file as data for ``model``, checked against its inputs.

    A .npz holds one array per model input, keyed by input name, and optionally ``labels``
    (1-D integers); a single-input model also takes one array under any other key. A .npy
    holds the one input of a single-input model. An image folder holds PNG/JPEG files, or
    class sub-folders of them whose sorted names are the labels 0..k-1 (see ImageOptions). A .txt
    holds sentences, one a line, tokenized with ``text_options`` (text.py). ``limit`` keeps the
    first N samples. A model whose batch dim is fixed to B gets batches of B.
    """
    path = Path(path)
    if batch_size < 1:
        raise OnnxPruneError(f"--batch-size {batch_size}: must be at least 1")
    if limit is not None and limit < 1:
        raise OnnxPruneError(f"--limit {limit}: must be at least 1")
    specs = model_inputs(model)
    if not specs:
        raise OnnxPruneError("the model has no inputs to feed")
    status = lookup(path)
    if status is None:
        raise OnnxPruneError(f"{path}: no such file or folder")
    if text_options is not None and (stat.S_ISDIR(status.st_mode) or path.suffix.lower() != ".txt"):
        raise OnnxPruneError(f"{path}: --tokenizer and --max-length apply to text (.txt) files only")
    if stat.S_ISDIR(status.st_mode):
        columns, labels = _image_folder(path, specs, image_options or ImageOptions())
    else:
        if image_options is not None:
            raise OnnxPruneError(f"{path}: --resize, --mean, --std, --layout and --channels apply to image folders only")
        if not stat.S_ISREG(status.st_mode):
            raise OnnxPruneError(f"{path}: not a file")
        if status.st_size == 0:
            raise OnnxPruneError(f"{path}: empty file")
        suffix = path.suffix.lower()
        if suffix == ".npz":
            columns, labels = _npz(path, specs)
        elif suffix == ".npy":
            columns, labels = _npy(path, specs), None
        elif suffix == ".txt":
            columns, labels = _text(path, specs, text_options), None
        else:
            raise OnnxPruneError(f"{path}: expected a .npz or .npy file, a .txt of sentences or a folder of images")
    paired = {spec.name: (columns[spec.name], spec) for spec in specs}
    for column, spec in paired.values():
        _check_column(path, column, spec)
    samples = _sample_count(path, columns, labels, limit)
    batch_size = _fixed_batch(path, specs, samples) or batch_size
    return DataSource(path, paired, None if labels is None else labels[:samples], samples, batch_size)


# -- formats


def _npz(path: Path, specs: list[InputSpec]) -> tuple[dict[str, _Column], np.ndarray | None]:
    try:
        stored = _npz_members(path)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: stored.get(key) or npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise OnnxPruneError(f"{path}: not a readable .npz file ({first_line(exc)})") from None
    except MemoryError:
        raise OnnxPruneError(f"{path}: its arrays do not fit in memory (a .npy file is read batch by batch)") from None
    labels = arrays.pop(LABELS, None)
    if len(specs) == 1 and len(arrays) == 1:
        (key, array), = arrays.items()
        return {specs[0].name: _array_column(f"array '{key}'", array)}, _checked_labels(path, labels)
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    unknown = [k for k in arrays if k not in names]
    if missing or unknown:
        parts = ([f"no array for the model input(s) {quoted(missing)}"] if missing else []) + \
                ([f"unknown array(s) {quoted(unknown)}"] if unknown else [])
        raise OnnxPruneError(f"{path}: {'; '.join(parts)} (model inputs: {quoted(names)})")
    columns = {name: _array_column(f"array '{name}'", arrays[name]) for name in names}
    return columns, _checked_labels(path, labels)


@dataclass(frozen=True)
class _Stored:
    """An array that a file holds uncompressed at ``offset`` in C order, read a slice of samples
    (``array[start:stop]``) at a time: a .npz member written by np.savez."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        n, per = max(stop - start, 0), int(np.prod(self.shape[1:], dtype=np.int64))
        try:
            flat = (np.fromfile(self.path, self.dtype, n * per, offset=self.offset + start * per * self.dtype.itemsize)
                    if n * per else np.empty(0, self.dtype))
        except OSError as exc:  # it is read on every pass: gone or unreadable since it was opened
            raise OnnxPruneError(f"{self.path}: cannot read samples {start}..{stop - 1} ({first_line(exc)})") from None
        if flat.size != n * per:
            raise OnnxPruneError(f"{self.path}: holds fewer samples than when it was opened (changed while in use)")
        return flat.reshape((n, *self.shape[1:]))


def _npz_members(path: Path) -> dict[str, _Stored]:
    """Each .npy member's header, read once: a member that declares more data than it holds is
    refused before numpy allocates what the header declares (a few bytes can declare a terabyte);
    returned, by key, are the arrays that can be read a batch at a time (``_Stored``): stored
    without compression, of samples (rank 1 or more) in C order, not labels. The others are
    loaded whole."""
    found = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                    else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(member)
                header = member.tell()
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if not dtype.hasobject and declared > info.file_size - header:
                raise OnnxPruneError(
                    f"{path}: array '{key}' declares shape {_fmt(shape)} of {dtype} "
                    f"({_bytes(declared)}) but holds {_bytes(info.file_size - header)}"
                )
            if (key != LABELS and info.compress_type == zipfile.ZIP_STORED and len(shape) >= 1 and not fortran
                    and not dtype.hasobject):
                start = _member_data(raw, info)
                if start is not None:
                    found[key] = _Stored(path, start + header, tuple(shape), dtype)
    return found


def _member_data(raw: BinaryIO, info: zipfile.ZipInfo) -> int | None:
    """Where a zip member's data begin in the file: after its local header, whose name and extra
    field may differ in length from the central directory's (None: no local header there)."""
    raw.seek(info.header_offset)
    local = raw.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        return None
    name, extra = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name + extra


def _bytes(n: int) -> str:
    """1234567 -> '1.2 MB'."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _npy(path: Path, specs: list[InputSpec]) -> dict[str, _Column]:
    if len(specs) != 1:
        raise OnnxPruneError(
            f"{path}: a .npy file holds one array, the model has inputs {quoted(s.name for s in specs)}: use a .npz"
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise OnnxPruneError(f"{path}: not a readable .npy file ({first_line(exc)})") from None
    return {specs[0].name: _array_column("the array", array)}


def _text(path: Path, specs: list[InputSpec], options: TextOptions | None) -> dict[str, _Column]:
    if options is None:
        raise OnnxPruneError(f"{path}: a .txt file is text: give --tokenizer tokenizer.json or vocab.txt")
    ids = next((s for s in specs if s.name == "input_ids"), None)
    fixed = ids.dims[1] if ids is not None and ids.dims is not None and len(ids.dims) == 2 \
        and isinstance(ids.dims[1], int) else None
    arrays = text_feeds(path, [s.name for s in specs], options, fixed)
    return {name: _array_column(f"the tokenized '{name}'", array) for name, array in arrays.items()}


def _array_column(what: str, array: np.ndarray) -> _Column:
    return _Column(what, array.shape, array.dtype, lambda start, stop: np.asarray(array[start:stop]))


def _checked_labels(path: Path, labels: np.ndarray | None) -> np.ndarray | None:
    if labels is None:
        return None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise OnnxPruneError(
            f"{path}: 'labels' must be a 1-D integer array, not {labels.dtype} of shape {_fmt(labels.shape)}"
        )
    return labels.astype(np.int64)


def _image_folder(folder: Path, specs: list[InputSpec],
                  options: ImageOptions) -> tuple[dict[str, _Column], np.ndarray | None]:
    if len(specs) != 1:
        raise OnnxPruneError(
            f"{folder}: an image folder feeds one input, the model has inputs {quoted(s.name for s in specs)}"
        )
    spec = specs[0]
    if options.layout not in LAYOUTS:
        raise OnnxPruneError(f"--layout {options.layout!r}: expected NCHW or NHWC")
    if spec.dims is not None and len(spec.dims) != 4:
        raise OnnxPruneError(
            f"{folder}: images make 4-D batches, the model input '{spec.name}' is {spec.describe()}"
        )
    channels = options.channels or _model_channels(spec, options.layout)
    if channels not in (1, 3):
        raise OnnxPruneError(f"--channels {channels}: expected 1 or 3")
    floating = np.issubdtype(spec.dtype, np.floating)
    if not floating and (options.mean is not None or options.std is not None):
        raise OnnxPruneError(
            f"--mean/--std: the model input '{spec.name}' takes {spec.dtype} pixels as they are, not normalised floats"
        )
    mean = _per_channel("--mean", options.mean, channels, 0.0)
    std = _per_channel("--std", options.std, channels, 1.0)
    files, labels = _image_files(folder)

    def load(file: Path) -> np.ndarray:
        pixels = _read_image(file, channels, options.resize)
        sample = (pixels.astype(np.float32) / 255 - mean) / std if floating else pixels
        return sample.transpose(2, 0, 1) if options.layout == "NCHW" else sample

    first = load(files[0])

    def read(start: int, stop: int) -> np.ndarray:
        batch = [load(f) for f in files[start:stop]]
        for file, sample in zip(files[start:stop], batch):
            if sample.shape != first.shape:
                raise OnnxPruneError(
                    f"{file}: image of shape {_fmt(sample.shape)}, the first is {_fmt(first.shape)} (use --resize H,W)"
                )
        return np.stack(batch)

    column = _Column("the images", (len(files), *first.shape), first.dtype, read)
    return {spec.name: column}, labels


def _image_files(folder: Path) -> tuple[list[Path], np.ndarray | None]:
    """The folder's images (sorted) and, with class sub-folders, their labels."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    top = _images_in(folder.glob("*"))
    if classes and top:
        raise OnnxPruneError(
            f"{folder}: holds both images and sub-folders; put every image in a class sub-folder, or use none"
        )
    if not classes:
        files, labels = top, None
    else:
        per_class = [_images_in(d.rglob("*")) for d in classes]
        files = [f for found in per_class for f in found]
        labels = np.concatenate([np.full(len(found), k, np.int64) for k, found in enumerate(per_class)])
    if not files:
        raise OnnxPruneError(f"{folder}: no PNG or JPEG images")
    return files, labels


def _images_in(paths: Iterator[Path]) -> list[Path]:
    return sorted(p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_image(file: Path, channels: int, resize: tuple[int, int] | None) -> np.ndarray:
    """H x W x channels uint8 pixels."""
    try:
        with Image.open(file) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if resize is not None:
                image = image.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise OnnxPruneError(f"{file}: not a readable image ({first_line(exc)})") from None
    return pixels.reshape(*pixels.shape[:2], channels)


def _model_channels(spec: InputSpec, layout: str) -> int:
    """The model's channel count if fixed to 1 or 3, else 3."""
    dim = spec.dims[1 if layout == "NCHW" else 3] if spec.dims is not None else None
    return dim if dim in (1, 3) else 3


def _per_channel(option: str, values: tuple[float, ...] | None, channels: int, default: float) -> np.ndarray:
    if values is None:
        return np.full(channels, default, np.float32)
    if len(values) not in (1, channels):
        raise OnnxPruneError(f"{option}: {len(values)} values for {channels} channel(s); give 1 or {channels}")
    return np.broadcast_to(np.asarray(values, np.float32), (channels,))


# -- checks


def _sample_count(path: Path, columns: dict[str, _Column], labels: np.ndarray | None, limit: int | None) -> int:
    """The common number of samples, limited; an error if the arrays disagree or hold none."""
    counts = {column.what: column.shape[0] for column in columns.values()}
    if labels is not None:
        counts["'labels'"] = len(labels)
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{what}: {n}" for what, n in counts.items())
        raise OnnxPruneError(f"{path}: different sample counts ({listed})")
    samples = next(iter(counts.values()))
    if samples == 0:
        raise OnnxPruneError(f"{path}: no samples")
    return samples if limit is None else min(samples, limit)


def _check_column(path: Path, column: _Column, spec: InputSpec) -> None:
    """Rank, fixed sample dims and dtype of ``column`` against the model input."""
    shape = column.shape
    if not shape:
        raise OnnxPruneError(f"{path}: {column.what} is a scalar; samples go along its first dim")
    if spec.dims is not None and (len(shape) != len(spec.dims) or any(
            isinstance(want, int) and want != have for want, have in zip(spec.dims[1:], shape[1:]))):
        raise OnnxPruneError(
            f"{path}: {column.what} of shape {_fmt(shape)} does not match the model input '{spec.name}' {spec.describe()}"
        )
    if not _convertible(column.dtype, spec.dtype):
        raise OnnxPruneError(
            f"{path}: {column.what}: dtype {column.dtype}, the model input '{spec.name}' takes {spec.dtype};"
            f" cannot convert without loss"
        )


def _convertible(source: np.dtype, target: np.dtype) -> bool:
    """Same dtype, a safe cast, float to float (float64 data for float32 models), or integer to float."""
    if source == target or np.can_cast(source, target, "safe"):
        return True
    if np.issubdtype(target, np.floating):
        return np.issubdtype(source, np.floating) or np.issubdtype(source, np.integer) or source == np.bool_
    return False


def _fixed_batch(path: Path, specs: list[InputSpec], samples: int) -> int | None:
    """The batch size the model fixes, if any; the sample count must be a multiple of it."""
    fixed = {s.dims[0] for s in specs if s.dims and isinstance(s.dims[0], int)}
    if not fixed:
        return None
    if len(fixed) > 1:
        raise OnnxPruneError(f"the model's inputs fix different batch sizes {sorted(fixed)}")
    size = fixed.pop()
    if samples % size:
        hint = f"use --limit {samples - samples % size}" if samples > size else "too few samples"
        raise OnnxPruneError(
            f"{path}: the model's batch dim is fixed to {size}; {samples} samples is not a multiple ({hint})"
        )
    return size


def _converted(path: Path, column: _Column, spec: InputSpec, batch: np.ndarray, start: int) -> np.ndarray:
    """The batch in the model's dtype, checked for NaN and Inf."""
    batch = np.ascontiguousarray(batch, dtype=spec.dtype)
    if np.issubdtype(batch.dtype, np.floating):
        bad = ~np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            kind = "NaN" if np.isnan(batch[index]).any() else "Inf"
            raise OnnxPruneError(f"{path}: {column.what} for '{spec.name}': {kind} in sample {start + index}")
    return batch


# -- formatting


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    if d.HasField("dim_value") and d.dim_value > 0:
        return d.dim_value
    return d.dim_param or None


def _numbers(option: str, text: str | None, kind: type) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise OnnxPruneError(f"{option} {text!r}: expected comma-separated numbers") from None


def _fmt(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def quoted(names) -> str:
    return ", ".join(f"'{n}'" for n in names)

