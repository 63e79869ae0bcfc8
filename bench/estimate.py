"""How far to trust `edgeport validate`'s latency estimate: calibrate this host, then predict and
measure eight models at fp32 and int8 in one run, at 1 and 2 threads.

    python bench/estimate.py [THREADS,...]     (default 1,2)

Runs in bench/.venv-accuracy (bench/accuracy.py builds it) for the two real-weight models:
all-MiniLM-L6-v2 and PP-OCRv4's detector (an ONNX file from PaddlePaddle's converter). int8 is
edgeport's plain static QDQ (`--no-search`): the estimate is judged, not the search. Measured is
the p50 of `edgeport validate`'s own benchmark worker, one model at a time. Writes bench/results/estimate.json.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import _in_bench_venv, _minilm, _ppocr_det  # noqa: E402


def _models(work: Path) -> dict[str, tuple[str, list[str] | None, dict[str, tuple[int, ...]]]]:
    """name -> (model: a factory 'module:fn' or an .onnx path, input specs, shapes to run at)."""
    import edgeport

    pruned = edgeport.prune("examples.models:resnet18", method="channels", ratio=0.5, inputs=["image:batchx3x224x224"],
                            out_dir=work / "pruned", cache_dir=work / "cache")
    tokens = {"input_ids": (1, 32), "attention_mask": (1, 32)}
    token_specs = ["input_ids:batchxsequence:int64", "attention_mask:batchxsequence:int64"]
    return {
        "digits CNN": ("examples.digits.model:trained_digits_cnn", ["image:batchx1x8x8"], {"image": (1, 1, 8, 8)}),
        "ResNet-18": ("examples.models:resnet18", ["image:batchx3x224x224"], {"image": (1, 3, 224, 224)}),
        "ResNet-18 pruned 50%": (str(pruned.out_dir / "model.pt2"), None, {"image": (1, 3, 224, 224)}),
        "MobileNetV2": ("examples.models:mobilenet_v2", ["image:batchx3x224x224"], {"image": (1, 3, 224, 224)}),
        "tiny transformer": ("examples.models:tiny_transformer", token_specs, tokens),
        "GRU audio": ("examples.models:gru_audio", ["frames:batchxtimex40"], {"frames": (1, 100, 40)}),
        "MiniLM-L6 (real weights)": (_minilm()[0], token_specs, tokens),
        "PP-OCRv4 det (paddle2onnx)": (_ppocr_det(), None, {"x": (1, 3, 320, 320)}),
    }


def _feed(session, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for value, shape in zip(session.get_inputs(), shapes.values()):  # by position: a .pt2 names its own inputs
        if "int64" in value.type:
            feed[value.name] = np.ones(shape, np.int64) if "mask" in value.name else rng.integers(0, 1000, shape).astype(np.int64)
        else:
            feed[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def main() -> None:
    _in_bench_venv()
    import edgeport
    from bench.common import machine, save_results, session
    from edgeport.runtimes.benchmark import measure
    from edgeport.profile_calibration import calibrate_profile
    from edgeport.runtimes.estimate import estimate_latency_ms, rates_for
    from edgeport.runtimes.graph_cost import graph_cost
    from edgeport.specs import TensorSpec

    thread_counts = [int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "1,2").split(",")]
    rows, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files: dict[str, tuple[Path, Path, dict]] = {}
        for index, (name, (model, inputs, shapes)) in enumerate(_models(work).items()):
            out = work / f"m{index}"
            calib = work / f"calib{index}.npz"
            edgeport.export(model, inputs=inputs, quantize=False, out_dir=out / "fp32", cache_dir=work / "cache")
            samples = [_feed(session(out / "fp32" / "model.onnx", 1), shapes, seed) for seed in range(16)]
            np.savez(calib, **{k: np.concatenate([s[k] for s in samples]) for k in samples[0]})
            shapes = {k: v.shape for k, v in samples[0].items()}  # under the model's own input names
            edgeport.export(out / "fp32" / "model.onnx", calib=calib, search=False, out_dir=out / "int8", cache_dir=work / "cache")
            files[name] = (out / "fp32" / "model.onnx", out / "int8" / "model.onnx", shapes)
        for threads in thread_counts:
            profile = calibrate_profile(work / f"host{threads}.toml", threads=threads)
            rates = rates_for(profile.hardware, profile.measured)
            errors = []
            for name, (fp32, int8, shapes) in files.items():
                dtypes = {i.name: "int64" if "int64" in i.type else "float32" for i in session(fp32, 1).get_inputs()}
                specs = [TensorSpec(k, tuple(v), dtypes[k]) for k, v in shapes.items()]
                # the measurement validate makes: a fresh worker process, one model at a time (interleaved
                # sessions at 2 threads steal each other's cores while their thread pools spin)
                measured = {p: measure(path, ["CPUExecutionProvider"], specs, threads=threads, runs=60, coverage=False)["latency_ms"]["p50"]
                            for p, path in (("fp32", fp32), ("int8", int8))}
                for precision, path in (("fp32", fp32), ("int8", int8)):
                    estimate = estimate_latency_ms(graph_cost(str(path), specs), rates)
                    predicted = estimate.get("latency_ms")
                    error = None if predicted is None else predicted / measured[precision] - 1
                    if error is not None:
                        errors.append(abs(error))
                    rows.append({"threads": threads, "model": name, "precision": precision, "predicted_ms": predicted,
                                 "measured_ms": round(measured[precision], 4), "error": None if error is None else round(error, 3),
                                 **({"refused": estimate["refused"]} if "refused" in estimate else {})})
                    r = rows[-1]
                    print(f"{threads}t {name:<28} {precision} predicted {predicted if predicted is not None else 'refused':>9} ms, "
                          f"measured {r['measured_ms']:>9.3f} ms, error {'' if error is None else f'{error:+.0%}'}", flush=True)
            summary[threads] = {"median_abs_error": round(statistics.median(errors), 3), "max_abs_error": round(max(errors), 3),
                                "estimates": len(errors), "calibration_check": {"median": profile.measured.estimate_error_median,
                                                                               "max": profile.measured.estimate_error_max}}
            print(f"{threads} thread(s): median |error| {summary[threads]['median_abs_error']:.0%}, max {summary[threads]['max_abs_error']:.0%} "
                  f"over {len(errors)} estimates (target: median <= 20%, max <= 50%)", flush=True)
    print(f"machine: {machine()}")
    save_results("estimate", {"summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
