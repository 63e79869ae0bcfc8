"""report.json (schema-versioned), report.md and the terminal summary of an export run."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from edgeport.passes import precision_of_step
from edgeport.validation_report import cell

REPORT_SCHEMA_VERSION = "2.0"  # 2.0: summary.int8_bytes -> artifact_bytes, parity_int8_vs_fp32 -> parity_vs_fp32 (any precision)


def build_export_report(
    *,
    source: str,
    inputs: list[dict],
    outputs: list[dict],
    data: dict[str, str | None],
    steps: list[dict],
    artifacts: dict[str, dict],
    versions: dict[str, Any],
    warnings: list[str],
) -> dict[str, Any]:
    quant = next((s for s in steps if precision_of_step(s["name"])), None)
    fp32 = artifacts.get("model.fp32.onnx") or artifacts.get("model.onnx")
    summary: dict[str, Any] = {"precision": precision_of_step(quant["name"]) if quant else "fp32", "fp32_bytes": fp32["bytes"] if fp32 else None}
    if quant:
        # the deployable model, whatever its precision (schema 2.0 renamed int8_bytes and parity_int8_vs_fp32)
        summary["artifact_bytes"] = artifacts["model.onnx"]["bytes"]
        summary["size_ratio"] = round(summary["artifact_bytes"] / summary["fp32_bytes"], 4)
        summary["parity_vs_fp32"] = quant["metrics"]["parity_vs_fp32"]
        summary["decisions"] = quant["metrics"].get("decisions", {})
    export = next((s for s in steps if s["name"] == "export"), None)
    if export:
        summary["parity_onnx_vs_torch"] = export["metrics"]["parity_vs_torch"]
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "export",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        "model": {"source": source, "inputs": inputs, "outputs": outputs},
        "data": data,
        "steps": steps,
        "artifacts": artifacts,
        "summary": summary,
        "warnings": warnings,
    }


def summary_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """step, seconds, size, what it measured: one row per step."""
    rows = [("step", "time", "size", "result")]
    for step in report["steps"]:
        metrics = step["metrics"]
        if step["name"] == "export":
            p = metrics["parity_vs_torch"]
            result = f"{metrics['exporter']} opset {metrics['opset']}; vs torch cos {p['cosine_min']}, max abs diff {p['max_abs_diff']}"
        elif step["name"] == "optimize":
            result = f"nodes {metrics['nodes_before']} -> {metrics['nodes_after']}"
        elif step["name"] == "qnn_context":
            binaries = metrics["context_binaries"]
            options = step["config"].get("provider_options", {})
            result = (f"QNN context for HTP v{options.get('htp_arch', '?')}: {', '.join(f'{n} {_mb(b)}' for n, b in binaries.items())}; "
                      f"compiled in {metrics['compile_s']:.2f}s; reloaded, outputs identical")
        elif step["name"] == "fix_shapes":
            result = "; ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in metrics["fixed"].items()) or "no dynamic dims"
        elif step["name"] == "ort_format":
            p = metrics["parity_vs_onnx"]
            result = f"ORT mobile format; vs .onnx cos {p['cosine_min']}"
        elif precision_of_step(step["name"]):
            p = metrics["parity_vs_fp32"]
            parts = [f"cos {p['cosine_mean']}" if "fidelity" not in metrics else f"held-out cos min {p['cosine_min'] if p['cosine_min'] is None else round(p['cosine_min'], 5)}"]
            if p.get("top1_agreement") is not None:
                parts.append(f"top-1 agree {p['top1_agreement']:.2%}")
            if p.get("candidate_accuracy") is not None:
                parts.append(f"acc {p['reference_accuracy']:.2%} -> {p['candidate_accuracy']:.2%}")
            if "calibration_cache" in metrics:
                parts.append(f"cache {metrics['calibration_cache']}")
            if "fidelity" in metrics:
                parts.append(f"target {'met' if metrics['fidelity']['met'] else 'NOT met'}, {metrics['float_mac_share']:.1%} of MACs float")
                if "activations_16bit" in metrics:
                    parts.append(f"{metrics['activations_16bit']['share']:.1%} of activations 16-bit")
            result = "; ".join(parts)
        else:
            result = ""
        size = _mb(step["output_bytes"]) if step.get("output_bytes") else ""
        rows.append((step["name"], "cached" if step.get("cached") else f"{step['wall_s']:.2f}s", size, result))
    return rows


def fidelity_step(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The step that judged int8 against a fidelity target (the accuracy-aware search): found by
    the verdict it records, not by a pass name written out here."""
    return next((s for s in steps if "fidelity" in s.get("metrics", {})), None)


def fidelity_lines(report: dict[str, Any]) -> list[str]:
    """What the int8 search concluded, for the terminal: the target, the verdict on held-out data,
    what stayed float, and what blocked the target when it was not met."""
    step = fidelity_step(report["steps"])
    if step is None:
        return []
    m, f = step["metrics"], step["metrics"]["fidelity"]
    wide = m.get("activations_16bit")
    kept = (f"given 16-bit activations (W8A16), {m['fallback_mac_share']:.1%} of MACs; {wide['activations_16bit']} of "
            f"{wide['activations_quantized']} activations 16-bit" if wide else f"kept float, {m['float_mac_share']:.1%} of MACs")
    lines = [f"int8 fidelity target ({f['target_source']}): {f['target']}",
             f"  {'met' if f['met'] else 'NOT met'} on held-out data ({f['data']}); {len(m['reverted'])} of {m['groups']} "
             f"quantized groups {kept} (budget {m['max_fallback']:.0%})"]
    tail = f.get("held_out_tail")
    if tail:
        lines.append(f"  {tail['below_target']} of {tail['samples']} held-out samples below the cosine target: at {tail['confidence']:.0%} "
                     f"confidence at most {tail['share_below_target_at_most']:.0%} of new samples would be (more evaluation samples narrow this)")
    dragged = m.get("float_with_reverted") or []
    if dragged:  # int8 nodes ORT runs in float because a reverted node reads their float output
        lines.append(f"  also float as ONNX Runtime runs it (a reverted node reads their output in float): "
                     f"{', '.join(d['node'] for d in dragged[:5])}{' ...' if len(dragged) > 5 else ''}")
    estimate = m.get("compute_time_vs_fp32_estimate") or {}
    if estimate.get("value") is not None:
        lines.append(f"  compute time estimate {estimate['value']:.2f}x of fp32 (MAC-bound; {estimate['basis']})")
    if not f["met"]:
        lines.append(f"  {f['reason']}")
        for b in f["blockers"]:
            if "added_noise" in b:
                alone = f"; alone in int8 the outputs keep SQNR {b['sqnr_db_alone_in_int8']} dB" if b.get("sqnr_db_alone_in_int8") is not None else ""
                lines.append(f"  blocking: {b['op_type']} {b['node']} (adds noise {b['added_noise']}{alone})")
            else:  # the model's own sensitivity to rounded inputs
                scores = ", ".join(f"{k} {v:.4g}" for k, v in b["fp32_with_rounded_inputs"].items() if isinstance(v, float))
                lines.append(f"  blocking: the {b['node']}, rounded to int8 (the fp32 model then scores {scores})")
    return lines


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    out = ["# edgeport export report", "", f"- model: `{report['model']['source']}`"]
    for name, spec in (("input", s) for s in report["model"]["inputs"]):
        out.append(f"- {name} `{spec['name']}`: {'x'.join(map(str, spec['shape']))} {spec['dtype']}")
    for role, text in report["data"].items():
        if text:
            out.append(f"- {role} data: `{text}`")
    if report.get("precision"):  # --precision auto
        p = report["precision"]
        out.append(f"- precision: **{p['chosen']}** (auto: {p['reason']}; int8 speed-up basis: {p['basis']})")
    out += ["", "## Steps", "", "| " + " | ".join(summary_rows(report)[0]) + " |", "|---|---|---|---|"]
    for row in summary_rows(report)[1:]:
        out.append("| " + " | ".join(row) + " |")
    out += ["", "## Artifacts", "", "| file | size | sha256 |", "|---|---|---|"]
    for name, info in report["artifacts"].items():
        out.append(f"| {name} | {_mb(info['bytes'])} | `{info['sha256'][:16]}…` |")
    summary = report["summary"]
    if "size_ratio" in summary:
        out += ["", f"## {summary['precision']} vs fp32", "", f"- size: {summary['size_ratio']:.1%} of fp32"]
        for key, value in summary["parity_vs_fp32"].items():
            out.append(f"- {key}: {value}")
        for key, rule in summary["decisions"].items():
            out.append(f"- {key}: {rule}")
    out += _search_markdown(report)
    if report["warnings"]:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    out += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in report["versions"].items()]
    return "\n".join(out) + "\n"


def _search_markdown(report: dict[str, Any]) -> list[str]:
    """The int8 search: verdict, what stayed float, the steps and the sensitivity ranking."""
    step = fidelity_step(report["steps"])
    if step is None:
        return []
    m = step["metrics"]
    out = ["", "## int8 fidelity search", ""] + [f"- {line.strip()}" for line in fidelity_lines(report)]
    if m["reverted"]:
        out += ["", "Kept in float:", "", "| node | op | MAC share |", "|---|---|---|"]
        out += [f"| `{r['node']}` | {r['op_type']} | {r['mac_share']:.2%} |" for r in m["reverted"]]
    if m["steps"]:
        out += ["", "Steps (on the search split; size and compute time are estimates):", "",
                "| step | kept | margin | float MACs | size | compute vs fp32 |", "|---|---|---|---|---|---|"]
        for s in m["steps"]:
            what = s.get("reverted") or (f"all {s['reverted_op_type']} ({s['nodes']})" if "reverted_op_type" in s
                                         else f"block of {s['block_size']} groups from the ranking" if "block_size" in s
                                         else f"back to int8: {s.get('requantized')}")
            compute = s.get("compute_time_vs_fp32_estimate")
            out.append(f"| `{what}` | {'yes' if s.get('kept', True) else 'no'} | {s['margin']} | {s.get('float_mac_share', '')} "
                       f"| {_mb(s.get('size_estimate_bytes'))} | {'' if compute is None else f'{compute:.2f}x'} |")
    if m["ranking"]:
        out += ["", "Sensitivity ranking, worst first (noise each node adds where it sits; SQNR and margin at the outputs with it "
                "alone in int8, every other group float or, on an NPU, 16-bit, on the ranking subset):", "", "| node | op | added noise | SQNR alone in int8 (dB) | margin alone in int8 |", "|---|---|---|---|---|"]
        out += [f"| `{r['node']}` | {r['op_type']} | {r['added_noise']} | {cell(r.get('sqnr_db_alone_in_int8'))} "
                f"| {cell(r.get('margin_alone_in_int8'))} |" for r in m["ranking"][:10]]
    return out


def _mb(count: int | None) -> str:
    if count is None:
        return ""
    return f"{count / 1e6:.2f} MB" if count >= 100_000 else f"{count / 1e3:.1f} kB"
