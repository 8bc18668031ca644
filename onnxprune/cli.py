"""Command line: thin wrappers that parse, call the library and print."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .config import DEFAULT_ROUND_TO, Method, PruneConfig
from .cost import model_cost
from .errors import OnnxPruneError
from .graph import load, save
from .groups import analyze
from .normalize import normalize
from .prune import prune
from .report import inspect_json, inspect_table, prune_summary
from .shapes import parse_input_shapes

INPUT_SHAPE = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME=D0,D1,...",
    help="Fix a model input's dynamic dims (repeatable). A dynamic batch dim counts as 1.",
)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OnnxPruneError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="onnxprune")
def main():
    """Prune channels of ONNX CNNs and keep their accuracy without retraining."""


@main.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@INPUT_SHAPE
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def inspect(model, input_shapes, as_json):
    """Show the channel groups of MODEL, which are prunable, and its cost."""
    normalized, _ = normalize(load(model))
    analysis = analyze(normalized, parse_input_shapes(input_shapes))
    cost = model_cost(analysis.graph, analysis.shapes)
    if as_json:
        click.echo(json.dumps(inspect_json(analysis, cost), indent=2))
    else:
        click.echo(inspect_table(analysis, cost))


@main.command(name="prune")
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the pruned model.")
@click.option("--method", type=click.Choice([m.value for m in Method]), default=Method.L1.value, show_default=True,
              help="How channels are chosen.")
@click.option("--ratio", type=float, help="Fraction of channels removed from every prunable group (0 <= R < 1).")
@click.option("--keep-flops", type=float, help="Fraction of the MACs to keep (0 < F <= 1).")
@click.option("--round-to", type=int, default=DEFAULT_ROUND_TO, show_default=True,
              help="Kept channel counts are multiples of N (fast onnxruntime CPU kernels want 8 or 16).")
@INPUT_SHAPE
@click.option("--report", type=click.Path(path_type=Path), help="Also write the JSON report to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout.")
def prune_cmd(model, output, method, ratio, keep_flops, round_to, input_shapes, report, as_json):
    """Remove channels from MODEL and write the smaller model to OUTPUT."""
    if output.exists() and model.exists() and output.resolve() == model.resolve():
        raise OnnxPruneError(f"{output}: the output path is the input model; choose another")
    config = PruneConfig(Method(method), ratio, keep_flops, round_to, parse_input_shapes(input_shapes))
    result = prune(load(model), config)
    data = result.to_json()
    if report is not None:
        _write_text(report, json.dumps(data, indent=2) + "\n", forbidden=model)
    save(result.model, output, input_path=model)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(prune_summary(result, str(model), str(output)))


def _write_text(path: Path, text: str, forbidden: Path) -> None:
    if path.exists() and forbidden.exists() and path.resolve() == forbidden.resolve():
        raise OnnxPruneError(f"{path}: the report path is the input model; choose another")
    try:
        path.write_text(text)
    except OSError as exc:
        raise OnnxPruneError(f"{path}: cannot write the report ({exc.strerror or exc})") from None
