"""The measurement worker: one fresh process per (model, provider set), so memory and load time
are the model's alone. Reads a JSON request on stdin, prints one JSON result on stdout.

Run as ``python -m edgeport.runtimes.bench_worker``; ``benchmark.measure`` is the way in.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

try:
    from edgeport.runtimes import ep_plugins
except ImportError:  # shipped to a device beside this file, without edgeport
    import ep_plugins  # type: ignore[no-redef]


def _status_mb(field: str) -> float | None:
    """VmRSS / VmHWM from /proc/self/status (Linux), in MiB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Linux: writing 5 to clear_refs resets the peak-RSS mark, so imports' spikes do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _feed(inputs: list[dict], seed: int):
    import numpy as np

    try:  # imported where the feed is made, as numpy is
        from edgeport.runtimes.synthetic import synthetic_array
    except ImportError:  # shipped to a device beside this file, without edgeport
        from synthetic import synthetic_array  # type: ignore[no-redef]

    rng = np.random.default_rng(seed)
    return {spec["name"]: synthetic_array(spec["shape"], spec["dtype"], rng) for spec in inputs}


def _progress_bar(request: dict, total: int):
    """A bar on stderr for the timed runs when the parent asked for one and tqdm is here (a device may lack it)."""
    if not request.get("progress"):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=request["progress"], file=sys.stderr, leave=False, mininterval=0.1, dynamic_ncols=True)


def _options(request: dict, ort, profile_dir: str | None = None):
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if request.get("threads"):
        options.intra_op_num_threads = request["threads"]
        options.inter_op_num_threads = 1
    if request.get("disable_cpu_fallback"):  # the profile forbids CPU fallback: ORT must refuse, not hide it
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.enable_cpu_mem_arena = request.get("cpu_mem_arena", True)
    options.enable_mem_pattern = request.get("mem_pattern", True)
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / "ort")
    return options


_COPIES = ("MemcpyToHost", "MemcpyFromHost")  # ORT inserts these between devices; not the model's


def _model_node_names(path: str) -> set[str] | None:
    """The model's top-level nodes as ORT names them. ORT turns Constant nodes into initializers
    when it loads a model, then names an unnamed node ``<OpType>_<index among the rest>``.
    None for an ORT-format file, which onnx cannot read, and where onnx is not installed (a device
    with only onnxruntime): coverage then counts the profiler's events."""
    if path.endswith(".ort"):
        return None
    try:
        import onnx
    except ImportError:
        return None
    graph = onnx.load(path, load_external_data=False).graph
    kept = [node for node in graph.node if node.op_type != "Constant"]
    return {node.name or f"{node.op_type}_{index}" for index, node in enumerate(kept)}


def _is_compiled_partition(node: str, provider: str) -> bool:
    """ORT names an EP's compiled partition ``<EP>_<subgraph>_<n>``: one event for many model nodes."""
    return node.startswith(provider + "_")


def _coverage(request: dict, ort, feed) -> dict:
    """Which provider ran each of the model's nodes, from ORT's own profiler (one profiled inference).

    Graph optimizations are off in this session, so fusion cannot shrink a provider's count: every
    node that runs as its own event counts once. A compiled partition (OpenVINO, TensorRT, QNN,
    CoreML, NNAPI) is one profiler event; it is credited with the model's top-level nodes that no
    other event ran.
    """
    with tempfile.TemporaryDirectory() as tmp:
        options = _options(request, ort, tmp)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = _session(request, ort, options)
        session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    listed = _model_node_names(request["model"])
    placed: dict[str, str] = {}  # every node that ran as an event of its own -> its provider
    op_of: dict[str, str] = {}
    partitions: dict[str, str] = {}  # compiled partition -> its provider
    activation_bytes = 0
    for event in trace:
        args = event.get("args", {})
        if event.get("cat") != "Node" or "provider" not in args or args.get("op_name") in _COPIES:
            continue
        node = event["name"]
        for suffix in ("_kernel_time", "_fence_before", "_fence_after"):
            node = node[: -len(suffix)] if node.endswith(suffix) else node
        activation_bytes = max(activation_bytes, int(args.get("activation_size", 0) or 0) + int(args.get("output_size", 0) or 0))
        if _is_compiled_partition(node, args["provider"]) and (listed is None or node not in listed):
            partitions[node] = args["provider"]
        else:
            placed[node] = args["provider"]
            op_of[node] = args.get("op_name", "")
    counts = Counter(placed.values())
    fused_by_provider = Counter(partitions.values())
    note = ""
    model_nodes = len(placed)
    if partitions and listed is None:  # an .ort file: its node list is not readable here
        counts.update(fused_by_provider)
        model_nodes += len(partitions)
        note = "the model's node list cannot be read here (an ORT-format file, or no onnx package): each compiled partition counts as one node"
    elif partitions:
        # The model nodes no event ran are inside the partitions. Exact when every event is a listed
        # top-level node; subgraph nodes and inlined functions make it an estimate, said as such.
        in_partitions = len(listed - placed.keys())
        model_nodes += in_partitions
        unlisted = len(placed.keys() - listed)
        if len(fused_by_provider) == 1:
            counts[next(iter(fused_by_provider))] += in_partitions
        else:  # several compiling providers: which of them took which node is not in the trace
            total_parts = sum(fused_by_provider.values())
            for provider, parts in fused_by_provider.items():
                counts[provider] += round(in_partitions * parts / total_parts)
            note = "nodes inside compiled partitions of several providers are split by partition count; "
        if unlisted:
            note += (f"{unlisted} profiled nodes are not top-level model nodes (subgraph bodies or inlined functions): "
                     "the count inside compiled partitions is an estimate")
    total = model_nodes
    preferred = request["providers"][0]
    not_preferred = Counter(op_of[n] for n, p in placed.items() if p != preferred)
    result = {
        "source": "onnxruntime profiler",
        "nodes": total,
        "by_provider": dict(counts),
        "compiled_partitions": dict(fused_by_provider),
        "preferred_share": round(min(counts.get(preferred, 0), total) / total, 4) if total else None,
        "ops_not_on_preferred": dict(not_preferred.most_common(10)),
        "max_node_activation_mb_unoptimized_graph": round(activation_bytes / 2**20, 3),  # this session runs without fusion
    }
    if note:
        result["note"] = note.rstrip("; ")
    if not_preferred and preferred in ep_plugins.PLUGINS:  # the provider's own reasons for each node it left
        result["refused_nodes"] = _refused_nodes(request, ort)
    return result


def _compiled_context(request: dict, ort) -> dict:
    """Compile once more with ORT's EPContext output on: the size of the precompiled form a device app
    loads (a QNN context binary), and how long compiling took."""
    with tempfile.TemporaryDirectory() as tmp:
        options = _options(request, ort)
        ep_plugins.write_compiled_context(options, Path(tmp) / "model_ctx.onnx")
        started = time.perf_counter()
        _session(request, ort, options)
        compile_ms = (time.perf_counter() - started) * 1e3
        binaries = [p for p in Path(tmp).iterdir() if p.name != "model_ctx.onnx"]
        return {"compile_ms": round(compile_ms, 3), "context_binary_bytes": sum(p.stat().st_size for p in binaries),
                "files": sorted(p.name for p in binaries)}


def run(request: dict) -> dict:
    import numpy as np
    import onnxruntime as ort

    feed = _feed(request["inputs"], request.get("seed", 0))
    ep_plugins.register_plugins(ort)  # a plugin's library loads here, not inside the timed (and measured) session load
    # Baseline: the runtime imported and the inputs built, nothing of the model loaded yet.
    exact = _reset_peak() and _status_mb("VmHWM") is not None
    baseline = _status_mb("VmRSS") if exact else _maxrss_mb()
    started = time.perf_counter()
    try:
        session = _session(request, ort, _options(request, ort))
    except Exception as exc:
        if not request.get("disable_cpu_fallback"):
            raise _ModelFault(exc) from exc
        refused = {"refused": f"{', '.join(request['providers'])} cannot run every node and CPU fallback is forbidden "
                              f"({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__})"}
        nodes = _refused_nodes(request, ort)
        if nodes:
            refused["refused_nodes"] = nodes
            named = "; ".join(f"{n['node']} ({n['op_type']}): {n['reason']}" for n in nodes[:3])
            refused["refused"] = f"{request['providers'][0]} refuses {len(nodes)} node(s) and CPU fallback is forbidden: {named}"[:600]
        return refused
    load_ms = (time.perf_counter() - started) * 1e3
    load_peak = _status_mb("VmHWM") if exact else _maxrss_mb()
    used = session.get_providers()
    started = time.perf_counter()
    try:
        session.run(None, feed)
    except Exception as exc:  # the model fails on inputs of its declared shapes
        raise _ModelFault(exc) from exc
    cold_ms = (time.perf_counter() - started) * 1e3
    for _ in range(request.get("warmup", 10)):
        session.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + request.get("time_limit_s", 60.0)
    bar = _progress_bar(request, request.get("runs", 100))
    for _ in range(request.get("runs", 100)):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
        if bar is not None:  # outside the timed span
            bar.update(1)
        if time.perf_counter() > deadline and len(times) >= 5:
            break
    if bar is not None:
        bar.close()
    peak = _status_mb("VmHWM") if exact else _maxrss_mb()
    ordered = sorted(times)

    def pct(q: float) -> float:
        return round(float(np.percentile(ordered, q)), 4)

    mean = statistics.fmean(times)
    result = {
        "providers_used": used,
        "session_load_ms": round(load_ms, 3),
        "cold_first_inference_ms": round(cold_ms, 3),
        "runs": len(times),
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p95": pct(95), "p99": pct(99), "mean": round(mean, 4),
                       "min": round(ordered[0], 4), "cv": round(statistics.pstdev(times) / mean, 4) if mean else 0.0},
        "latency_ms_runs": [round(t, 4) for t in times],  # each timed run in order: the report's distribution
        "memory": {"baseline_rss_mb": round(baseline, 2), "peak_rss_mb": round(peak, 2),
                   "peak_above_baseline_mb": round(max(peak - baseline, 0.0), 2),
                   "load_peak_above_baseline_mb": round(max(load_peak - baseline, 0.0), 2),  # loading includes an EP's compile
                   "method": "VmHWM reset after imports (exact)" if exact else "ru_maxrss (includes import peaks)"},
    }
    del session
    if request.get("coverage", True):
        result["coverage"] = _coverage(request, ort, feed)
    if request.get("compiled_context"):
        result["compiled_context"] = _compiled_context(request, ort)
    return result


def run_interleaved(request: dict) -> dict:
    """Time several models on the same feed in alternating rounds (A B, B A, A B, ...), so drift in
    the machine's speed (another tenant, frequency, heat) lands on every model alike."""
    import onnxruntime as ort

    feed = _feed(request["inputs"], request.get("seed", 0))
    ep_plugins.register_plugins(ort)
    try:
        sessions = [_session({**request, "model": model}, ort, _quiet_pool_options(request, ort)) for model in request["models"]]
        for session in sessions:
            for _ in range(1 + request.get("warmup", 10)):
                session.run(None, feed)
    except Exception as exc:
        raise _ModelFault(exc) from exc
    times: list[list[float]] = [[] for _ in sessions]
    deadline = time.perf_counter() + request.get("time_limit_s", 60.0)
    for round_index in range(request.get("runs", 100)):
        order = range(len(sessions)) if round_index % 2 == 0 else reversed(range(len(sessions)))
        for k in order:
            start = time.perf_counter()
            sessions[k].run(None, feed)
            times[k].append((time.perf_counter() - start) * 1e3)
        if time.perf_counter() > deadline and round_index + 1 >= request.get("min_runs", 10):
            break
    return {"latency_ms_runs": [[round(t, 5) for t in ts] for ts in times]}


def _quiet_pool_options(request: dict, ort):
    """Session options for models that take turns: idle intra-op threads sleep instead of spinning,
    else each session's pool spins on the cores while the other one runs (measured: MiniLM ran 2.4x
    slower interleaved than alone on 2 cores)."""
    options = _options(request, ort)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _session(request: dict, ort, options):
    return ep_plugins.create_session(ort, request["model"], options, request["providers"], request.get("provider_options"))


def _refused_nodes(request: dict, ort) -> list[dict]:
    """Which nodes the preferred provider refuses and why, from ORT's verbose log."""
    options = _options({**request, "disable_cpu_fallback": False}, ort)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ep_plugins.refusals(ort, request["model"], options, request["providers"], request.get("provider_options"))


class _ModelFault(Exception):
    """ONNX Runtime refused to load or run the model: the model's fault, not this worker's."""


def main() -> None:
    request = json.loads(sys.stdin.read())
    try:
        result = run_interleaved(request) if "models" in request else run(request)
    except Exception as exc:  # reported to the parent, which turns it into a one-line error
        cause = exc.__cause__ if isinstance(exc, _ModelFault) and exc.__cause__ is not None else exc
        result = {"error": f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}",
                  "stage": "model" if isinstance(exc, _ModelFault) else "measurement"}
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
