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
METHODS = ("minmax", "mse", "mean_minmax", "entropy", "percentile")
ONE_SHAPE_METHODS = ("entropy", "percentile")  # ORT's histogram collectors stack the samples of a chunk
_CACHE_VERSION = 1


def calibrate(source_path: Path, specs, op_types: list[str], method: str, config: Any, ctx: PassContext,
              scan, work: Path) -> tuple[Path, bool]:
    """Tensor ranges for ``op_types`` by ``method``, from the cache when model, data and settings are
    unchanged. Returns the ranges file and whether it was a cache hit."""
    from onnxruntime.quantization.calibrate import create_calibrator

    key_material = json.dumps(
        {"v": _CACHE_VERSION, "model": file_sha256(source_path), "data": scan.fingerprint, "method": method,
         "percentile": config.percentile, "op_types": sorted(op_types),
         **({"mse": [RangeHistograms.BINS, RangeHistograms.GRID, MSE_FLOOR, *_mse_grid(config)]} if method == "mse" else {})},
        sort_keys=True,
    )
    cache_path = ctx.cache_dir / "calibration" / f"{hashlib.sha256(key_material.encode()).hexdigest()[:32]}.json"
    if config.use_cache and cache_path.is_file():
        if _readable_ranges(cache_path):
            return cache_path, True
        cache_path.unlink(missing_ok=True)  # truncated or edited: calibrate again rather than serve it
    ranges_path = cache_path if config.use_cache else work / f"ranges.{method}.json"
    if method == "mse":
        minmax_path, _ = calibrate(source_path, specs, op_types, "minmax", config, ctx, scan, work)
        _save_ranges(mse_ranges(source_path, minmax_path, specs, op_types, config, ctx, scan, work), ranges_path)
        return ranges_path, False
    if method == "mean_minmax":
        _save_ranges(mean_minmax_ranges(source_path, specs, op_types, config, ctx, scan, work), ranges_path)
        return ranges_path, False
    calibrator = create_calibrator(
        Path(source_path),
        op_types,
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=ort_method(method),
        providers=["CPUExecutionProvider"],
        extra_options={"percentile": config.percentile} if method == "percentile" else {},
    )
    _feed(calibrator, method, specs, config, ctx, scan)
    with quiet_ort():
        ranges = calibrator.compute_data()
    _save_ranges(ranges, ranges_path)
    return ranges_path, False


def ort_method(method: str):
    """ORT's name for a method's ranges; mse ranges are plain lowest/highest pairs, as minmax's are."""
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "mse": CalibrationMethod.MinMax, "mean_minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method]


def mse_ranges(source_path: Path, minmax_path: Path, specs, op_types: list[str], config: Any, ctx: PassContext, scan, work: Path):
    """Per tensor, the clipping range whose rounding and clipping error on the activation grid in use
    is least in the mean square over the calibration data (as OpenVINO's MSE range estimator picks
    them): a histogram of each tensor over its minmax range, then the best of the shrunken ranges.
    A tensor whose range a few outliers (one value in a million or so) stretch keeps its bulk on a
    finer grid; mean-square error keeps any heavier tail."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, load_tensors_data

    minmax = load_tensors_data(minmax_path)
    bounds = {name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in minmax[name].range_value) for name in minmax}
    histograms = RangeHistograms(bounds, *_mse_grid(config))
    _collect(histograms, "mse", source_path, specs, op_types, config, ctx, scan, work)
    shape = {name: np.asarray(minmax[name].range_value[0]).shape for name in minmax}  # ORT's own layout: (1,)
    ranges = {name: tuple(np.full(shape[name], v, dtype=np.float32) for v in histograms.best_range(name)) for name in minmax}
    return TensorsData(CalibrationMethod.MinMax, ranges)


def mean_minmax_ranges(source_path: Path, specs, op_types: list[str], config: Any, ctx: PassContext, scan, work: Path):
    """Per tensor, the mean over calibration runs of each run's lowest and highest value, one sample
    a run where the data allow (a model with a fixed batch, or ready-made batches, runs several):
    NNCF's default for activations, POT's before it. A value that only a few samples reach is
    clipped, the range most samples span keeps a fine grid. On a real MobileNetV2 the minmax
    ranges of its last blocks were 4-8x wider, stretched by a few images."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    extremes = SampleExtremes()
    _collect(extremes, "mean_minmax", source_path, specs, op_types, config, ctx, scan, work, batch_size=1)  # per-sample extremes
    return TensorsData(CalibrationMethod.MinMax, {name: tuple(np.full((1,), v, dtype=np.float32) for v in extremes.mean_range(name))
                                                  for name in extremes.count})


def _collect(collector: Any, method: str, source_path: Path, specs, op_types: list[str], config: Any, ctx: PassContext, scan,
             work: Path, batch_size: int | None = None) -> None:
    """Run the calibration data through ORT's calibrator with ``collector`` in place of its own:
    ORT runs the model and hands each run's tensors to ``collector.collect``. (A collector must
    not read as empty, e.g. through __len__: ORT then replaces it with its own.)"""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(Path(source_path), op_types, augmented_model_path=str(work / f"augmented.{method}.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy, providers=["CPUExecutionProvider"])
    calibrator.collector = collector
    _feed(calibrator, method, specs, config, ctx, scan, batch_size)


class SampleExtremes:
    """Sums of each tensor's lowest and highest value per run, to average over the runs."""

    def __init__(self) -> None:
        self.low: dict[str, float] = {}
        self.high: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def collect(self, arrays: dict[str, list[np.ndarray]]) -> None:
        for name, values in arrays.items():
            for value in values:
                value = np.asarray(value)
                if value.size == 0 or value.dtype.kind != "f" or np.isnan(value).all():
                    continue
                # NaN skipped as ORT's minmax skips it; -inf (an attention mask) stays, so the
                # search still finds the tensor unbounded
                self.low[name] = self.low.get(name, 0.0) + float(np.nanmin(value))
                self.high[name] = self.high.get(name, 0.0) + float(np.nanmax(value))
                self.count[name] = self.count.get(name, 0) + 1

    def mean_range(self, name: str) -> tuple[float, float]:
        return self.low[name] / self.count[name], self.high[name] / self.count[name]


def _feed(calibrator: Any, method: str, specs, config: Any, ctx: PassContext, scan, batch_size: int | None = None) -> None:
    """Run the calibration data through ``calibrator`` a few batches at a time, with progress."""
    ctx.progress.start(f"calibrating ({method})", total=scan.samples)
    stream = ctx.calibration.batches(specs, batch_size or config.calibration_batch_size, config.calibration_samples)
    with quiet_ort():
        for chunk in _chunks(stream, ctx):
            calibrator.collect_data(_ListReader(chunk))
    ctx.progress.finish()


def _mse_grid(config: Any) -> tuple[int, bool]:
    """The activation grid the ranges are fitted to: its number of steps, and whether it is
    symmetric (ORT then spans max(|lo|, |hi|) on both sides)."""
    return (65535 if config.activation_type == "uint16" else 255), bool(config.activation_symmetric)


MSE_FLOOR = 0.2  # a range side never shrinks below this share of its calibrated extent (see least_square_error_range)


class RangeHistograms:
    """Histograms of each tensor over a fixed range (its minmax one), summed over chunks; arrays of
    any shape, so samples of different lengths calibrate as well."""

    BINS = 2048
    GRID = 101

    def __init__(self, ranges: dict[str, tuple[float, float]], levels: int = 255, symmetric: bool = False):
        self.ranges = {name: (min(low, 0.0), max(high, 0.0)) for name, (low, high) in ranges.items()}
        self.levels, self.symmetric = levels, symmetric
        self.counts: dict[str, np.ndarray] = {}

    def collect(self, arrays: dict[str, list[np.ndarray]]) -> None:
        for name, values in arrays.items():
            low, high = self.ranges.get(name, (0.0, 0.0))
            if name not in self.ranges or not high > low or not np.isfinite([low, high]).all():
                continue
            counts = self.counts.setdefault(name, np.zeros(self.BINS))
            for value in values:
                counts += np.histogram(np.clip(np.asarray(value, dtype=np.float64).ravel(), low, high), bins=self.BINS, range=(low, high))[0]

    def best_range(self, name: str) -> tuple[float, float]:
        low, high = self.ranges[name]
        counts = self.counts.get(name)
        if counts is None or counts.sum() == 0:
            return low, high
        return least_square_error_range(counts / counts.sum(), low, high, self.GRID, self.levels, self.symmetric)


def least_square_error_range(weights: np.ndarray, low: float, high: float, grid: int, levels: int = 255,
                             symmetric: bool = False) -> tuple[float, float]:
    """The (lo, hi) among ``low`` and ``high`` each shrunk toward 0 in ``grid`` steps, to MSE_FLOOR
    of it at most, that least errs in the mean square over the histogram ``weights`` of [low, high]:
    clipped values err by their distance to the range, kept ones by rounding (step^2 / 12, with
    ``levels`` steps). ``symmetric``: one t for both sides, [-t, t]. The floor is a guard: the error
    of the tensor itself does not see what the next op makes of clipped values (a HardSwish reads
    -3..0 as a curve; on PP-OCRv4's detector unbounded shrinking gave min cosine 0.924 where this
    gives 0.949). Prefix sums over the histogram price each candidate in O(1)."""
    width = (high - low) / len(weights)
    centers = low + (np.arange(len(weights)) + 0.5) * width
    mass, first, second = (np.concatenate([[0.0], np.cumsum(weights * centers ** p)]) for p in (0, 1, 2))
    shrink = np.linspace(MSE_FLOOR, 1.0, grid)
    reach = max(-low, high)
    lows, highs = (-reach * shrink, reach * shrink) if symmetric else (low * shrink, high * shrink)
    below = np.searchsorted(centers, lows)  # bins clipped up to lo
    above = np.searchsorted(centers, highs, side="right")  # bins from here on clipped down to hi
    low_error = second[below] - 2 * lows * first[below] + lows ** 2 * mass[below]
    high_error = (second[-1] - second[above]) - 2 * highs * (first[-1] - first[above]) + highs ** 2 * (mass[-1] - mass[above])
    if symmetric:  # the pairs (lows[i], highs[i]) only
        error = low_error + high_error + (mass[above] - mass[below]) * ((highs - lows) / levels) ** 2 / 12
        at = int(np.argmin(error))
        return float(lows[at]), float(highs[at])
    inside = mass[above][None, :] - mass[below][:, None]
    step = (highs[None, :] - lows[:, None]) / levels
    error = low_error[:, None] + high_error[None, :] + inside * step ** 2 / 12
    error[step <= 0] = np.inf
    at = np.unravel_index(np.argmin(error), error.shape)
    return float(lows[at[0]]), float(highs[at[1]])


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
