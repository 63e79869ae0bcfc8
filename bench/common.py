"""Shared helpers for benchmarks: interleaved ONNX Runtime timing and synthetic image data."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def machine() -> str:
    from edgeport.runtimes.hostcpu import host_cpu

    cpu = host_cpu()
    return f"{cpu.model_name}, {cpu.cores} cores, {'VNNI' if cpu.has_vnni else 'no VNNI'}, {platform.system()} {platform.machine()}, onnxruntime {ort.__version__}"


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_latency(paths: dict[str, Path], feed: dict[str, np.ndarray], threads: int, runs: int = 60, warmup: int = 10) -> dict[str, float]:
    """Median ms per model, runs interleaved model by model so drift hits every model alike."""
    sessions = {name: session(path, threads) for name, path in paths.items()}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feed)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def synthetic_images(count: int, size: int, seed: int) -> np.ndarray:
    """Smooth random fields plus noise, as the example models' BatchNorm statistics were gathered on."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, size // 16, size // 16, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (images + 0.3 * torch.randn(images.shape, generator=generator)).numpy().astype(np.float32)


def save_results(name: str, payload: dict) -> Path:
    """bench/results/NAME.json, with the machine named beside the figures."""
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path
