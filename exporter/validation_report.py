"""Validation outputs: validation.json's content, the terminal table, report.md, and JUnit XML (each budget a test case)."""

from __future__ import annotations

import datetime as _dt
import xml.etree.ElementTree as ET
from typing import Any

from edgeport.artifacts import file_sha256
from edgeport.runtimes.estimate import band_text
from edgeport.device_profiles.verdict import FAIL, PASS, SKIPPED, BudgetResult
from edgeport.versions import runtime_versions


VALIDATION_SCHEMA_VERSION = "1.0"


def build_report(artifact: Any, ref: Any, source: Any, profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """validation.json's content: the model, its reference and data, and each profile's judged budgets."""
    return {
        "schema_version": VALIDATION_SCHEMA_VERSION,
        "kind": "validate",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": runtime_versions(),
        "model": {"path": str(artifact.path), "bytes": artifact.size_bytes, "sha256": file_sha256(artifact.path),
                  "inputs": [s.to_dict() for s in artifact.inputs]},
        "reference": str(ref.path) if ref else None,
        "data": source.description if source else None,
        "verdict": FAIL if any(p["verdict"] == FAIL for p in profiles) else PASS,
        "profiles": profiles,
    }


def _results(profile: dict[str, Any]) -> list[BudgetResult]:
    return [BudgetResult(**{k: v for k, v in b.items() if k != "margin"}) for b in profile["budgets"]]


def _why_not(profile: dict[str, Any]) -> str:
    return "; ".join(profile.get("target", {}).get("failed", [])) or "see the report"


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for profile in report["profiles"]:
        where = "on target" if profile["on_target"] else f"not the target: {_why_not(profile)}"
        lines.append(f"{profile['profile']}: {profile['verdict'].upper()} ({where})")
        for result in _results(profile):
            mark = {"pass": "ok  ", "fail": "FAIL", "skipped": "skip"}[result.status]
            lines.append(f"  {mark} {result.describe()}")
        measurement = profile.get("measurement")
        if measurement and profile.get("simulator"):  # its timings are not the device's: show what it proves instead
            lines.append(f"  simulator: {compile_text(measurement)}")
        elif measurement:
            lat = measurement["latency_ms"]
            lines.append(
                f"  {measurement['kind']} measurement: p50 {lat['p50']:.3f} ms, p95 {lat['p95']:.3f} ms, cv {lat['cv']:.2f} over {measurement['runs']} runs; "
                f"load {measurement['session_load_ms']:.1f} ms, first run {measurement['cold_first_inference_ms']:.2f} ms; "
                f"peak memory +{measurement['memory']['peak_above_baseline_mb']:.1f} MB"
            )
        est = profile.get("estimate")
        if est and "refused" in est:
            lines.append(f"  no estimate for target: {est['refused']}")
        elif est:
            lines.append(f"  estimate for target: {est['latency_ms']:.3f} ms ({band_text(est)}; {est['assumptions']})")
        note = profile["providers"].get("note")
        if note:
            lines.append(f"  note: {note}")
    lines.append(f"verdict: {report['verdict'].upper()}")
    return lines


def compile_text(measurement: dict[str, Any]) -> str:
    """What compiling for an NPU cost on this host: time, the context binary, peak memory."""
    compiled = measurement.get("compiled_context") or {}
    binary = f", context binary {compiled['context_binary_bytes'] / 1024:.0f} KiB" if compiled else ""
    return (f"compiled in {measurement['session_load_ms']:.0f} ms{binary}, peak host memory while compiling "
            f"+{measurement['memory'].get('load_peak_above_baseline_mb', measurement['memory']['peak_above_baseline_mb']):.1f} MB "
            f"(simulated runs: {measurement['runs']}, timings not reported)")


def render_markdown(report: dict[str, Any]) -> str:
    out = ["# edgeport validation report", "", f"- model: `{report['model']['path']}` ({report['model']['bytes'] / 1e6:.3f} MB)",
           f"- reference: `{report['reference']}`" if report["reference"] else "- reference: none", f"- verdict: **{report['verdict'].upper()}**"]
    for profile in report["profiles"]:
        out += ["", f"## {profile['profile']}: {profile['verdict'].upper()}", "",
                f"- {'this machine is the target' if profile['on_target'] else f'this machine is not the target ({_why_not(profile)}): host figures are reported as such; latency is judged on an estimate'}",
                f"- providers used: {', '.join(profile['providers']['used']) or 'none'}; inputs {profile['input_shapes']}"]
        if profile["providers"].get("note"):
            out.append(f"- note: {profile['providers']['note']}")
        out += ["", "| budget | status | measured | limit | margin | basis |", "|---|---|---|---|---|---|"]
        for b in profile["budgets"]:
            out.append(f"| {b['name']} | {b['status']} | {cell(b['measured'])}{b['unit']} | {cell(b['limit'])}{b['unit']} | {cell(b['margin'])} | {b['basis'] or b['detail']} |")
        m = profile.get("measurement")
        if profile.get("simulator"):
            out += ["", f"Simulator: {profile['simulator']}."]
            if m:
                out.append(f"Compile on this host: {compile_text(m)}.")
        elif m:
            lat = m["latency_ms"]
            out += ["", f"Measured ({m['kind']}, {m['runs']} runs): p50 {lat['p50']} ms, p90 {lat['p90']}, p95 {lat['p95']}, p99 {lat['p99']}, "
                    f"mean {lat['mean']}, cv {lat['cv']}; session load {m['session_load_ms']} ms; cold first inference {m['cold_first_inference_ms']} ms; "
                    f"peak RSS {m['memory']['peak_rss_mb']} MB ({m['memory']['peak_above_baseline_mb']} MB above the runtime's baseline)."]
        est = profile.get("estimate")
        if est and "refused" in est:
            out.append(f"No estimate for the target: {est['refused']}.")
        elif est:
            out.append(f"Estimate for the target: {est['latency_ms']} ms, {band_text(est)} (per-node roofline, mostly {est['bound']}-bound; "
                       f"{est['assumptions']}); time by op class {est['by_op_class_ms']} ms; graph: {est['graph']}.")
        if profile.get("coverage"):
            c = profile["coverage"]
            out.append(f"Provider coverage ({c['source']}): {c.get('preferred_share')} of {c['nodes']} nodes on the preferred provider."
                       + (f" Note: {c['note']}." if c.get("note") else ""))
            for n in c.get("refused_nodes", []):
                out.append(f"- not taken: `{n['node']}` ({n['op_type']}): {n['reason'] or 'no reason logged'}")
        parity = profile.get("parity")
        if parity:
            out.append(f"Parity on {parity['data']}.")
            for name, figures in parity.get("outputs", {}).items():
                shown = ", ".join(f"{k} {cell(v)}" for k, v in figures.items() if v is not None)
                out.append(f"- output `{name}`: {shown}")
    return "\n".join(out) + "\n"


def render_junit(report: dict[str, Any] | None, regression: dict[str, Any] | None = None) -> str:
    """Each budget a test case, one suite per profile; with ``regression``, a suite of the gate's
    checks whose output shows the baseline's figure beside the new one."""
    from edgeport.regression_report import sides

    suites = ET.Element("testsuites", name="edgeport validate")
    groups = [(f"edgeport.{p['profile']}", _results(p), {}) for p in (report or {}).get("profiles", [])]
    if regression is not None:
        checks = _results({"budgets": regression["checks"]})
        shown = {}
        for check in checks:
            old, new, label, unit = sides(regression, check.name)
            shown[check.name] = f"{label}: baseline {old}{unit}, new {new}{unit} (baseline {regression['baseline']['path']}). "
        groups.append(("edgeport.regression", checks, shown))
    for suite_name, results, prefix in groups:
        suite = ET.SubElement(
            suites, "testsuite", name=suite_name, tests=str(len(results)),
            failures=str(sum(r.status == FAIL for r in results)), skipped=str(sum(r.status == SKIPPED for r in results)),
        )
        for result in results:
            case = ET.SubElement(suite, "testcase", classname=suite_name, name=result.name)
            if result.status == FAIL:
                failure = ET.SubElement(case, "failure", message=prefix.get(result.name, "") + result.describe(), type="BudgetFailed")
                failure.text = f"measured={result.measured} limit={result.limit} margin={result.margin} basis={result.basis}"
            elif result.status == SKIPPED:
                ET.SubElement(case, "skipped", message=result.detail)
            ET.SubElement(case, "system-out").text = prefix.get(result.name, "") + result.describe()
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def cell(value: Any) -> str:
    """A figure as a table cell: 4 significant digits, "-" for none."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
