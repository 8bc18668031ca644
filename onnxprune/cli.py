"""Command line: thin wrappers that parse, call the library and print."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Callable, NoReturn

import click

from . import methods
from .analysis.cost import cost_of, model_cost
from .analysis.groups import analyze
from .bench import benchmark, table
from .calibration.sampling import DEFAULT_ROWS_PER_COLUMN
from .calibration.statistics import Calibration, StatsMode
from .config import DATA_METHOD, DEFAULT_METHOD, DEFAULT_ROUND_TO, Method, PruneConfig, default_method, pro_by_default
from .data import DataSource, open_data, parse_image_options
from .errors import OnnxPruneError
from .evaluate import evaluate
from .graph.files import Staging, check_output
from .graph.io import load, read, stage
from .graph.runtime import Device, check_threads, failing, providers
from .graph.shapes import parse_input_shapes
from .graph.validate import check_runs, validate
from .passes.normalize import normalize
from .passes.srn import serialize_residuals
from .progress import no_progress
from .prune import excluded_groups, prune
from .report import (inspect_json, inspect_table, json_text, latency_miss, profile_summary, prune_summary,
                     srn_summary, table_unchecked)
from .text import DEFAULT_MAX_LENGTH, parse_text_options
from .widths.latency import Target, profile


class _OutputFile(click.Path):
    """A file to write: not '-' (standard output, which no command writes to) and not a name ending
    in '/' (a folder; pathlib would drop the slash and write a file of the folder's name)."""

    def __init__(self):
        super().__init__(path_type=Path)

    def convert(self, value, param, ctx):
        if value == "-":
            self.fail("'-': the output goes to a file, not to standard output; name a file", param, ctx)
        if isinstance(value, str) and value.endswith(("/", os.sep)):
            self.fail(f"{value!r} ends with '/', which names a folder; name a file", param, ctx)
        return super().convert(value, param, ctx)


MODEL = click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
OUTPUT_FILE = _OutputFile()
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


def text_options(command):
    """Options for a .txt of sentences (calibration or evaluation data)."""
    for option in reversed([
        click.option("--tokenizer", type=click.Path(path_type=Path),
                     help="Text (.txt, one sentence a line): tokenizer.json, or a WordPiece vocab.txt (BERT, "
                          "lower case); makes the input_ids, attention_mask and token_type_ids the model takes. "
                          "Needs the 'tokenizers' package (pip install 'onnxprune[text]')."),
        click.option("--max-length", type=int,
                     help=f"Text: cut sentences at N tokens and pad every one to N [default: cut at "
                          f"{DEFAULT_MAX_LENGTH} (or the model's fixed length), pad to the longest]."),
    ]):
        command = option(command)
    return command


def _open(path, model, batch_size, limit, resize, mean, std, layout, channels, tokenizer, max_length) -> DataSource:
    options = parse_image_options(resize, mean, std, layout, int(channels) if channels else None)
    return open_data(path, model, batch_size=batch_size, limit=limit, image_options=options,
                     text_options=parse_text_options(tokenizer, max_length))


class _Group(click.Group):
    """Every error is one `error: ...` line on stderr and exit status 2, click's usage errors
    included; SIGTERM unwinds like Ctrl-C, so no temporary file is left behind."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except _HELP:  # no arguments at all: click shows the help (exit status 2)
            raise
        except click.UsageError as exc:
            _fail(_usage(exc))

    def invoke(self, ctx):
        restore = _terminate_on_sigterm()
        try:
            return super().invoke(ctx)
        except OnnxPruneError as exc:
            _fail(str(exc))
        except click.UsageError as exc:
            _fail(_usage(exc))
        finally:
            restore()


# click 8.2+ shows the help for a bare command through a usage error of its own
_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(2)


def _one_line(message: str) -> str:
    """``message`` with its control characters escaped: a newline in a path (or in onnxruntime's
    reason) must not split the one `error:` line, nor an escape sequence recolour the terminal."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], message)


def _usage(exc: click.UsageError) -> str:
    """click's usage error on one line, with where to find help."""
    message = " ".join(exc.format_message().split())
    return f"{message} (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else message


def _terminate_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM raise SystemExit (status 143, as when killed) so that cleanups run; returns
    what puts the previous handler back. Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, terminate)
    return lambda: signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


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
    cost = model_cost(analysis.graph, analysis.shapes, analysis.unknown_after, partial=True)
    if as_json:
        click.echo(json_text(inspect_json(analysis, cost)))
    else:
        click.echo(inspect_table(analysis, cost))


@main.command(name="prune")
@MODEL
@click.option("-o", "--output", required=True, type=OUTPUT_FILE, help="Where to write the pruned model.")
@click.option("--method", type=click.Choice(methods.names()),
              help=f"How channels are chosen [default: {DATA_METHOD} with --calib, else {DEFAULT_METHOD}]: " + "; ".join(
                  f"{m.name}: {m.summary}" + (" (needs --calib)" if m.needs_data else "") for m in methods.all_methods()))
@click.option("--ratio", type=float, help="Fraction of channels removed from every prunable group (0 <= R < 1).")
@click.option("--keep-flops", type=float, help="Fraction of the MACs to keep (0 < F <= 1).")
@click.option("--keep-params", type=float, help="Fraction of the parameters to keep (0 < P <= 1).")
@click.option("--keep-latency", type=float,
              help="Fraction of the onnxruntime latency to keep (0 < L <= 1), measured here with --device, "
                   "--threads and --latency-batch, or predicted from --latency-table.")
@click.option("--latency-batch", type=int, default=1, show_default=True, help="Batch size latency is measured at.")
@click.option("--threads", type=int, default=0,
              help="onnxruntime intra-op threads for latency (0: its default; at most the machine's cores).")
@click.option("--latency-table", type=click.Path(path_type=Path),
              help="A table from `onnxprune profile` measured on the target device, instead of measuring here.")
@click.option("--pro/--no-pro", default=None,
              help="Choose each layer's width by its effect on the final output (PRO); needs --calib and "
                   "--keep-flops, --keep-params or --keep-latency [default: on when both are given].")
@click.option("--pro-samples", type=int, default=0, show_default=True,
              help="Calibration samples PRO measures the final-output error on; 0: as many as keep one forward "
                   "pass within 32 GMACs, between 16 and 256 (256 for small models).")
@click.option("--pro-pooled", is_flag=True,
              help="PRO measures the error of the output mean-pooled over real tokens (attention_mask), as a "
                   "sentence embedding is, instead of every token's (a transformer encoder's per-token output).")
@click.option("--exclude", "exclude", multiple=True, metavar="PATTERN",
              help="Leave the channels of layers whose node name matches this glob as they are (repeatable); "
                   "`inspect` lists the names.")
@click.option("--round-to", type=int, default=DEFAULT_ROUND_TO, show_default=True,
              help="Kept channel counts are multiples of N (fast onnxruntime CPU kernels want 8 or 16).")
@click.option("--calib", "calib_path", type=click.Path(path_type=Path),
              help="Calibration data for the data methods and --pro: .npz, .npy, a folder of images, or a .txt "
                   "of sentences with --tokenizer.")
@click.option("--calib-limit", type=int, help="Use only the first N calibration samples.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Calibration samples per run.")
@click.option("--calib-rows", type=int, default=DEFAULT_ROWS_PER_COLUMN, show_default=True,
              help="Rows per weight column that each layer's least squares reads: output positions drawn at "
                   "random (seeded) from every sample, enough for a well-determined fit; 0 reads them all.")
@click.option("--cache-mb", type=int, default=256, show_default=True,
              help="MiB of activations kept in memory between layers, so that each layer's statistics run only "
                   "the graph after the last pruned group; the rest go to temporary files (--spill).")
@click.option("--spill/--no-spill", default=True, show_default=True,
              help="Keep the activations beyond --cache-mb in temporary files (in $TMPDIR, deleted as they are "
                   "read) instead of rerunning the model from the input for every layer.")
@click.option("--srn", is_flag=True, help="Serialise residual blocks first (SRN) so layers tied by shortcuts "
              "can be pruned; --keep-flops stays relative to the original model.")
@click.option("--independent", is_flag=True,
              help="Reconstruct every layer from the ORIGINAL model's inputs instead of the pruned model's.")
@click.option("--stats", type=click.Choice([m.value for m in StatsMode]), default=StatsMode.HOST.value,
              show_default=True, help="Reduce calibration statistics on the host (numpy) or inside onnxruntime.")
@DEVICE
@image_options
@text_options
@INPUT_SHAPE
@click.option("--report", type=OUTPUT_FILE, help="Also write the JSON report to this file.")
@JSON
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def prune_cmd(model, output, method, ratio, keep_flops, keep_params, keep_latency, latency_batch, threads, latency_table,
              pro, pro_samples, pro_pooled, exclude, round_to, calib_path,
              calib_limit, batch_size, calib_rows, cache_mb, spill, srn, independent, stats, device, resize, mean, std,
              layout, channels, tokenizer, max_length, input_shapes, report, as_json, quiet):
    """Remove channels from MODEL and write the smaller model to OUTPUT."""
    has_data = calib_path is not None
    method = method or default_method(has_data)
    if pro is None:
        pro = pro_by_default(has_data, keep_flops=keep_flops, keep_params=keep_params, keep_latency=keep_latency)
    config = PruneConfig(Method(method), ratio, keep_flops, round_to, parse_input_shapes(input_shapes), srn,
                         keep_params, pro, pro_samples, exclude, keep_latency, latency_batch, threads,
                         None if latency_table is None else str(latency_table), Device(device), pro_pooled)
    uses_data = config.selection.needs_data or config.pro
    if has_data and not uses_data:
        data_methods = ", ".join(m.name for m in methods.all_methods() if m.needs_data)
        raise OnnxPruneError(f"--calib is for the data methods ({data_methods}) and --pro, not --method {method}"
                             " with --no-pro or --ratio")
    if uses_data:
        if calib_path is None:
            needs = f"--method {method}" if config.selection.needs_data else "--pro"
            raise OnnxPruneError(f"{needs} needs calibration data: give --calib DATA")
        if batch_size < 1:
            raise OnnxPruneError(f"--batch-size {batch_size}: must be a positive integer")
        if calib_limit is not None and calib_limit < 1:
            raise OnnxPruneError(f"--calib-limit {calib_limit}: must be a positive integer")
        if cache_mb < 0:
            raise OnnxPruneError(f"--cache-mb {cache_mb}: must be 0 or more")
        if calib_rows < 0:
            raise OnnxPruneError(f"--calib-rows {calib_rows}: must be 0 (every row) or more")
    loaded, inputs = read(model)
    protected = _check_outputs(inputs, [("the calibration data", calib_path), ("the latency table", latency_table),
                                        ("the tokenizer", tokenizer)],
                               output=output, report=report)
    calibration = None
    if uses_data:
        data = _open(calib_path, loaded, batch_size, calib_limit, resize, mean, std, layout, channels, tokenizer,
                     max_length)
        config = replace(config, input_shapes=data.input_shapes(config.input_shapes, "--calib"))
        calibration = Calibration(lambda: (b.feeds for b in data), len(data), StatsMode(stats),
                                  tuple(providers(Device(device))), sequential=not independent,
                                  cache_bytes=cache_mb << 20, spill=spill, source=f"--calib {calib_path}",
                                  rows_per_column=calib_rows)
    # the first calibration batch is tried before any work; a later failure is on the data still
    with failing(f"onnxruntime failed on --calib {calib_path}") if calibration else nullcontext():
        result = prune(loaded, config, calibration, no_progress if quiet or as_json else _progress)
    data = result.to_json()
    text = json_text(data)
    with Staging() as staging:  # the report after the model, both or neither
        stage(result.model, output, staging, protected["output"])
        if report is not None:
            staging.write(report, (text + "\n").encode())
        staging.commit()
    if not uses_data and not config.selection.reconstructs:
        click.echo(f"warning: --method {method} without calibration data chooses channels by their weights "
                   "and leaves the remaining weights as they are: without fine-tuning it loses accuracy "
                   f"(give --calib DATA to prune with {DATA_METHOD}, which reconstructs the layers)", err=True)
    for warning in (table_unchecked(data.get("latency")), latency_miss(data.get("latency"))):
        if warning:
            click.echo(f"warning: {_one_line(warning)}", err=True)
    click.echo(text if as_json else prune_summary(result, str(model), str(output)))


@main.command(name="srn")
@MODEL
@click.option("-o", "--output", required=True, type=OUTPUT_FILE, help="Where to write the serial model.")
@INPUT_SHAPE
@JSON
def srn_cmd(model, output, input_shapes, as_json):
    """Rewrite residual blocks of MODEL into equivalent serial convolutions (SRN)."""
    shapes = parse_input_shapes(input_shapes)
    loaded, inputs = read(model)
    protected = _check_outputs(inputs, [], output=output)
    normalized, _ = normalize(loaded)
    check_runs(normalized)
    serial, report = serialize_residuals(normalized, shapes)
    validate(serial, shapes, normalized)
    data = report.to_json(cost_of(normalized, shapes).macs, cost_of(serial, shapes).macs)
    with Staging() as staging:
        stage(serial, output, staging, protected["output"])
        staging.commit()
    click.echo(json_text(data) if as_json else srn_summary(data, str(model), str(output)))


@main.command(name="eval")
@MODEL
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help=".npz (arrays named after the inputs, optional 'labels'), .npy, a folder of "
                   "PNG/JPEG images (class sub-folders, sorted, give labels 0..k-1), or a .txt of sentences "
                   "with --tokenizer.")
@click.option("--reference", type=click.Path(dir_okay=True, path_type=Path),
              help="Compare with this model (e.g. the unpruned one): top-1 agreement and output errors; on data "
                   "without labels also the cosine similarity of the outputs (mean-pooled over real tokens) and "
                   "nearest-neighbour agreement.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Samples per run.")
@click.option("--limit", type=int, help="Use only the first N samples.")
@image_options
@text_options
@JSON
def eval_cmd(model, data_path, reference, batch_size, limit, resize, mean, std, layout, channels, tokenizer,
             max_length, as_json):
    """Run MODEL over data: top-1 accuracy if labelled, and its distance from a --reference model."""
    loaded = load(model)
    ref = load(reference) if reference is not None else None
    data = _open(data_path, loaded, batch_size, limit, resize, mean, std, layout, channels, tokenizer, max_length)
    result = evaluate(loaded, data, ref)
    click.echo(json_text(result.to_json()) if as_json else result.summary())


@main.command(name="profile")
@MODEL
@click.option("-o", "--output", required=True, type=OUTPUT_FILE, help="Where to write the table (JSON).")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size to measure at.")
@click.option("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default).")
@click.option("--round-to", type=int, default=DEFAULT_ROUND_TO, show_default=True,
              help="Widths measured: multiples of N (use the prune's --round-to).")
@click.option("--runs", type=int, default=30, show_default=True, help="Timed runs per width.")
@click.option("--exclude", "exclude", multiple=True, metavar="PATTERN",
              help="Groups the prune will leave alone (as prune --exclude); they are not measured.")
@DEVICE
@INPUT_SHAPE
@JSON
def profile_cmd(model, output, batch, threads, round_to, runs, exclude, device, input_shapes, as_json):
    """Measure MODEL's latency table on this machine, for `prune --keep-latency --latency-table`."""
    if batch < 1 or runs < 1 or round_to < 1:
        raise OnnxPruneError("--batch, --runs and --round-to must be positive integers")
    check_threads(threads)
    loaded, inputs = read(model)
    _check_outputs(inputs, [], output=output)
    normalized, _ = normalize(loaded)
    check_runs(normalized)
    shapes = parse_input_shapes(input_shapes)
    analysis = analyze(normalized, shapes)
    skip = excluded_groups(analysis, tuple(exclude))
    channels = {g.id: g.channels for g in analysis.groups if g.prunable and g.id not in skip}
    if not channels:
        raise OnnxPruneError("no prunable channel group in this model (see `onnxprune inspect` for the reasons)")
    table = profile(normalized, analysis, channels,
                    Target(tuple(providers(Device(device))), threads, batch, tuple(shapes.items())), round_to, runs)
    data = table.to_json()
    with Staging() as staging:
        staging.write(output, (json_text(data, indent=1) + "\n").encode())
        staging.commit()
    click.echo(json_text(data) if as_json else profile_summary(table, str(model), str(output)))


@main.command(name="bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=Path))
@click.option("--data", "data_path", type=click.Path(path_type=Path),
              help="Inputs to time on: .npz, .npy, a folder of images, or a .txt of sentences with --tokenizer "
                   "(--max-length N: N tokens each) (default: random).")
@click.option("--batch", "batches", type=int, multiple=True, default=(1, 32), show_default=True,
              help="Batch sizes to time (repeatable).")
@click.option("--runs", type=int, default=30, show_default=True,
              help="Timed runs per model, batch size and round.")
@click.option("--rounds", type=int, default=3, show_default=True,
              help="Rounds on fresh sessions (a session's speed varies from one to the next).")
@click.option("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default).")
@DEVICE
@INPUT_SHAPE
@text_options
@JSON
def bench_cmd(models, data_path, batches, runs, rounds, threads, device, input_shapes, tokenizer, max_length,
              as_json):
    """onnxruntime latency of MODELS side by side (median, p90) and the speedup over the first."""
    if runs < 1 or rounds < 1 or any(b < 1 for b in batches):
        raise OnnxPruneError("--runs, --rounds and --batch must be positive integers")
    check_threads(threads)
    text = parse_text_options(tokenizer, max_length)
    if text is not None and data_path is None:
        raise OnnxPruneError("--tokenizer and --max-length apply to --data (a .txt of sentences)")
    loaded = {str(p): load(p) for p in models}
    if len(loaded) < len(models):
        raise OnnxPruneError("bench: the same model is named twice")
    sample = None
    if data_path is not None:
        first = next(iter(loaded.values()))
        sample = next(iter(open_data(data_path, first, batch_size=max(batches), text_options=text))).feeds
    results = benchmark(loaded, tuple(batches), runs, providers=providers(Device(device)), threads=threads, data=sample,
                        input_shapes=parse_input_shapes(input_shapes), rounds=rounds)
    click.echo(json_text([r.to_json() for r in results]) if as_json else table(results))


@contextmanager
def _progress(label: str, total: int):
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def _check_outputs(model_files: tuple[Path, ...], data: list[tuple[str, Path | None]],
                   **outputs: Path | None) -> dict[str, list[tuple[str, Path | None]]]:
    """Check every output path before any work (see files.check_output): none may be an input
    (the model, its external data, the data files) or another output. Returns, per output,
    the files it must not be, for the write itself (a weights file is named only then)."""
    inputs = [("the input model", model_files[0]),
              *(("the input model's external data file", f) for f in model_files[1:]), *data]
    protected = {}
    for what, path in outputs.items():
        if path is None:
            continue
        others = [(f"the {other} path", p) for other, p in outputs.items() if other != what and p is not None]
        protected[what] = [*inputs, *others]
        check_output(path, what, protected[what])
    return protected
