"""Latency and memory of a model on a provider set, measured in a fresh worker process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgeport.errors import InternalError, ModelLoadError
from edgeport.specs import TensorSpec

WORKER_TIMEOUT_S = 900


def measure(
    model: Path,
    providers: list[str],
    inputs: list[TensorSpec],
    *,
    threads: int | None = None,
    runs: int = 100,
    warmup: int = 10,
    time_limit_s: float = 60.0,
    coverage: bool = True,
    cpu_mem_arena: bool = True,
    mem_pattern: bool = True,
    cpu_fallback: bool = True,
    seed: int = 0,
    provider_options: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Run the benchmark worker; ``inputs`` must have concrete shapes. Without ``cpu_fallback``
    the result may be ``{"refused": reason}``: the providers cannot run the whole model."""
    request = worker_request(model, providers, inputs, threads=threads, runs=runs, warmup=warmup, time_limit_s=time_limit_s,
                             coverage=coverage, cpu_mem_arena=cpu_mem_arena, mem_pattern=mem_pattern, cpu_fallback=cpu_fallback, seed=seed,
                             provider_options=provider_options)
    return run_worker(model, providers, request)


def interleaved(
    models: list[Path],
    providers: list[str],
    inputs: list[TensorSpec],
    *,
    threads: int | None = None,
    runs: int = 100,
    min_runs: int = 10,
    warmup: int = 10,
    time_limit_s: float = 60.0,
    seed: int = 0,
    provider_options: dict[str, dict[str, str]] | None = None,
) -> list[list[float]]:
    """Per-run latencies (ms) of each model, timed in alternating rounds in one worker process on
    the same feed: the fair way to compare two models on a machine whose speed drifts. At least
    ``min_runs`` rounds, ``runs`` when they fit in ``time_limit_s``."""
    request = worker_request(models[0], providers, inputs, threads=threads, runs=runs, warmup=warmup, time_limit_s=time_limit_s,
                             coverage=False, cpu_mem_arena=True, mem_pattern=True, cpu_fallback=True, seed=seed, provider_options=provider_options)
    label = Path(" and ".join(str(m) for m in models))  # an error names both: either may be the one ORT refuses
    return run_worker(label, providers, {**request, "models": [str(m) for m in models], "min_runs": min_runs})["latency_ms_runs"]


def worker_request(model: Path | str, providers: list[str], inputs: list[TensorSpec], *, threads: int | None, runs: int, warmup: int,
                   time_limit_s: float, coverage: bool, cpu_mem_arena: bool, mem_pattern: bool, cpu_fallback: bool, seed: int,
                   provider_options: dict[str, dict[str, str]] | None = None, compiled_context: bool = False) -> dict[str, Any]:
    """The benchmark worker's request, here or on a remote device (bench_worker.run reads it).
    ``compiled_context``: also compile to ORT's EPContext form and report its size."""
    return {
        "model": str(model),
        "providers": providers,
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in inputs],
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "time_limit_s": time_limit_s,
        "coverage": coverage,
        "cpu_mem_arena": cpu_mem_arena,
        "mem_pattern": mem_pattern,
        "disable_cpu_fallback": not cpu_fallback and "CPUExecutionProvider" not in providers,
        "seed": seed,
        "provider_options": provider_options or {},
        "compiled_context": compiled_context,
    }


def run_worker(model: Path, providers: list[str], request: dict[str, Any], *, show_progress: bool = False) -> dict[str, Any]:
    """Run the worker on ``request``. ``show_progress``: its timed runs draw a bar on this process's
    stderr (a terminal), which it then shares instead of having it captured."""
    if show_progress:
        request = {**request, "progress": f"timing {Path(model).name}"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "edgeport.runtimes.bench_worker"],
            input=json.dumps(request), stdout=subprocess.PIPE, stderr=None if show_progress else subprocess.PIPE, text=True,
            timeout=WORKER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise InternalError(f"the benchmark worker ran past {WORKER_TIMEOUT_S} s on '{model}'", fix="lower --runs or --time-limit") from exc
    if done.returncode != 0 or not done.stdout.strip():
        tail = ((done.stderr or "").strip().splitlines() or ["no output (see above)" if show_progress else "no output"])[-1]
        raise InternalError(f"the benchmark worker died on '{model}' (exit {done.returncode}: {tail[:200]})", fix="rerun with EDGEPORT_DEBUG=1, and report it")
    result = json.loads(done.stdout)
    if "error" in result and result.get("stage") == "measurement":  # our measuring code failed, not the model
        raise InternalError(f"the benchmark worker failed measuring '{model}': {result['error'][:300]}", fix="rerun with EDGEPORT_DEBUG=1, and report it")
    if "error" in result:
        raise ModelLoadError(f"ONNX Runtime cannot run '{model}' on {', '.join(providers)}: {result['error'][:300]}", fix="check the model loads with onnxruntime and the inputs' shapes")
    return result
