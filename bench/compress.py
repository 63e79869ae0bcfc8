"""Compression that pays off on the device: MACs, parameters, ONNX Runtime latency (1 thread,
interleaved) and accuracy of teacher, distilled student, pruned-and-recovered, and pruned+int8 on
the digits example; distillation vs hard-label training of the same student over five seeds; and
ResNet-18 dense vs 50% channel-pruned latency; and weight sharing (16 clusters) against fp32 and
int8 on digits and ResNet-18: size, zipped size, latency, accuracy. Writes bench/results/compress.json.

    python bench/compress.py [share]     (share: the weight-sharing rows alone, merged into the json)"""

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


def sharing(work: Path) -> dict:
    """fp32, int8 (one static pass) and shared weights (16 clusters, packed fp32) of the same model."""
    import numpy as np

    import edgeport
    from edgeport.passes.weight_sharing import WeightShareConfig, zipped_file_size
    from bench.common import session, synthetic_images
    from examples.models import resnet18

    rows = {}
    images = synthetic_images(16, 224, seed=3)
    np.savez(work / "resnet-calib.npz", image=synthetic_images(32, 224, seed=4))
    with np.load(DIGITS / "test.npz") as test:
        digits_images, labels = test["image"], test["labels"]
    cases = {"digits": ("examples.digits.model:trained_digits_cnn", "image:batchx1x8x8", DIGITS / "calib.npz", digits_images),
             "resnet18": (resnet18, "image:batchx3x224x224", work / "resnet-calib.npz", images)}
    for name, (model, spec, calib, data) in cases.items():
        made = {}
        for variant, options in {"fp32": dict(precision="fp32"), "int8": dict(calib=calib, search=False),
                                 "shared16": dict(precision="fp32", torch_steps=[WeightShareConfig(clusters=16)]),
                                 "shared256": dict(precision="fp32", torch_steps=[WeightShareConfig(clusters=256)])}.items():
            out = work / f"share-{name}-{variant}"
            edgeport.export(model() if callable(model) else model, inputs=[spec], out_dir=out, cache_dir=work / "cache", **options)
            made[variant] = out / "model.onnx"
        feed = {"image": data[:1]}
        latency = interleaved_latency(made, feed, threads=1, runs=300 if name == "digits" else 40)
        outputs = {v: np.concatenate([session(p, 1).run(None, {"image": data[i:i + 8]})[0] for i in range(0, len(data), 8)]) for v, p in made.items()}
        row = {}
        zipped = {variant: zipped_file_size(path) for variant, path in made.items()}  # once each: ResNet-18's takes seconds
        for variant, path in made.items():
            top1 = outputs[variant].argmax(1)
            a, b = outputs[variant].astype(np.float64), outputs["fp32"].astype(np.float64)
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            row[variant] = {"bytes": path.stat().st_size, "zipped_bytes": zipped[variant], "latency_ms": round(latency[variant], 4),
                            "size_ratio": round(path.stat().st_size / made["fp32"].stat().st_size, 4),
                            "zipped_ratio_to_fp32_zipped": round(zipped[variant] / zipped["fp32"], 4),
                            "latency_ratio": round(latency[variant] / latency["fp32"], 3), "min_cosine_to_fp32": round(float(cosine.min()), 4),
                            ("accuracy" if name == "digits" else "top1_agreement_with_fp32"):
                                round(float((top1 == (labels if name == "digits" else outputs["fp32"].argmax(1))).mean()), 4)}
        rows[name] = row
    return rows


def _print_sharing(rows: dict) -> None:
    print(f"{'weight sharing':<16} {'variant':<9} {'bytes':>10} {'size/fp32':>9} {'zipped':>10} {'zip/fp32 zip':>12} {'lat/fp32':>8} "
          f"{'accuracy':>8} {'min cos':>7}")
    for name, row in rows.items():
        for variant, r in row.items():
            quality = r.get("accuracy", r.get("top1_agreement_with_fp32"))
            print(f"{name:<16} {variant:<9} {r['bytes']:>10,} {r['size_ratio']:>9.3f} {r['zipped_bytes']:>10,} {r['zipped_ratio_to_fp32_zipped']:>12.3f} "
                  f"{r['latency_ratio']:>8.3f} {quality:>8.3f} {r['min_cosine_to_fp32']:>7.4f}")


def main() -> None:
    if sys.argv[1:] == ["share"]:
        with tempfile.TemporaryDirectory() as tmp:
            rows = sharing(Path(tmp))
        print(f"machine: {machine()}; ORT latency at 1 thread, batch 1, median of interleaved runs; accuracy on digits' 500 test "
              "images, ResNet-18's top-1 agreement with its fp32 model on 16 synthetic images")
        _print_sharing(rows)
        path = ROOT / "bench" / "results" / "compress.json"
        stored = json.loads(path.read_text()) if path.exists() else {"machine": machine()}
        stored["weight_sharing"] = {"machine": machine(), "rows": rows}
        path.write_text(json.dumps(stored, indent=2) + "\n")
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        d = digits(work)
        r = resnet(work)
        shared = sharing(work)
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
    _print_sharing(shared)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "compress.json").write_text(json.dumps({"machine": machine(), "digits": d, "resnet18": r,
                                                   "weight_sharing": {"machine": machine(), "rows": shared}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
