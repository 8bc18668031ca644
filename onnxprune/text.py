"""Text data: a file of sentences, one a line, tokenized into a transformer's input_ids, attention_mask and token_type_ids.

Tokenizing is left to the ``tokenizers`` package (the ``text`` extra): a ``tokenizer.json``
is loaded as it is (Tokenizer.from_file), a ``vocab.txt`` becomes BERT's lower-casing WordPiece
tokenizer with its [CLS] and [SEP]. Every sentence is cut at ``max_length`` tokens and padded
to one length for the whole file: ``max_length`` where it is given (or where the model fixes
its sequence dim), else the longest sentence's, so that every batch has the same shape (PRO
and the shapes taken from the data read batches together); attention_mask marks the padding
with 0, and the calibration statistics leave those tokens out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OnnxPruneError
from .graph.io import first_line

DEFAULT_MAX_LENGTH = 128
FEEDS = ("input_ids", "attention_mask", "token_type_ids")  # the model inputs text data can feed
INSTALL = "pip install 'onnxprune[text]'"


@dataclass(frozen=True)
class TextOptions:
    """How text becomes token ids: ``tokenizer`` (tokenizer.json or a WordPiece vocab.txt) and
    ``max_length`` (None: truncate at DEFAULT_MAX_LENGTH and pad to the longest sentence)."""

    tokenizer: Path
    max_length: int | None = None


def parse_text_options(tokenizer: Path | None, max_length: int | None) -> TextOptions | None:
    """TextOptions from the command line; None if no --tokenizer (--max-length alone is an error)."""
    if tokenizer is None:
        if max_length is not None:
            raise OnnxPruneError("--max-length applies to text data: give --tokenizer too")
        return None
    if max_length is not None and max_length < 2:
        raise OnnxPruneError(f"--max-length {max_length}: must be at least 2 (room for [CLS] and [SEP])")
    return TextOptions(Path(tokenizer), max_length)


def sentences(path: Path) -> list[str]:
    """The file's non-blank lines, stripped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise OnnxPruneError(f"{path}: not UTF-8 text ({first_line(exc)})") from None
    except OSError as exc:
        raise OnnxPruneError(f"{path}: unreadable ({first_line(exc)})") from None
    lines = [line.strip() for line in text.splitlines()]
    found = [line for line in lines if line]
    if not found:
        raise OnnxPruneError(f"{path}: no sentences (the file has no non-blank line)")
    return found


def load_tokenizer(path: Path):
    """A ``tokenizers`` Tokenizer from tokenizer.json, or BERT's uncased WordPiece from vocab.txt."""
    if not path.is_file():
        raise OnnxPruneError(f"--tokenizer {path}: no such file")
    try:
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer
    except ImportError:
        raise OnnxPruneError(f"--tokenizer needs the 'tokenizers' package: {INSTALL}") from None
    try:
        if path.suffix.lower() == ".json":
            return Tokenizer.from_file(str(path))
        return BertWordPieceTokenizer(str(path), lowercase=True)
    except Exception as exc:  # tokenizers raises its own exception types
        raise OnnxPruneError(f"--tokenizer {path}: not a tokenizer.json or WordPiece vocab.txt "
                             f"({first_line(exc)})") from None


def pad_id(tokenizer) -> int:
    """The id padding gets: the tokenizer's own padding id, else [PAD]'s, else 0."""
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    found = tokenizer.token_to_id("[PAD]")
    return 0 if found is None else int(found)


def encode(path: Path, options: TextOptions, fixed_length: int | None = None) -> dict[str, np.ndarray]:
    """input_ids, attention_mask and token_type_ids [sentences, length] (int64) of the file's
    sentences, each cut at the length and padded to it: ``options.max_length``, else the model's
    ``fixed_length``, else the longest sentence's (at most DEFAULT_MAX_LENGTH tokens)."""
    lines = sentences(path)
    tokenizer = load_tokenizer(options.tokenizer)
    limit = options.max_length or fixed_length or DEFAULT_MAX_LENGTH
    pad = pad_id(tokenizer)
    tokenizer.no_padding()
    tokenizer.enable_truncation(limit)
    try:
        encodings = tokenizer.encode_batch(lines)
    except Exception as exc:
        raise OnnxPruneError(f"{path}: --tokenizer {options.tokenizer} failed ({first_line(exc)})") from None
    length = limit if options.max_length or fixed_length else max(len(e.ids) for e in encodings)
    arrays = {"input_ids": np.full((len(lines), length), pad, np.int64),
              "attention_mask": np.zeros((len(lines), length), np.int64),
              "token_type_ids": np.zeros((len(lines), length), np.int64)}
    for i, e in enumerate(encodings):
        n = len(e.ids)
        arrays["input_ids"][i, :n] = e.ids
        arrays["attention_mask"][i, :n] = e.attention_mask
        arrays["token_type_ids"][i, :n] = e.type_ids
    return arrays


def text_feeds(path: Path, names: list[str], options: TextOptions,
               fixed_length: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``encode`` that the model's inputs ``names`` take; every input must be one of FEEDS."""
    other = [n for n in names if n not in FEEDS]
    if other or "input_ids" not in names:
        wanted = ", ".join(f"'{n}'" for n in FEEDS)
        raise OnnxPruneError(f"{path}: text feeds a model whose inputs are 'input_ids' and some of {wanted};"
                             f" this model's are {', '.join(repr(n) for n in names)} (use a .npz)")
    arrays = encode(path, options, fixed_length)
    return {name: arrays[name] for name in names}
