"""Output parity between a reference and a candidate model, accumulated over batches.

Metrics follow what quantization tools report: per-sample cosine, SQNR in dB, max/mean absolute
difference, top-1 agreement for class-score outputs, and task accuracy when labels are given.
Every output is judged on its own, and the top-level figures are the worst output's: a model's
second output (boxes, a next state) can break while its first stays perfect.

The metric definitions here are the only ones: the int8 search scores with them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

SCALAR_COSINE_BASIS = ("one value per sample: 1/sqrt(1 + MSE / variance of the reference across samples), "
                       "the cosine an error of that size would give; offset and gain errors count")
CLASSIFIER_HEADS = ("Gemm", "MatMul", "Softmax", "LogSoftmax")


def row_cosines(ref: np.ndarray, cand: np.ndarray) -> list[float]:
    """Cosine per row of two (rows, features) arrays. A candidate row holding NaN or Inf scores -1
    (a failure, never skipped); two all-zero rows agree (1); one zero row against a non-zero one
    scores 0 (a collapsed output is not a match)."""
    bad = ~np.all(np.isfinite(cand), axis=1)
    cand = np.where(np.isfinite(cand), cand, 0.0)
    ref_norm, cand_norm = np.linalg.norm(ref, axis=1), np.linalg.norm(cand, axis=1)
    norms = ref_norm * cand_norm
    cos = np.sum(ref * cand, axis=1) / np.where(norms == 0, 1.0, norms)
    cos = np.where(norms == 0, np.where((ref_norm == 0) & (cand_norm == 0), 1.0, 0.0), cos)
    return np.where(bad, -1.0, cos).tolist()


def spread_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """For outputs with one value per sample (a VAD probability, a quality score), whose row cosine
    is 1 whatever int8 does: 1/sqrt(1 + MSE/variance of the reference across samples), the cosine
    a centred reference would keep under uncorrelated error of that size. Offset and gain errors
    add to the MSE, so they count; with one sample (no variance) the reference's own energy is the
    scale. NaN or Inf in the candidate scores -1."""
    reference, candidate = reference.astype(np.float64).ravel(), candidate.astype(np.float64).ravel()
    if not np.all(np.isfinite(candidate)):
        return -1.0
    mse = float(np.mean((reference - candidate) ** 2)) if reference.size else 0.0
    scale = float(np.var(reference)) if reference.size > 1 else 0.0
    if scale == 0.0:
        scale = float(np.mean(reference**2)) if reference.size else 0.0
    if scale == 0.0:
        return 1.0 if mse == 0.0 else 0.0
    return 1.0 / math.sqrt(1.0 + mse / scale)


def is_class_scores(output: np.ndarray) -> bool:
    """Shaped like class scores: rank 2, float, more than one class."""
    return output.ndim == 2 and output.shape[-1] > 1 and output.dtype.kind == "f"


def class_score_outputs(model: onnx.ModelProto) -> frozenset[int]:
    """Indices of the outputs a classifier head makes (Gemm, MatMul [+ bias Add], Softmax): the
    ones top-1 agreement is judged on. An embedding normalized at the end, a sigmoid's independent
    probabilities, a recurrent hidden state or a box regression has the same rank-2 shape but no
    top-1 to agree on."""
    producer = {o: n for n in model.graph.node for o in n.output}
    heads = set()
    for index, output in enumerate(model.graph.output):
        node = producer.get(output.name)
        if node is not None and node.op_type == "Add":  # MatMul + bias
            node = next((producer[i] for i in node.input if i in producer and producer[i].op_type == "MatMul"), node)
        if node is not None and node.op_type in CLASSIFIER_HEADS:
            heads.add(index)
    return frozenset(heads)


def model_class_outputs(path: str) -> frozenset[int]:
    """``class_score_outputs`` of an ONNX file (weights not loaded); none for an .ort file."""
    if str(path).endswith(".ort"):
        return frozenset()
    return class_score_outputs(onnx.load(str(path), load_external_data=False))


@dataclass
class _OutputParity:
    """Parity of one output, accumulated over batches."""

    class_scores: bool = False  # top-1 agreement is judged on this output
    signal_energy: float = 0.0
    noise_energy: float = 0.0
    max_abs_diff: float = 0.0
    abs_diff_sum: float = 0.0
    elements: int = 0
    equal_elements: int = 0
    float_output: bool = True
    cosines: list[float] = field(default_factory=list)
    top1_agree: int = 0
    top1_total: int = 0
    non_finite_reference: int = 0
    non_finite_candidate: int = 0
    # one value per sample: compared across samples (spread_cosine)
    scalar_ref: list[float] = field(default_factory=list)
    scalar_cand: list[float] = field(default_factory=list)

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        self.float_output = np.asarray(ref).dtype.kind == "f"
        ref64, cand64 = np.asarray(ref, dtype=np.float64), np.asarray(cand, dtype=np.float64)
        if ref64.shape != cand64.shape:
            raise ValueError(f"output shapes differ: {ref64.shape} vs {cand64.shape}")
        self.non_finite_reference += int(not np.all(np.isfinite(ref64)))
        self.non_finite_candidate += int(not np.all(np.isfinite(cand64)))
        diff = np.abs(ref64 - cand64)
        self.signal_energy += float(np.sum(ref64**2))
        self.noise_energy += float(np.sum(diff**2))
        largest = float(diff.max(initial=0.0))
        # max() would drop a NaN (every comparison with it is false): keep it, so nothing reads as a match
        self.max_abs_diff = math.nan if math.isnan(largest) or math.isnan(self.max_abs_diff) else max(self.max_abs_diff, largest)
        self.abs_diff_sum += float(diff.sum())
        self.elements += diff.size
        self.equal_elements += int(np.sum(ref64 == cand64))
        if not self.float_output or ref64.size == 0:
            return  # ids and masks get exact match; an empty output (no detections) has nothing to compare
        rows = ref64.shape[0] if ref64.ndim else 1
        ref_rows, cand_rows = ref64.reshape(rows, -1), cand64.reshape(rows, -1)
        if ref_rows.shape[1] == 1:
            self.scalar_ref.extend(ref_rows[:, 0].tolist())
            self.scalar_cand.extend(cand_rows[:, 0].tolist())
            return
        self.cosines.extend(row_cosines(ref_rows, cand_rows))
        if self.class_scores and is_class_scores(np.asarray(ref)):
            self.top1_agree += int(np.sum(ref64.argmax(-1) == np.nan_to_num(cand64, nan=-np.inf).argmax(-1)))
            self.top1_total += ref64.shape[0]

    def sqnr_db(self) -> float | None:
        """None where it says nothing: no float output, or a reference of zero energy."""
        if not self.float_output or self.signal_energy == 0.0:
            return None
        if not math.isfinite(self.noise_energy):
            return math.nan
        return math.inf if self.noise_energy == 0 else 10 * math.log10(self.signal_energy / self.noise_energy)

    def all_cosines(self) -> list[float]:
        if self.scalar_ref:
            return [spread_cosine(np.array(self.scalar_ref), np.array(self.scalar_cand))]
        return self.cosines

    def result(self) -> dict[str, Any]:
        sqnr = self.sqnr_db()
        cosines = self.all_cosines()
        out: dict[str, Any] = {
            "cosine_mean": _round(float(np.mean(cosines))) if cosines else None,
            "cosine_min": _round(float(np.min(cosines))) if cosines else None,
            "sqnr_db": None if sqnr is None or math.isinf(sqnr) else round(sqnr, 3),
            "max_abs_diff": _round(self.max_abs_diff),
            "mean_abs_diff": _round(self.abs_diff_sum / self.elements) if self.elements else None,
            "top1_agreement": _round(self.top1_agree / self.top1_total) if self.top1_total else None,
        }
        if not self.float_output:
            out["exact_match"] = _round(self.equal_elements / self.elements) if self.elements else None
        if self.scalar_ref:
            out["cosine_basis"] = SCALAR_COSINE_BASIS
        return out


@dataclass
class ParityAccumulator:
    """Parity per output, and the worst of them. ``names`` label the per-output results;
    ``class_outputs`` are the outputs top-1 agreement and accuracy are judged on (None: the first
    output, where it is shaped like class scores)."""

    names: list[str] | None = None
    class_outputs: frozenset[int] | None = None
    samples: int = 0
    per_output: list[_OutputParity] = field(default_factory=list)
    labelled: int = 0
    reference_correct: int = 0
    candidate_correct: int = 0

    def update(self, reference: list[np.ndarray], candidate: list[np.ndarray], labels: np.ndarray | None = None) -> None:
        if len(reference) != len(candidate):
            raise ValueError(f"reference has {len(reference)} outputs, candidate {len(candidate)}")
        heads = self.class_outputs if self.class_outputs is not None else frozenset({0})
        while len(self.per_output) < len(reference):
            self.per_output.append(_OutputParity(class_scores=len(self.per_output) in heads))
        for output, ref, cand in zip(self.per_output, reference, candidate):
            output.update(ref, cand)
        first = np.asarray(reference[0])
        self.samples += first.shape[0] if first.ndim else 1
        head = next((i for i in sorted(heads) if i < len(reference) and is_class_scores(np.asarray(reference[i]))), None)
        if head is not None and labels is not None:  # accuracy on the first class-score output
            ref_top = np.asarray(reference[head], np.float64).argmax(-1)
            cand_top = np.asarray(candidate[head], np.float64).argmax(-1)
            labels = np.asarray(labels).reshape(ref_top.shape) if np.asarray(labels).size == ref_top.size else None
            if labels is not None:
                self.labelled += labels.size
                self.reference_correct += int(np.sum(ref_top == labels))
                self.candidate_correct += int(np.sum(cand_top == labels))

    def result(self) -> dict[str, Any]:
        """The worst output's figure for each metric (what budgets judge), then each output's own."""
        results = [o.result() for o in self.per_output]

        def worst(key: str, largest: bool = False) -> float | None:
            values = [r[key] for r in results if r.get(key) is not None]
            if not values:
                return None
            if any(math.isnan(v) for v in values):
                return math.nan  # NaN is never a match, so it is the worst
            return max(values) if largest else min(values)

        sqnrs = [s for s in (o.sqnr_db() for o in self.per_output) if s is not None]
        sqnr = (math.nan if any(math.isnan(s) for s in sqnrs) else min(sqnrs)) if sqnrs else None
        elements = sum(o.elements for o in self.per_output)
        out: dict[str, Any] = {
            "samples": self.samples,
            "cosine_mean": worst("cosine_mean"),
            "cosine_min": worst("cosine_min"),
            "sqnr_db": None if sqnr is None or math.isinf(sqnr) else round(sqnr, 3),
            "max_abs_diff": worst("max_abs_diff", largest=True),
            "mean_abs_diff": _round(sum(o.abs_diff_sum for o in self.per_output) / elements) if elements else None,
            "top1_agreement": worst("top1_agreement"),
            "non_finite_reference": sum(o.non_finite_reference for o in self.per_output),
            "non_finite_candidate": sum(o.non_finite_candidate for o in self.per_output),
        }
        if any(not o.float_output for o in self.per_output):
            out["exact_match"] = worst("exact_match")
        if any(o.scalar_ref for o in self.per_output):
            out["cosine_basis"] = "per sample; outputs with " + SCALAR_COSINE_BASIS
        if self.labelled:
            out["reference_accuracy"] = _round(self.reference_correct / self.labelled)
            out["candidate_accuracy"] = _round(self.candidate_correct / self.labelled)
            out["accuracy_drop"] = _round((self.reference_correct - self.candidate_correct) / self.labelled)
        if len(results) > 1:
            names = self.names if self.names and len(self.names) == len(results) else [f"output_{i}" for i in range(len(results))]
            out["outputs"] = dict(zip(names, results))
        return out


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value
