"""Human-readable summaries of analyses and pruning runs."""

from __future__ import annotations

import json

from .analysis.cost import Cost
from .analysis.groups import Analysis
from .errors import OnnxPruneError
from .prune import PruneResult


def json_text(data, indent: int = 2) -> str:
    """``data`` as JSON; a NaN or Infinity in it, which JSON has no way to write, is an error
    (never a file that JSON readers refuse)."""
    try:
        return json.dumps(data, indent=indent, allow_nan=False)
    except ValueError as exc:
        raise OnnxPruneError(f"internal error: the report holds a number JSON cannot hold ({exc})") from None


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _names(names, limit: int = 2) -> str:
    names = list(names)
    text = ", ".join(names[:limit])
    return text + (f" +{len(names) - limit}" if len(names) > limit else "") if names else "-"


def blocks_text(blocks: int, grouped_by, channels: int) -> str:
    """How grouped convs constrain a group: '4 blocks of 16, equal after pruning (grouped Conv c2)'."""
    return (f"{blocks} blocks of {channels // blocks}, equal after pruning "
            f"(grouped Conv {', '.join(grouped_by)})")


def heads_text(g) -> str:
    """'heads of /encoder/layer.2/attention (12 heads of 32 dims)'."""
    return f"heads of {g.attention} ({g.channels} heads of {g.head_dim} dims)"


def inspect_json(analysis: Analysis, cost: Cost) -> dict:
    data = {
        "macs": cost.macs,
        "params": cost.params,
        "groups": [
            {"id": g.id, "channels": g.channels, "prunable": g.prunable, "reason": g.reason,
             "producers": list(g.producers), "consumers": list(g.consumers), "blocks": g.blocks,
             "grouped_by": list(g.grouped_by), "head_dim": g.head_dim, "attention": g.attention}
            for g in analysis.groups
        ],
    }
    if cost.not_counted:  # only where shapes stop at an op onnx does not know
        data["macs_not_counted"] = [{"node": node, "after": after} for node, after in cost.not_counted.items()]
    return data


def inspect_table(analysis: Analysis, cost: Cost) -> str:
    rows = [("group", "channels", "status", "producers", "consumers")]
    for g in analysis.groups:
        status = "prunable" if g.prunable else "frozen"
        rows.append((str(g.id), str(g.channels), status, _names(g.producers), _names(g.consumers)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    frozen = [g for g in analysis.groups if not g.prunable]
    prunable = len(analysis.groups) - len(frozen)
    lines.append("")
    lines.append(f"{len(analysis.groups)} groups: {prunable} prunable, {len(frozen)} frozen")
    lines.append(f"MACs {human(cost.macs)} ({cost.macs}), parameters {human(cost.params)} ({cost.params})")
    if cost.not_counted:
        after = sorted(set(cost.not_counted.values()))
        lines.append(f"MACs not counted for {len(cost.not_counted)} layers ({_names(cost.not_counted, 3)}): "
                     f"their shapes are unknown after {', '.join(after)}, an op onnx does not know, "
                     "and onnxruntime did not work them out")
    heads = [g for g in analysis.groups if g.head_dim]
    if heads:
        lines.append("")
        lines.append("attention heads (each removed whole: its Q, K, V columns and output-projection rows):")
        for g in heads:
            lines.append(f"  group {g.id}: {heads_text(g)}")
    blocked = [g for g in analysis.groups if g.prunable and g.blocks > 1]
    if blocked:
        lines.append("")
        lines.append("cut in blocks by grouped convolutions (each block loses as many channels):")
        for g in blocked:
            lines.append(f"  group {g.id} ({g.channels} ch): {blocks_text(g.blocks, g.grouped_by, g.channels)}")
    if frozen:
        lines.append("")
        lines.append("frozen groups:")
        for g in frozen:
            why = g.reason or "a single channel"
            lines.append(f"  group {g.id} ({g.channels} ch): {why}")
    return "\n".join(lines)


def prune_summary(result: PruneResult, source: str, output: str) -> str:
    cfg = result.config
    target = (f"ratio {cfg.ratio}" if cfg.ratio is not None else f"keep-flops {cfg.keep_flops}"
              if cfg.keep_flops is not None else f"keep-params {cfg.keep_params}" if cfg.keep_params is not None
              else f"keep-latency {cfg.keep_latency}") + (", PRO" if cfg.pro else "")
    changed = [c for c in result.groups if c.channels_after < c.group.channels]
    frozen = [c for c in result.groups if not c.group.prunable]
    excluded = [c for c in result.groups if c.excluded]
    pct = lambda a, b: f"{100 * a / b:.1f}%" if b else "-"  # noqa: E731
    lines = [
        f"pruned {source} -> {output} (method {cfg.method.value}, {target}, round-to {cfg.round_to})",
        f"MACs       {human(result.macs_before)} -> {human(result.macs_after)} ({pct(result.macs_after, result.macs_before)} kept)",
        f"parameters {human(result.params_before)} -> {human(result.params_after)} ({pct(result.params_after, result.params_before)} kept)",
        f"groups: {len(changed)} pruned, {len(result.groups) - len(changed) - len(frozen) - len(excluded)} unchanged, "
        + (f"{len(excluded)} excluded, " if excluded else "") + f"{len(frozen)} frozen",
    ]
    for c in changed:
        g = c.group
        blocks = (f"; {c.channels_after // g.blocks} of {g.channels // g.blocks} in each of {g.blocks} blocks "
                  f"(grouped Conv {', '.join(g.grouped_by)})" if g.blocks > 1 else "")
        what = f"heads of {g.attention} ({g.head_dim} dims each)" if g.head_dim else \
            f"channels ({_names(g.producers)})"
        lines.append(f"  group {g.id}: {g.channels} -> {c.channels_after} {what}{blocks}")
    if frozen:
        lines.append("frozen (left as they are):")
        for c in frozen:
            lines.append(f"  group {c.group.id} ({c.group.channels} ch): {c.group.reason or 'a single channel'}")
    if excluded:
        lines.append("excluded (left as they are):")
        for c in excluded:
            lines.append(f"  group {c.group.id} ({c.group.channels} ch): {c.excluded}")
    skipped = [c for c in result.groups if c.not_reconstructable]
    if skipped:
        lines.append(f"not pruned by {cfg.method.value} (no reconstruction possible):")
        for c in skipped:
            lines.append(f"  group {c.group.id} ({c.group.channels} ch): {c.not_reconstructable}")
    if result.pro:
        last = result.pro[-1]
        lines.append(f"PRO: {len(result.pro)} steps; final-output mean squared error on {result.pro_samples} "
                     f"calibration samples {last.error:.4g} (estimate with independent reconstruction)")
    if result.latency is not None:
        lines += latency_lines(result.latency)
    if result.srn is not None:
        lines.append(f"SRN: {result.srn['blocks_serialized']} residual blocks serialised first, "
                     f"{len(result.srn['blocks_skipped'])} left as they are")
    if result.layers:
        worst = max(result.layers, key=lambda n: n.rel_error)
        lines.append(f"reconstructed {len(result.layers)} layers; largest calibration error "
                     f"{100 * worst.rel_error:.2f}% ({worst.node})")
        thin = [n for n in result.layers if n.rows < n.columns]
        for n in thin:
            lines.append(f"  {n.node}: only {n.rows} calibration rows for {n.columns} weights per output "
                         f"(ridge alpha {n.alpha:g} chosen on held-out data); more samples would help")
    return "\n".join(lines)


def srn_summary(data: dict, source: str, output: str) -> str:
    lines = [
        f"serialised {source} -> {output}",
        f"blocks: {data['blocks_serialized']} serialised, {len(data['blocks_skipped'])} left as they are",
        f"MACs {human(data['macs_before'])} -> {human(data['macs_after'])} (wider until pruned)",
    ]
    for skipped in data["blocks_skipped"]:
        lines.append(f"  {skipped['node']}: {skipped['reason']}")
    return "\n".join(lines)


def latency_miss(latency: dict | None) -> str | None:
    """What to warn of when the pruned model, timed at the end of the prune, is more than 10 %
    slower than --keep-latency asked (its refits could not close the gap: a table far from the
    whole model, or timings that vary more than that on this machine); None when it is not."""
    if not latency or latency.get("measured_fraction") is None:
        return None
    fraction, target = latency["measured_fraction"], latency["target"]
    if fraction <= 1.1 * target:
        return None
    return (f"--keep-latency {target}: the pruned model measured {fraction:.3f} of the original's latency, "
            f"{100 * (fraction / target - 1):.0f} % over the target; the widths measured closest to it were kept. "
            "Time it again (`onnxprune bench`): on a busy or virtual machine one timing can be off by 10 % "
            "(docs/LATENCY.md); if it stays over, ask for less")


def table_unchecked(latency: dict | None) -> str | None:
    """What to warn of when a --latency-table does not record settings it was measured at
    (made before onnxprune recorded them), which could then not be checked; None when it does."""
    if not latency or not latency.get("table_unchecked"):
        return None
    return (f"--latency-table {latency['table']} does not record the {' or '.join(latency['table_unchecked'])} "
            "it was measured at (made by an older onnxprune), so they could not be checked against this prune's; "
            "profile it again to have them checked")


def latency_lines(latency: dict) -> list[str]:
    """What --keep-latency predicted and measured."""
    where = (f"batch {latency['batch']}, {latency['threads'] or 'default'} threads, "
             f"{latency['providers'][0].removesuffix('ExecutionProvider')}")
    lines = [f"latency ({where}; table {latency['table']}, made in {latency['table_meta'].get('seconds', '?')} s): "
             f"predicted {latency['original_ms']:.3f} -> {latency['predicted_ms']:.3f} ms "
             f"({100 * latency['predicted_fraction']:.1f}% kept, target {100 * latency['target']:.0f}%)"]
    if latency["measured_ms"] is not None:
        lines.append(f"  measured here {latency['measured_original_ms']:.3f} -> {latency['measured_ms']:.3f} ms "
                     f"({100 * latency['measured_fraction']:.1f}% kept, {1 / latency['measured_fraction']:.2f}x faster)")
    else:
        lines.append("  not measured here: the table was made on the target; time the result there "
                     "(`onnxprune bench`)")
    if latency.get("pro_rankings"):
        errors = ", ".join(f"{name} {error:.4g}" for name, error in latency["pro_rankings"].items())
        lines.append(f"  PRO ranked steps by error {latency['pro_ranking']} saved (final-output error at the "
                     f"table's budget: {errors})")
    return lines


def profile_summary(table, source: str, output: str) -> str:
    meta = table.meta
    lines = [f"latency table of {source} -> {output} ({meta['seconds']} s)",
             f"measured on {meta['cpu']} ({meta['cpu_count']} cores), onnxruntime {meta['onnxruntime']}, "
             f"{', '.join(meta['providers'])}, {meta['threads'] or 'default'} threads, batch {meta['batch']}",
             f"whole model {table.full_ms:.3f} ms; {len(table.steps)} groups, "
             f"{sum(len(s) for s in table.steps.values())} widths (multiples of {meta['round_to']})",
             f"prediction checked on whole models at uniform widths (savings scaled by {table.scale:.3f}):"]
    for check in table.checks:
        lines.append(f"  ratio {check['ratio']}: predicted {check['predicted_ms']:.3f} ms, "
                     f"measured {check['measured_ms']:.3f} ms")
    return "\n".join(lines)
