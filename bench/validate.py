"""Repeatability of `edgeport validate`: the same model validated twice, side by side in one run.

Prints p50/p95 of both runs, their ratio and each run's coefficient of variation; the p50s should
agree within 5%. Writes bench/results/validate.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, synthetic_images  # noqa: E402


def main() -> None:
    import edgeport

    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.savez(work / "calib.npz", image=synthetic_images(32, 224, seed=1))
        edgeport.export("examples.models:resnet18", inputs=["image:batchx3x224x224"], calib=work / "calib.npz", out_dir=work / "resnet18", cache_dir=work / "cache")
        edgeport.export("examples.digits.model:trained_digits_cnn", inputs=["image:batchx1x8x8"], calib=ROOT / "examples/digits/calib.npz", out_dir=work / "digits", cache_dir=work / "cache")
        for name in ("resnet18", "digits"):
            model = work / name / "model.onnx"
            first, second = (edgeport.validate(model, profile="ci-x86-avx2", runs=runs).verdicts[0].details["measurement"] for _ in range(2))
            rows.append({"model": name, "runs": runs, "first": first["latency_ms"], "second": second["latency_ms"],
                         "p50_ratio": second["latency_ms"]["p50"] / first["latency_ms"]["p50"],
                         "peak_memory_mb": [first["memory"]["peak_above_baseline_mb"], second["memory"]["peak_above_baseline_mb"]]})
    print(f"machine: {machine()}; profile ci-x86-avx2 (2 threads); {runs} timed runs per validation")
    print(f"{'model':<10} {'p50 run1':>10} {'p50 run2':>10} {'ratio':>7} {'cv run1':>8} {'cv run2':>8} {'p95 run1':>10} {'p95 run2':>10} {'peak MB':>14}")
    for r in rows:
        a, b = r["first"], r["second"]
        print(f"{r['model']:<10} {a['p50']:>10.4f} {b['p50']:>10.4f} {r['p50_ratio']:>7.3f} {a['cv']:>8.3f} {b['cv']:>8.3f} {a['p95']:>10.4f} {b['p95']:>10.4f} {str(r['peak_memory_mb']):>14}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "validate.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
