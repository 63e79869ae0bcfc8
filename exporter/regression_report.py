"""The regression gate's section of report.md, and the lines the CLI prints: baseline and new side
by side, with where each figure came from."""

from __future__ import annotations

from typing import Any

from edgeport.device_profiles.verdict import FAIL, SKIPPED

_SIDES = (  # check name -> (label, where its two figures are in the section, unit)
    ("latency_p50_increase_max", "latency p50", ("latency_ms", "p50"), " ms"),
    ("latency_p95_increase_max", "latency p95", ("latency_ms", "p95"), " ms"),
    ("peak_memory_increase_max", "peak memory", ("peak_memory_mb", None), " MB"),
    ("model_size_increase_max", "file size", ("bytes", None), " B"),
    ("cosine_min_drop_max", "min cosine to reference", ("parity", "cosine_min"), ""),
    ("accuracy_drop_max", "accuracy", ("parity", "candidate_accuracy"), ""),
)


def sides(section: dict[str, Any], check: str) -> tuple[Any, Any, str, str]:
    """(baseline value, new value, label, unit) of one check."""
    for name, label, (key, sub), unit in _SIDES:
        if name == check:
            figures = section.get(key) or {}
            if sub is None:
                return figures.get("baseline"), figures.get("new"), label, unit
            return (figures.get("baseline") or {}).get(sub), (figures.get("new") or {}).get(sub), label, unit
    return None, None, check, ""


def _cell(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value:.4g}{unit}"


def render_markdown(section: dict[str, Any]) -> str:
    base = section["baseline"]
    made = ", ".join(f"{k} {v}" for k, v in base.items() if k in ("edgeport", "created_utc") and v)
    out = [
        "## Regression gate",
        "",
        f"**{section['verdict'].upper()}** against `{base['path']}`" + (f" (made by {made})" if made else "") + ".",
        f"Measured now: {', '.join(section['measured_now'])} ({', '.join(section['host']['providers'])}"
        + (", the same bytes as the baseline: nothing timed" if section.get("same_bytes_as_baseline") else f", {section['host']['runs']} interleaved rounds")
        + f"). Taken from the baseline's files: {', '.join(section['from_baseline_files'])}.",
        "",
        "| check | baseline | new | judged | limit | result |",
        "|---|---|---|---|---|---|",
    ]
    for check in section["checks"]:
        old, new, label, unit = sides(section, check["name"])
        judged = "-" if check["measured"] is None else f"{check['measured']:+.2%}" if "increase" in check["name"] else f"{check['measured']:.4g}"
        limit = f"{check['limit']:.2%}" if "increase" in check["name"] else f"{check['limit']:.4g}"
        result = {FAIL: "**FAIL**", SKIPPED: "skipped"}.get(check["status"], "pass")
        out.append(f"| {label} | {_cell(old, unit)} | {_cell(new, unit)} | {judged} | {limit} | {result} |")
    out += ["", *[f"- {c['name']}: {c['detail']}" for c in section["checks"] if c["detail"]]]
    return "\n".join(out) + "\n"


def summary_lines(section: dict[str, Any]) -> list[str]:
    lines = [f"regression gate vs {section['baseline']['path']}: {section['verdict'].upper()}"]
    for check in section["checks"]:
        label = sides(section, check["name"])[2]
        mark = {FAIL: "FAIL", SKIPPED: "skip"}.get(check["status"], "ok")
        lines.append(f"  {mark:<4} {label}: {check['detail']}")
    return lines
