"""Command line: thin wrappers that parse, call the library and print."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import click

from . import methods
from .analysis.cost import cost_of, model_cost
from .analysis.groups import analyze
from .bench import benchmark, table
from .calibration.statistics import Calibration, StatsMode
from .config import DATA_METHOD, DEFAULT_METHOD, DEFAULT_ROUND_TO, Method, PruneConfig, default_method, pro_by_default
from .data import DataSource, open_data, parse_image_options
from .errors import OnnxPruneError
from .evaluate import evaluate
from .graph.io import load, save
from .graph.runtime import Device, providers
from .graph.shapes import parse_input_shapes
from .graph.validate import validate
from .passes.normalize import normalize
from .passes.srn import serialize_residuals
from .progress import no_progress
from .prune import prune
from .report import inspect_json, inspect_table, prune_summary, srn_summary

MODEL = click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
INPUT_SHAPE = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME=D0,D1,...",
    help="Fix a model input's dynamic dims (repeatable). A dynamic batch dim counts as 1.",
)
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
DEVICE = click.option("--device", type=click.Choice([d.value for d in Device]), default=Device.AUTO.value,
                      show_default=True, help="Where onnxruntime runs: CUDA when onnxruntime-gpu finds a GPU.")


def image_options(command):
    """Options for folders of images (calibration or evaluation data)."""
    for option in reversed([
        click.option("--resize", metavar="H,W", help="Images: resize to H x W (bilinear)."),
        click.option("--mean", metavar="M[,M,M]", help="Images: per-channel mean on the [0, 1] scale (float inputs)."),
        click.option("--std", metavar="S[,S,S]", help="Images: per-channel std on the [0, 1] scale (float inputs)."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False),
                     help="Images: [default: NCHW]."),
        click.option("--channels", type=click.Choice(["1", "3"]),
                     help="Images: 1 (grayscale) or 3 (RGB) [default: the model's channel dim if 1 or 3, else 3]."),
    ]):
        command = option(command)
    return command


def _open(path, model, batch_size, limit, resize, mean, std, layout, channels) -> DataSource:
    options = parse_image_options(resize, mean, std, layout, int(channels) if channels else None)
    return open_data(path, model, batch_size=batch_size, limit=limit, image_options=options)


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
@MODEL
@INPUT_SHAPE
@JSON
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
@MODEL
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the pruned model.")
@click.option("--method", type=click.Choice(methods.names()),
              help=f"How channels are chosen [default: {DATA_METHOD} with --calib, else {DEFAULT_METHOD}]: " + "; ".join(
                  f"{m.name}: {m.summary}" + (" (needs --calib)" if m.needs_data else "") for m in methods.all_methods()))
@click.option("--ratio", type=float, help="Fraction of channels removed from every prunable group (0 <= R < 1).")
@click.option("--keep-flops", type=float, help="Fraction of the MACs to keep (0 < F <= 1).")
@click.option("--keep-params", type=float, help="Fraction of the parameters to keep (0 < P <= 1).")
@click.option("--pro/--no-pro", default=None,
              help="Choose each layer's width by its effect on the final output (PRO); needs --calib and "
                   "--keep-flops or --keep-params [default: on when both are given].")
@click.option("--pro-samples", type=int, default=256, show_default=True,
              help="Calibration samples PRO measures the final-output error on.")
@click.option("--exclude", "exclude", multiple=True, metavar="PATTERN",
              help="Leave the channels of layers whose node name matches this glob as they are (repeatable); "
                   "`inspect` lists the names.")
@click.option("--round-to", type=int, default=DEFAULT_ROUND_TO, show_default=True,
              help="Kept channel counts are multiples of N (fast onnxruntime CPU kernels want 8 or 16).")
@click.option("--calib", "calib_path", type=click.Path(path_type=Path),
              help="Calibration data for the data methods and --pro: .npz, .npy or a folder of images.")
@click.option("--calib-limit", type=int, help="Use only the first N calibration samples.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Calibration samples per run.")
@click.option("--cache-mb", type=int, default=256, show_default=True,
              help="MiB of activations kept between layers, so that each layer's statistics run only the "
                   "graph after the last pruned group; 0 reruns from the input every time.")
@click.option("--srn", is_flag=True, help="Serialise residual blocks first (SRN) so layers tied by shortcuts "
              "can be pruned; --keep-flops stays relative to the original model.")
@click.option("--independent", is_flag=True,
              help="Reconstruct every layer from the ORIGINAL model's inputs instead of the pruned model's.")
@click.option("--stats", type=click.Choice([m.value for m in StatsMode]), default=StatsMode.HOST.value,
              show_default=True, help="Reduce calibration statistics on the host (numpy) or inside onnxruntime.")
@DEVICE
@image_options
@INPUT_SHAPE
@click.option("--report", type=click.Path(path_type=Path), help="Also write the JSON report to this file.")
@JSON
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def prune_cmd(model, output, method, ratio, keep_flops, keep_params, pro, pro_samples, exclude, round_to, calib_path,
              calib_limit, batch_size, cache_mb, srn, independent, stats, device, resize, mean, std, layout,
              channels, input_shapes, report, as_json, quiet):
    """Remove channels from MODEL and write the smaller model to OUTPUT."""
    _refuse_overwriting(model, output)
    has_data = calib_path is not None
    method = method or default_method(has_data)
    if pro is None:
        pro = pro_by_default(has_data, keep_flops=keep_flops, keep_params=keep_params)
    config = PruneConfig(Method(method), ratio, keep_flops, round_to, parse_input_shapes(input_shapes), srn,
                         keep_params, pro, pro_samples, exclude)
    uses_data = config.selection.needs_data or config.pro
    if has_data and not uses_data:
        data_methods = ", ".join(m.name for m in methods.all_methods() if m.needs_data)
        raise OnnxPruneError(f"--calib is for the data methods ({data_methods}) and --pro, not --method {method}"
                             " with --no-pro or --ratio")
    if not uses_data and not config.selection.reconstructs:
        click.echo(f"warning: --method {method} without calibration data chooses channels by their weights "
                   "and leaves the remaining weights as they are: without fine-tuning it loses accuracy "
                   f"(give --calib DATA to prune with {DATA_METHOD}, which reconstructs the layers)", err=True)
    loaded = load(model)
    calibration = None
    if uses_data:
        if calib_path is None:
            needs = f"--method {method}" if config.selection.needs_data else "--pro"
            raise OnnxPruneError(f"{needs} needs calibration data: give --calib DATA")
        if batch_size < 1:
            raise OnnxPruneError(f"--batch-size {batch_size}: must be a positive integer")
        if cache_mb < 0:
            raise OnnxPruneError(f"--cache-mb {cache_mb}: must be 0 (no cache) or more")
        data = _open(calib_path, loaded, batch_size, calib_limit, resize, mean, std, layout, channels)
        config = replace(config, input_shapes=data.input_shapes(config.input_shapes, "--calib"))
        calibration = Calibration(lambda: (b.feeds for b in data), len(data), StatsMode(stats),
                                  tuple(providers(Device(device))), sequential=not independent,
                                  cache_bytes=cache_mb << 20)
    result = prune(loaded, config, calibration, no_progress if quiet or as_json else _progress)
    data = result.to_json()
    if report is not None:
        _write_text(report, json.dumps(data, indent=2) + "\n", forbidden=model)
    save(result.model, output, input_path=model)
    click.echo(json.dumps(data, indent=2) if as_json else prune_summary(result, str(model), str(output)))


@main.command(name="srn")
@MODEL
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the serial model.")
@INPUT_SHAPE
@JSON
def srn_cmd(model, output, input_shapes, as_json):
    """Rewrite residual blocks of MODEL into equivalent serial convolutions (SRN)."""
    _refuse_overwriting(model, output)
    shapes = parse_input_shapes(input_shapes)
    normalized, _ = normalize(load(model))
    serial, report = serialize_residuals(normalized, shapes)
    validate(serial, shapes)
    data = report.to_json(cost_of(normalized, shapes).macs, cost_of(serial, shapes).macs)
    save(serial, output, input_path=model)
    click.echo(json.dumps(data, indent=2) if as_json else srn_summary(data, str(model), str(output)))


@main.command(name="eval")
@MODEL
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help=".npz (arrays named after the inputs, optional 'labels'), .npy, or a folder of "
                   "PNG/JPEG images (class sub-folders, sorted, give labels 0..k-1).")
@click.option("--reference", type=click.Path(dir_okay=True, path_type=Path),
              help="Compare with this model (e.g. the unpruned one): top-1 agreement and output errors.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Samples per run.")
@click.option("--limit", type=int, help="Use only the first N samples.")
@image_options
@JSON
def eval_cmd(model, data_path, reference, batch_size, limit, resize, mean, std, layout, channels, as_json):
    """Run MODEL over data: top-1 accuracy if labelled, and its distance from a --reference model."""
    loaded = load(model)
    ref = load(reference) if reference is not None else None
    data = _open(data_path, loaded, batch_size, limit, resize, mean, std, layout, channels)
    result = evaluate(loaded, data, ref)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.summary())


@main.command(name="bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=Path))
@click.option("--data", "data_path", type=click.Path(path_type=Path), help="Inputs to time on (default: random).")
@click.option("--batch", "batches", type=int, multiple=True, default=(1, 32), show_default=True,
              help="Batch sizes to time (repeatable).")
@click.option("--runs", type=int, default=30, show_default=True, help="Timed runs per model and batch size.")
@click.option("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default).")
@DEVICE
@JSON
def bench_cmd(models, data_path, batches, runs, threads, device, as_json):
    """onnxruntime latency of MODELS side by side (median, p90) and the speedup over the first."""
    if runs < 1 or any(b < 1 for b in batches):
        raise OnnxPruneError("--runs and --batch must be positive integers")
    loaded = {str(p): load(p) for p in models}
    if len(loaded) < len(models):
        raise OnnxPruneError("bench: the same model is named twice")
    sample = None
    if data_path is not None:
        first = next(iter(loaded.values()))
        sample = next(iter(open_data(data_path, first, batch_size=max(batches)))).feeds
    results = benchmark(loaded, tuple(batches), runs, providers=providers(Device(device)), threads=threads, data=sample)
    click.echo(json.dumps([r.to_json() for r in results], indent=2) if as_json else table(results))


@contextmanager
def _progress(label: str, total: int):
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def _refuse_overwriting(model: Path, output: Path) -> None:
    if output.exists() and model.exists() and output.resolve() == model.resolve():
        raise OnnxPruneError(f"{output}: the output path is the input model; choose another")


def _write_text(path: Path, text: str, forbidden: Path) -> None:
    if path.exists() and forbidden.exists() and path.resolve() == forbidden.resolve():
        raise OnnxPruneError(f"{path}: the report path is the input model; choose another")
    try:
        path.write_text(text)
    except OSError as exc:
        raise OnnxPruneError(f"{path}: cannot write the report ({exc.strerror or exc})") from None
