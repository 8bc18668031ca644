"""python -m onnxprune: the same command line as `onnxprune`."""

from .cli import main

main()
