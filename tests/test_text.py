"""Text data: a .txt of sentences tokenized with --tokenizer (vocab.txt or tokenizer.json) into input_ids,
attention_mask and token_type_ids, for `prune --calib`, `eval --data` and `bench --data`; the refusals."""

import json
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from encoders import encoder

from onnxprune import cli
from onnxprune.bench import benchmark
from onnxprune.cli import main
from onnxprune.data import open_data
from onnxprune.errors import OnnxPruneError
from onnxprune.text import TextOptions, encode, load_tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog", "##s", "ran"]
ID = {token: i for i, token in enumerate(VOCAB)}
SENTENCES = ["The cat sat on the mat", "", "A DOG ran", "   ", "cats sat"]


def ids(*tokens):
    return [ID[t] for t in ("[CLS]", *tokens, "[SEP]")]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (tmp_path / "s.txt").write_text("\n".join(SENTENCES) + "\n")
    (tmp_path / "empty.txt").write_text("\n  \n")
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_missing_tokenizers_package_is_one_clear_error(files, monkeypatch):
    """CI installs only '.[test]': without the package, --tokenizer says how to install it."""
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers now raises ImportError
    with pytest.raises(OnnxPruneError, match=r"--tokenizer needs the 'tokenizers' package: pip install 'onnxprune\[text\]'"):
        load_tokenizer(files / "vocab.txt")
    onnx.save(encoder(vocab=len(VOCAB), mask=True), files / "enc.onnx")
    result = invoke("eval", files / "enc.onnx", "--data", files / "s.txt", "--tokenizer", files / "vocab.txt")
    assert result.exit_code == 2 and "needs the 'tokenizers' package" in result.stderr and result.stdout == ""


def test_wordpiece_vocab_lower_cases_pads_to_the_longest_and_truncates(files):
    pytest.importorskip("tokenizers")
    got = encode(files / "s.txt", TextOptions(files / "vocab.txt"))
    expected = [ids("the", "cat", "sat", "on", "the", "mat"), ids("a", "dog", "ran"), ids("cat", "##s", "sat")]
    assert got["input_ids"].tolist() == [row + [ID["[PAD]"]] * (8 - len(row)) for row in expected]  # blank lines skipped
    assert got["attention_mask"].tolist() == [[1] * len(row) + [0] * (8 - len(row)) for row in expected]
    assert got["token_type_ids"].tolist() == [[0] * 8] * 3
    cut = encode(files / "s.txt", TextOptions(files / "vocab.txt", max_length=4))
    assert cut["input_ids"].tolist() == [ids("the", "cat"), ids("a", "dog"), ids("cat", "##s")]
    padded = encode(files / "s.txt", TextOptions(files / "vocab.txt", max_length=10))
    assert padded["input_ids"].shape == (3, 10) and padded["attention_mask"].sum() == 8 + 5 + 5
    assert encode(files / "s.txt", TextOptions(files / "vocab.txt"), fixed_length=6)["input_ids"].shape == (3, 6)


def test_tokenizer_json_gives_what_its_vocab_gives(files):
    tokenizers = pytest.importorskip("tokenizers")
    tokenizers.implementations.BertWordPieceTokenizer(str(files / "vocab.txt"), lowercase=True).save(
        str(files / "tokenizer.json"))
    from_json = encode(files / "s.txt", TextOptions(files / "tokenizer.json"))
    from_vocab = encode(files / "s.txt", TextOptions(files / "vocab.txt"))
    assert all(np.array_equal(from_json[k], from_vocab[k]) for k in from_vocab)


def test_the_model_inputs_take_their_arrays_and_its_fixed_length(files):
    """An encoder with input_ids and attention_mask [batch, 8]: two arrays, padded to 8."""
    pytest.importorskip("tokenizers")
    data = open_data(files / "s.txt", encoder(vocab=len(VOCAB), mask=True, seq=8), batch_size=2,
                     text_options=TextOptions(files / "vocab.txt"))
    assert len(data) == 3 and not data.has_labels
    batches = list(data)
    assert [sorted(b.feeds) for b in batches] == [["attention_mask", "input_ids"]] * 2
    assert batches[0].feeds["input_ids"].shape == (2, 8) and batches[1].feeds["input_ids"].shape == (1, 8)


def test_prune_and_eval_read_sentences(files):
    """REAP calibrated on the sentences fits every layer it rebuilds (both FFNs' second projections
    and both attentions' output projections) on their real tokens only (8 + 5 + 5 rows),
    and eval --reference compares the pruned model's pooled outputs with the original's."""
    pytest.importorskip("tokenizers")
    onnx.save(encoder(vocab=len(VOCAB), mask=True, seq=8, layers=2, ffn=32), files / "enc.onnx")
    result = invoke("prune", files / "enc.onnx", "-o", files / "out.onnx", "--method", "reap", "--ratio", "0.5",
                    "--calib", files / "s.txt", "--tokenizer", files / "vocab.txt", "--json", "-q")
    assert result.exit_code == 0, result.output
    assert [n["rows"] for n in json.loads(result.stdout)["reconstruction"]] == [18] * 4
    result = invoke("eval", files / "out.onnx", "--data", files / "s.txt", "--tokenizer", files / "vocab.txt",
                    "--reference", files / "enc.onnx", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["samples"] == 3 and 0 < data["cosine_min"] <= data["cosine_mean"] < 1


def test_bench_times_the_sentences_as_prune_and_eval_read_them(files, monkeypatch):
    """bench --data s.txt --tokenizer vocab.txt times the model on the sentences' tokens, padded to
    the model's length (or --max-length) as prune and eval read them: ids in the vocabulary, the
    real tokens' attention_mask 1; --tokenizer without --data is refused."""
    pytest.importorskip("tokenizers")
    onnx.save(encoder(vocab=len(VOCAB), mask=True, seq=8), files / "enc.onnx")
    seen = {}

    def spy(models, batches, runs, data=None, **kw):
        seen.update(data)
        return benchmark(models, batches, runs, data=data, **kw)

    monkeypatch.setattr(cli, "benchmark", spy)
    result = invoke("bench", files / "enc.onnx", "--data", files / "s.txt", "--tokenizer", files / "vocab.txt",
                    "--batch", "2", "--runs", "1", "--rounds", "1", "--json")
    assert result.exit_code == 0, result.output
    expected = encode(files / "s.txt", TextOptions(files / "vocab.txt"), fixed_length=8)
    assert sorted(seen) == ["attention_mask", "input_ids"]
    assert all(seen[k].tolist() == expected[k][:2].tolist() for k in seen)
    assert [r["batch"] for r in json.loads(result.stdout)] == [2]
    refused = invoke("bench", files / "enc.onnx", "--tokenizer", files / "vocab.txt")
    assert refused.exit_code == 2 and "--tokenizer and --max-length apply to --data" in refused.stderr


@pytest.mark.parametrize("args, message", [
    (["--data", "s.txt"], "s.txt: a .txt file is text: give --tokenizer tokenizer.json or vocab.txt"),
    (["--data", "empty.txt", "--tokenizer", "vocab.txt"], "empty.txt: no sentences (the file has no non-blank line)"),
    (["--data", "d.npz", "--tokenizer", "vocab.txt"], "d.npz: --tokenizer and --max-length apply to text (.txt) files only"),
    (["--data", "s.txt", "--tokenizer", "absent.json"], "absent.json: no such file"),
    (["--data", "s.txt", "--max-length", "8"], "--max-length applies to text data: give --tokenizer too"),
    (["--data", "s.txt", "--tokenizer", "vocab.txt", "--max-length", "1"], "--max-length 1: must be at least 2"),
])
def test_refusals(files, args, message):
    onnx.save(encoder(vocab=len(VOCAB), mask=True), files / "enc.onnx")
    np.savez(files / "d.npz", input_ids=np.zeros((2, 8), np.int64), attention_mask=np.ones((2, 8), np.int64))
    result = invoke("eval", files / "enc.onnx", *[files / a if a.endswith((".txt", ".npz", ".json")) else a for a in args])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr


def test_text_feeds_only_a_tokenizers_inputs(files):
    pytest.importorskip("tokenizers")
    onnx.save(encoder(), files / "float.onnx")  # input [batch, 8, 16] floats
    result = invoke("eval", files / "float.onnx", "--data", files / "s.txt", "--tokenizer", files / "vocab.txt")
    assert result.exit_code == 2
    assert "text feeds a model whose inputs are 'input_ids' and some of" in result.stderr
