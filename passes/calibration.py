"""Calibration: tensor ranges for static int8 from real data through ORT's calibrators, cached by
model, data and settings so a re-run (or the int8 search's next candidate) skips it."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgeport.artifacts import file_sha256
from edgeport.passes.context import PassContext

_CHUNK_BATCHES = 4  # batches held in memory at once during calibration
_CACHE_VERSION = 1


def calibrate(source_path: Path, specs, op_types: list[str], method: str, config: Any, ctx: PassContext,
              scan, work: Path) -> tuple[Path, bool]:
    """Tensor ranges for ``op_types`` by ``method``, from the cache when model, data and settings are
    unchanged. Returns the ranges file and whether it was a cache hit."""
    from onnxruntime.quantization.calibrate import create_calibrator

    key_material = json.dumps(
        {"v": _CACHE_VERSION, "model": file_sha256(source_path), "data": scan.fingerprint, "method": method,
         "percentile": config.percentile, "op_types": sorted(op_types)},
        sort_keys=True,
    )
    cache_path = ctx.cache_dir / "calibration" / f"{hashlib.sha256(key_material.encode()).hexdigest()[:32]}.json"
    if config.use_cache and cache_path.is_file():
        if _readable_ranges(cache_path):
            return cache_path, True
        cache_path.unlink(missing_ok=True)  # truncated or edited: calibrate again rather than serve it
    ranges_path = cache_path if config.use_cache else work / f"ranges.{method}.json"
    calibrator = create_calibrator(
        Path(source_path),
        op_types,
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=ort_method(method),
        providers=["CPUExecutionProvider"],
        extra_options={"percentile": config.percentile} if method == "percentile" else {},
    )
    ctx.progress.start(f"calibrating ({method})", total=scan.samples)
    stream = ctx.calibration.batches(specs, config.calibration_batch_size, config.calibration_samples)
    with quiet_ort():
        for chunk in _chunks(stream, ctx):
            calibrator.collect_data(_ListReader(chunk))
    ctx.progress.finish()
    with quiet_ort():
        ranges = calibrator.compute_data()
    _save_ranges(ranges, ranges_path)
    return ranges_path, False


def ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method]


def _chunks(stream, ctx: PassContext) -> Iterator[list[dict[str, np.ndarray]]]:
    chunk: list[dict[str, np.ndarray]] = []
    for batch in stream:
        chunk.append(batch.inputs)
        ctx.progress.advance(batch.size)
        if len(chunk) == _CHUNK_BATCHES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _ListReader:
    """ORT's CalibrationDataReader interface over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._iter = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)


def _readable_ranges(path: Path) -> bool:
    from onnxruntime.quantization.calibrate import load_tensors_data

    try:
        return bool(load_tensors_data(path))
    except Exception:  # not JSON, or not ORT's layout
        return False


def _save_ranges(ranges, path: Path) -> None:
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(ranges, path)  # writes to a temp name and renames: a crash leaves no half cache


class quiet_ort:
    """ORT's quantizer logs advice at WARNING through the root logger, and its histogram calibrators
    print to stdout; keep both out of the user's terminal (and out of --json output)."""

    def __enter__(self):
        import contextlib
        import io

        self._level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        self._stdout = contextlib.redirect_stdout(io.StringIO())
        self._stdout.__enter__()
        return self

    def __exit__(self, *exc):
        self._stdout.__exit__(*exc)
        logging.getLogger().setLevel(self._level)
        return False
