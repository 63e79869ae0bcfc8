"""Compression that pays off on the device: MACs, parameters, ONNX Runtime latency (1 thread,
interleaved) and accuracy of teacher, distilled student, pruned-and-recovered, and pruned+int8 on
the digits example; distillation vs hard-label training of the same student over five seeds; and
ResNet-18 dense vs 50% channel-pruned latency. Writes bench/results/compress.json."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import interleaved_latency, machine  # noqa: E402

DIGITS = ROOT / "examples" / "digits"


def _onnx(module, spec: str, out: Path) -> Path:
    from edgeport.artifacts import TorchArtifact
    from edgeport.passes import OnnxExportConfig, PassContext, export_onnx
    from edgeport.specs import parse_input_spec

    out.mkdir(parents=True, exist_ok=True)
    return export_onnx(TorchArtifact(module.eval(), (parse_input_spec(spec),), "bench"), OnnxExportConfig(), ctx=PassContext(work_dir=out)).path


def digits(work: Path) -> dict:
    import numpy as np

    import edgeport
    from edgeport.passes import DistillConfig
    from edgeport.passes.torch_stats import count_macs, count_params
    from edgeport.specs import parse_input_spec
    from examples.digits.model import trained_digits_cnn

    common = dict(inputs=["image:batchx1x8x8"], eval_data=DIGITS / "test.npz", cache_dir=work / "cache")
    seeds = []
    for seed in range(5):
        kd = edgeport.distill(teacher="examples.digits.model:trained_digits_cnn", student="examples.digits.model:digits_student",
                              data=DIGITS / "train.npz", config=DistillConfig(seed=seed), out_dir=work / f"kd{seed}", **common)
        hard = edgeport.distill(teacher="examples.digits.model:trained_digits_cnn", student="examples.digits.model:digits_student",
                                data=DIGITS / "train.npz", config=DistillConfig(seed=seed, alpha=0.0), out_dir=work / f"hard{seed}", **common)
        seeds.append({"seed": seed, "distilled": kd.report["comparison"]["result"]["accuracy"], "hard_labels": hard.report["comparison"]["result"]["accuracy"]})
        if seed == 0:
            student = kd.model
    pruned = edgeport.prune("examples.digits.model:trained_digits_cnn", method="channels", ratio=0.5, data=DIGITS / "train.npz",
                            recover=DistillConfig(epochs=15), out_dir=work / "pruned", **common)
    edgeport.export(work / "pruned" / "model.pt2", calib=DIGITS / "calib.npz", out_dir=work / "pruned-int8", cache_dir=work / "cache")

    teacher = trained_digits_cnn()
    spec = "image:batchx1x8x8"
    paths = {"teacher": _onnx(teacher, spec, work / "o-teacher"), "student": _onnx(student, spec, work / "o-student"),
             "pruned": _onnx(pruned.model, spec, work / "o-pruned"), "pruned+int8": work / "pruned-int8" / "model.onnx"}
    with np.load(DIGITS / "test.npz") as test:
        images, labels = test["image"], test["labels"]
    latency = interleaved_latency(paths, {"image": images[:1]}, threads=1, runs=300)
    from bench.common import session

    rows = {}
    specs = (parse_input_spec(spec),)
    for name, module in (("teacher", teacher), ("student", student), ("pruned", pruned.model), ("pruned+int8", None)):
        acc = float((session(paths[name], 1).run(None, {"image": images})[0].argmax(1) == labels).mean())
        ref = module if module is not None else pruned.model
        rows[name] = {"macs": count_macs(ref, specs), "params": count_params(ref), "latency_ms": latency[name], "accuracy": acc}
    return {"models": rows, "distill_vs_hard": seeds}


def resnet(work: Path) -> dict:
    import numpy as np

    import edgeport
    from examples.models import resnet18

    dense = resnet18()
    pruned = edgeport.prune("examples.models:resnet18", method="channels", ratio=0.5, inputs=["image:batchx3x224x224"], out_dir=work / "rp")
    paths = {"dense": _onnx(dense, "image:batchx3x224x224", work / "r-dense"), "pruned50": _onnx(pruned.model, "image:batchx3x224x224", work / "r-pruned")}
    feed = {"image": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    latency = interleaved_latency(paths, feed, threads=1, runs=40)
    return {"latency_ms": latency, "ratio": latency["pruned50"] / latency["dense"], "macs_ratio": pruned.report["ratios"]["macs"]}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        d = digits(work)
        r = resnet(work)
    print(f"machine: {machine()}; ORT latency at 1 thread, batch 1, median of interleaved runs")
    teacher = d["models"]["teacher"]
    print(f"{'digits':<12} {'MACs':>10} {'params':>8} {'MACs/T':>7} {'latency ms':>10} {'lat/T':>6} {'accuracy':>8}")
    for name, row in d["models"].items():
        print(f"{name:<12} {row['macs']:>10,} {row['params']:>8,} {row['macs'] / teacher['macs']:>7.3f} {row['latency_ms']:>10.4f} "
              f"{row['latency_ms'] / teacher['latency_ms']:>6.3f} {row['accuracy']:>8.3f}")
    runs = d["distill_vs_hard"]
    print("student accuracy, distilled vs hard labels only:", ", ".join(f"seed {s['seed']}: {s['distilled']:.3f} vs {s['hard_labels']:.3f}" for s in runs))
    print(f"  mean {sum(s['distilled'] for s in runs) / len(runs):.4f} vs {sum(s['hard_labels'] for s in runs) / len(runs):.4f}; "
          f"distillation better on {sum(s['distilled'] > s['hard_labels'] for s in runs)} of {len(runs)} seeds, worse on {sum(s['distilled'] < s['hard_labels'] for s in runs)}")
    print(f"resnet18 224x224: dense {r['latency_ms']['dense']:.1f} ms, 50% channels {r['latency_ms']['pruned50']:.1f} ms, "
          f"latency ratio {r['ratio']:.3f}, MACs ratio {r['macs_ratio']:.3f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "compress.json").write_text(json.dumps({"machine": machine(), "digits": d, "resnet18": r}, indent=2) + "\n")


if __name__ == "__main__":
    main()
