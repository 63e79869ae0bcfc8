"""The compression example on real data: the digits teacher distilled into a student at 6% of its
MACs, and pruned 50% by channels then recovered by distillation; both exported and quantized.

Run from the repository root: ``python -m examples.digits.compress [OUTDIR]`` (default out/compress).
"""

from __future__ import annotations

import sys
from pathlib import Path

import edgeport
from edgeport.passes import DistillConfig
from edgeport.progress import TerminalProgress

HERE = Path(__file__).parent


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out/compress")
    progress = TerminalProgress()
    common = dict(inputs=["image:batchx1x8x8"], eval_data=HERE / "test.npz", progress=progress)
    student = edgeport.distill(teacher="examples.digits.model:trained_digits_cnn", student="examples.digits.model:digits_student",
                               data=HERE / "train.npz", out_dir=out / "student", **common)
    pruned = edgeport.prune("examples.digits.model:trained_digits_cnn", method="channels", ratio=0.5, data=HERE / "train.npz",
                            recover=DistillConfig(epochs=15), out_dir=out / "pruned", **common)
    for name, result in (("student", student), ("pruned", pruned)):
        exported = edgeport.export(result.out_dir / "model.pt2", calib=HERE / "calib.npz", eval=HERE / "test.npz",
                                   out_dir=out / f"{name}-int8", progress=progress)
        c = result.report["comparison"]
        parity = exported.report["summary"]["parity_vs_fp32"]
        print(f"{name}: MACs {c['result']['macs'] / c['reference']['macs']:.1%} of the teacher's; accuracy teacher {c['reference']['accuracy']:.3f}, "
              f"{name} {c['result']['accuracy']:.3f}, {name} int8 {parity['candidate_accuracy']:.3f}; wrote {out / f'{name}-int8' / 'model.onnx'}")


if __name__ == "__main__":
    main()
