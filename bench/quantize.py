"""fp32 vs int8 on ResNet-18-style and MobileNetV2-style models, and edgeport's int8 defaults vs
plain `quantize_static` defaults, measured side by side in one run.

Prints a table and writes bench/results/quantize.json. Models have random weights and the data
is synthetic: parity here measures quantization fidelity, not task accuracy (the digits example
measures accuracy).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import interleaved_latency, machine, save_results, synthetic_images  # noqa: E402


class _Reader:
    def __init__(self, images: np.ndarray, name: str, batch: int = 8):
        self.batches = iter([{name: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self.batches, None)


def _parity(fp32: Path, int8: Path, images: np.ndarray) -> dict[str, float]:
    from edgeport.runtimes.parity import ParityAccumulator
    from bench.common import session

    ref, cand = session(fp32, 2), session(int8, 2)
    acc = ParityAccumulator()
    for i in range(0, len(images), 8):
        feed = {"image": images[i : i + 8]}
        acc.update(ref.run(None, feed), cand.run(None, feed))
    result = acc.result()
    return {"top1_agreement": result["top1_agreement"], "cosine": result["cosine_mean"], "sqnr_db": result["sqnr_db"]}


def bench_model(name: str, target: str, work: Path, runs: int) -> dict:
    import edgeport
    from onnxruntime.quantization import quantize_static

    calib = synthetic_images(64, 224, seed=1)
    evaluation = synthetic_images(64, 224, seed=2)
    np.savez(work / "calib.npz", image=calib)
    np.savez(work / "eval.npz", image=evaluation)
    result = edgeport.export(target, inputs=["image:batchx3x224x224"], calib=work / "calib.npz", eval=work / "eval.npz", out_dir=work / name, cache_dir=work / "cache")
    fp32, int8 = work / name / "model.fp32.onnx", work / name / "model.onnx"
    plain = work / f"{name}.plain-int8.onnx"
    quantize_static(str(fp32), str(plain), _Reader(calib, "image"))  # ORT's defaults, no preprocessing
    feed = {"image": evaluation[:1]}
    row = {
        "model": name,
        "fp32_mb": fp32.stat().st_size / 1e6,
        "int8_mb": int8.stat().st_size / 1e6,
        "plain_int8_mb": plain.stat().st_size / 1e6,
        "decisions": result.report["summary"]["decisions"],
        "parity_edgeport": _parity(fp32, int8, evaluation),
        "parity_plain": _parity(fp32, plain, evaluation),
    }
    for threads in (1, 2):
        ms = interleaved_latency({"fp32": fp32, "int8": int8, "plain": plain}, feed, threads, runs=runs)
        row[f"latency_ms_{threads}t"] = ms
    return row


def main() -> None:
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer advises through the root logger
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, target in (("resnet18", "examples.models:resnet18"), ("mobilenet_v2", "examples.models:mobilenet_v2")):
            rows.append(bench_model(name, target, Path(tmp), runs))
    print(f"machine: {machine()}; median of {runs} interleaved runs after 10 warm-up, batch 1, 224x224")
    header = f"{'model':<13} {'int8/fp32 size':>14} {'int8/fp32 1t':>12} {'int8/fp32 2t':>12} {'plain/fp32 1t':>13} {'top1 edgeport':>13} {'top1 plain':>10} {'cos edgeport':>12} {'cos plain':>9}"
    print(header)
    for r in rows:
        l1, l2 = r["latency_ms_1t"], r["latency_ms_2t"]
        print(
            f"{r['model']:<13} {r['int8_mb'] / r['fp32_mb']:>14.3f} {l1['int8'] / l1['fp32']:>12.3f} {l2['int8'] / l2['fp32']:>12.3f} "
            f"{l1['plain'] / l1['fp32']:>13.3f} {r['parity_edgeport']['top1_agreement']:>13.3f} {r['parity_plain']['top1_agreement']:>10.3f} "
            f"{r['parity_edgeport']['cosine']:>12.4f} {r['parity_plain']['cosine']:>9.4f}"
        )
        print(f"{'':<13} fp32 {l1['fp32']:.1f} ms / int8 {l1['int8']:.1f} ms at 1 thread; {r['decisions']['reduce_range']}")
    save_results("quantize", {"runs": runs, "rows": rows})


if __name__ == "__main__":
    main()
