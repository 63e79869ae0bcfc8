"""report.html: one self-contained page a person reads at a glance, beside report.json.

Charts are inline SVG drawn by matplotlib (its object API, no pyplot, so a caller's backend is left
alone); no script, no font or style from the network. Every chart has its table below it, so the
page says everything without matplotlib too (then it says how to get the charts).
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path
from typing import Any, Callable

from edgeport.errors import first_line
from edgeport.reports import fidelity_step
from edgeport.size_breakdown import size_by_op_and_precision
from edgeport.validation_report import cell

PASS_COLOUR, FAIL_COLOUR, SKIP_COLOUR, BASE_COLOUR = "#2e7d32", "#c62828", "#9e9e9e", "#607d8b"
_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:70rem;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.badge{display:inline-block;padding:.1rem .6rem;border-radius:.3rem;color:#fff;font-weight:600}
.pass{background:#2e7d32}.fail{background:#c62828}.skipped{background:#9e9e9e}
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f5f5}figure.chart{margin:.5rem 0}figure.chart svg{max-width:100%;height:auto}.note{color:#666}
"""


def render_html(report: dict[str, Any], *, model_path: Path | None = None) -> str:
    """The page for an export's report (or a validate report), with ``model_path`` for the size breakdown."""
    charts = _charts_available()
    if not charts:
        return _page(report, model_path, False, "Charts need matplotlib: <code>pip install 'edgeport[report]'</code>.")
    try:
        return _page(report, model_path, True, "")
    except Exception as exc:  # a chart that cannot be drawn must not cost the export: the tables hold every figure
        return _page(report, model_path, False, f"The charts could not be drawn ({html.escape(first_line(exc))}).")


def _page(report: dict[str, Any], model_path: Path | None, charts: bool, note: str) -> str:
    validation = report.get("validation") or (report if report.get("kind") == "validate" else None)
    verdict = _verdict(report, validation)
    model = report.get("model") or {}
    title = f"edgeport {html.escape(str(report.get('kind', 'export')))}: {html.escape(str(model.get('source') or model.get('path', '')))}"
    body = [f"<h1>{title} <span class='badge {verdict}'>{verdict.upper()}</span></h1>",
            f"<p class='note'>{html.escape(str(report.get('created_utc', '')))} · edgeport {html.escape(str(report.get('versions', {}).get('edgeport', '')))}</p>"]
    if note:
        body.append(f"<p class='note'>{note} The tables below hold every figure.</p>")
    for section in (_steps, _budgets, _latency, _sizes, _baseline, _ranking):
        body.extend(section(report, validation, model_path, charts))
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>{title}</title><style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _verdict(report: dict[str, Any], validation: dict[str, Any] | None) -> str:
    failed = [(validation or {}).get("verdict") == "fail", (report.get("regression") or {}).get("verdict") == "fail"]
    search = fidelity_step(report.get("steps", []))
    failed.append(search is not None and not search["metrics"].get("fidelity", {}).get("met", True))
    return "fail" if any(failed) else "pass"


def _charts_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(draw: Callable[[Any], None], width: float, height: float, name: str) -> str:
    """A chart drawn by ``draw(figure)``, as an inline SVG element."""
    import matplotlib
    from matplotlib.figure import Figure

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "edgeport"}):  # fixed ids and no timestamp: the same report, the same page
        figure = Figure(figsize=(width, height), layout="constrained")
        draw(figure)
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg[svg.index("<svg"):], flags=re.S)  # RDF about the file, not the chart
    return f"<figure class='chart' data-chart='{html.escape(name, quote=True)}'>{svg}</figure>"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _steps(report, validation, model_path, charts) -> list[str]:
    steps = report.get("steps") or []
    if not steps:
        return []
    out = ["<h2>Steps</h2>"]
    names = [f"{i + 1}. {s['name']}" for i, s in enumerate(steps)]
    if charts:
        def draw(fig):
            left, right = fig.subplots(1, 2, sharey=True)
            left.barh(names, [s["wall_s"] for s in steps], color=BASE_COLOUR)
            left.set_xlabel("time (s)")
            left.invert_yaxis()
            right.barh(names, [(s.get("output_bytes") or 0) / 1e6 for s in steps], color="#1565c0")
            right.set_xlabel("model size after the step (MB)")
        out.append(_figure(draw, 9, 0.45 * len(steps) + 1, "steps"))
    out.append(_table(["step", "time (s)", "size after (bytes)", "cached"],
                      [[n, s["wall_s"], s.get("output_bytes"), s.get("cached")] for n, s in zip(names, steps)]))
    return out


def _budgets(report, validation, model_path, charts) -> list[str]:
    if not validation:
        return []
    out = ["<h2>Budgets per profile</h2>",
           "<p class='note'>Each bar is the budget's margin as a share of its limit: right of zero is headroom, left is overrun.</p>"]
    for profile in validation.get("profiles", []):
        judged = [b for b in profile["budgets"] if b.get("margin") is not None and b.get("limit")]
        out.append(f"<h3>{html.escape(profile['profile'])} <span class='badge {profile['verdict']}'>{profile['verdict'].upper()}</span></h3>")
        if charts and judged:
            def draw(fig, judged=judged):
                ax = fig.subplots()
                shares = [max(min(b["margin"] / abs(b["limit"]), 1.0), -1.0) for b in judged]
                ax.barh([b["name"] for b in judged], shares, color=[PASS_COLOUR if b["status"] == "pass" else FAIL_COLOUR for b in judged])
                ax.axvline(0, color="#222", linewidth=0.8)
                ax.set_xlim(-1, 1)
                ax.set_xlabel("margin / limit (clipped to ±1)")
                ax.invert_yaxis()
            out.append(_figure(draw, 8, 0.4 * len(judged) + 1, f"budgets-{profile['profile']}"))
        out.append(_table(["budget", "status", "measured", "limit", "basis", "detail"],
                          [[b["name"], b["status"], b.get("measured"), b.get("limit"), b.get("basis"), b.get("detail")] for b in profile["budgets"]]))
    return out


def _latency(report, validation, model_path, charts) -> list[str]:
    measured = [(p["profile"], p.get("measurement") or {}) for p in (validation or {}).get("profiles", [])]
    measured = [(name, m) for name, m in measured if m.get("latency_ms_runs")]
    if not measured:
        return []
    out = ["<h2>Latency distribution</h2>"]
    if charts:
        def draw(fig):
            ax = fig.subplots()
            for name, m in measured:
                runs = sorted(m["latency_ms_runs"])
                ax.step(runs, [(i + 1) / len(runs) for i in range(len(runs))], where="post", label=f"{name} ({m.get('kind', 'host')})")
            ax.set_xlabel("latency per run (ms)")
            ax.set_ylabel("share of runs at or below")
            ax.legend(loc="lower right")
        out.append(_figure(draw, 8, 3.5, "latency"))
    out.append(_table(["profile", "measured on", "runs", "p50 ms", "p95 ms", "p99 ms", "cv"],
                      [[name, m.get("kind"), m.get("runs"), m["latency_ms"]["p50"], m["latency_ms"]["p95"], m["latency_ms"]["p99"], m["latency_ms"]["cv"]]
                       for name, m in measured]))
    return out


def _sizes(report, validation, model_path, charts) -> list[str]:
    if model_path is None or not model_path.is_file() or model_path.suffix != ".onnx":
        return []
    rows = size_by_op_and_precision(model_path)
    if not rows:
        return []
    out = ["<h2>Size by op type and precision</h2>"]
    if charts:
        ops = list(dict.fromkeys(r["op_type"] for r in rows))
        precisions = list(dict.fromkeys(r["precision"] for r in rows))

        def draw(fig):
            ax = fig.subplots()
            left = [0.0] * len(ops)
            for precision in precisions:
                widths = [sum(r["bytes"] for r in rows if r["op_type"] == op and r["precision"] == precision) / 1e3 for op in ops]
                ax.barh(ops, widths, left=left, label=precision)
                left = [a + b for a, b in zip(left, widths)]
            ax.set_xlabel("weights and constants (kB)")
            ax.legend(loc="lower right")
            ax.invert_yaxis()
        out.append(_figure(draw, 8, 0.4 * len(ops) + 1.2, "sizes"))
    out.append(_table(["op type", "precision", "bytes"], [[r["op_type"], r["precision"], r["bytes"]] for r in rows]))
    return out


def _baseline(report, validation, model_path, charts) -> list[str]:
    gate = report.get("regression")
    if not gate:
        return []
    from edgeport.regression_report import sides

    checks = gate["checks"]
    out = [f"<h2>Against the baseline <span class='badge {gate['verdict']}'>{gate['verdict'].upper()}</span></h2>",
           f"<p class='note'>Baseline {html.escape(gate['baseline']['path'])}. Measured now: {html.escape(', '.join(gate['measured_now']))}. "
           f"Taken from the baseline's files: {html.escape(', '.join(gate['from_baseline_files']))}.</p>"]
    pairs = [(sides(gate, c["name"]), c) for c in checks]
    shown = [((old, new, label, unit), c) for (old, new, label, unit), c in pairs if isinstance(old, (int, float)) and isinstance(new, (int, float)) and old]
    if charts and shown:
        def draw(fig):
            ax = fig.subplots()
            labels = [label for (_, _, label, _), _ in shown]
            ax.barh([i + 0.2 for i in range(len(shown))], [1.0] * len(shown), height=0.4, color=BASE_COLOUR, label="baseline")
            ax.barh([i - 0.2 for i in range(len(shown))], [new / old for (old, new, _, _), _ in shown], height=0.4,
                    color=[PASS_COLOUR if c["status"] != "fail" else FAIL_COLOUR for _, c in shown], label="new")
            ax.set_yticks(range(len(shown)), labels)
            ax.set_xlabel("new / baseline")
            ax.axvline(1.0, color="#222", linewidth=0.8)
            ax.legend(loc="lower right")
            ax.invert_yaxis()
        out.append(_figure(draw, 8, 0.55 * len(shown) + 1.2, "baseline"))
    out.append(_table(["check", "baseline", "new", "status", "detail"],
                      [[label, old, new, c["status"], c["detail"]] for (old, new, label, unit), c in pairs]))
    return out


def _ranking(report, validation, model_path, charts) -> list[str]:
    search = fidelity_step(report.get("steps", []))
    ranking = (search or {}).get("metrics", {}).get("ranking") or []
    if not ranking:
        return []
    top = ranking[:15]
    out = ["<h2>int8 sensitivity ranking</h2>",
           "<p class='note'>The search's ranking, worst first: groups measured alone in int8 (every other group float, or "
           "at 16-bit activations on an NPU; on the samples int8 serves worst) lead, by the SQNR left at the outputs; "
           "the rest follow by the noise each adds where it sits (fp32 and int8 intermediates compared).</p>"]
    if charts:
        # the longest bar is the worst group: noise power at the outputs alone in int8, as a share of the signal's
        measured = [(r, 100 * 10 ** (-r["sqnr_db_alone_in_int8"] / 10)) for r in top if r.get("sqnr_db_alone_in_int8") is not None]
        shown, label = (measured, "noise at the outputs alone in int8 (% of signal power)") if measured \
            else ([(r, r["added_noise"]) for r in top], "added noise where it sits")

        def draw(fig):
            ax = fig.subplots()
            ax.barh([f"{r['node']} ({r['op_type']})" for r, _ in shown], [value for _, value in shown], color="#ef6c00")
            ax.set_xlabel(label)
            ax.invert_yaxis()
        out.append(_figure(draw, 8, 0.35 * len(shown) + 1, "ranking"))
    out.append(_table(["node", "op type", "added noise", "SQNR alone in int8 (dB)", "margin alone in int8"],
                      [[r["node"], r["op_type"], r["added_noise"], r.get("sqnr_db_alone_in_int8"), r.get("margin_alone_in_int8")] for r in top]))
    return out
