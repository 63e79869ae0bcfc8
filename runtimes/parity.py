"""Output parity between a reference and a candidate model, accumulated over batches.

Metrics follow what quantization tools report: per-sample cosine, SQNR in dB, max/mean absolute
difference, top-1 agreement for classifier-like outputs, and task accuracy when labels are given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _OutputParity:
    """Parity of one output, accumulated over batches."""

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
    # One value per sample (a probability, a score): a row's cosine is always +-1, so these
    # values are compared across samples instead.
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
        if not self.float_output:
            return  # ids, masks, counts: exact match, not cosine
        rows = ref64.shape[0] if ref64.ndim else 1
        ref_rows, cand_rows = ref64.reshape(rows, -1), cand64.reshape(rows, -1)
        if ref_rows.shape[1] == 1:
            self.scalar_ref.extend(ref_rows[:, 0].tolist())
            self.scalar_cand.extend(cand_rows[:, 0].tolist())
            return
        norms = np.linalg.norm(ref_rows, axis=1) * np.linalg.norm(cand_rows, axis=1)
        dots = np.sum(ref_rows * cand_rows, axis=1)
        both_zero = norms == 0
        self.cosines.extend(np.where(both_zero, 1.0, dots / np.where(both_zero, 1.0, norms)).tolist())
        if _is_classifier(np.asarray(ref)):  # judged on the output's own dtype, before the cast
            self.top1_agree += int(np.sum(ref64.argmax(-1) == cand64.argmax(-1)))
            self.top1_total += ref64.shape[0]

    def sqnr_db(self) -> float:
        if not math.isfinite(self.noise_energy):
            return math.nan
        return math.inf if self.noise_energy == 0 else 10 * math.log10(max(self.signal_energy, 1e-30) / self.noise_energy)

    def result(self) -> dict[str, Any]:
        sqnr = self.sqnr_db()
        if self.scalar_ref:
            correlation = centred_cosine(np.array(self.scalar_ref), np.array(self.scalar_cand))
            self.cosines = [] if correlation is None else [correlation]
        out: dict[str, Any] = {
            "cosine_mean": _round(float(np.mean(self.cosines))) if self.cosines else None,
            "cosine_min": _round(float(np.min(self.cosines))) if self.cosines else None,
            "sqnr_db": None if math.isinf(sqnr) or not self.float_output else round(sqnr, 3),
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
    """Parity per output, and the worst of them: a model's second output (a box regression, a
    next state) can break while its first stays perfect. ``names`` label the per-output results."""

    names: list[str] | None = None
    samples: int = 0
    per_output: list[_OutputParity] = field(default_factory=list)
    labelled: int = 0
    reference_correct: int = 0
    candidate_correct: int = 0

    def update(self, reference: list[np.ndarray], candidate: list[np.ndarray], labels: np.ndarray | None = None) -> None:
        if len(reference) != len(candidate):
            raise ValueError(f"reference has {len(reference)} outputs, candidate {len(candidate)}")
        while len(self.per_output) < len(reference):
            self.per_output.append(_OutputParity())
        for output, ref, cand in zip(self.per_output, reference, candidate):
            output.update(ref, cand)
        first = np.asarray(reference[0])
        self.samples += first.shape[0] if first.ndim else 1
        head = next((i for i, ref in enumerate(reference) if _is_classifier(np.asarray(ref))), None)
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

        def worst(key: str, pick=min):
            values = [r[key] for r in results if r.get(key) is not None]
            return pick(values, key=lambda v: (not math.isnan(v), v) if pick is min else (math.isnan(v), v)) if values else None

        sqnrs = [o.sqnr_db() for o in self.per_output if o.float_output]
        sqnr = min(sqnrs, key=lambda v: (not math.isnan(v), v)) if sqnrs else math.inf
        elements = sum(o.elements for o in self.per_output)
        out: dict[str, Any] = {
            "samples": self.samples,
            "cosine_mean": worst("cosine_mean"),
            "cosine_min": worst("cosine_min"),
            "sqnr_db": None if math.isinf(sqnr) else round(sqnr, 3),
            "max_abs_diff": worst("max_abs_diff", max),
            "mean_abs_diff": _round(sum(o.abs_diff_sum for o in self.per_output) / elements) if elements else None,
            "top1_agreement": worst("top1_agreement"),
            "non_finite_reference": sum(o.non_finite_reference for o in self.per_output),
            "non_finite_candidate": sum(o.non_finite_candidate for o in self.per_output),
        }
        if any(not o.float_output for o in self.per_output):
            out["exact_match"] = worst("exact_match")
        if self.labelled:
            out["reference_accuracy"] = _round(self.reference_correct / self.labelled)
            out["candidate_accuracy"] = _round(self.candidate_correct / self.labelled)
            out["accuracy_drop"] = _round((self.reference_correct - self.candidate_correct) / self.labelled)
        if len(results) > 1:
            names = self.names if self.names and len(self.names) == len(results) else [f"output_{i}" for i in range(len(results))]
            out["outputs"] = dict(zip(names, results))
        return out


SCALAR_COSINE_BASIS = "one value per sample: cosine of the centred values across samples (Pearson correlation)"


def centred_cosine(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Cosine of the centred values (Pearson correlation): whether the candidate follows the
    reference's variation across samples. None with fewer than two samples or a constant reference;
    -1 when the candidate holds NaN or Inf."""
    if reference.size < 2:
        return None
    if not np.all(np.isfinite(candidate)):
        return -1.0
    ref, cand = reference - reference.mean(), candidate - candidate.mean()
    ref_norm, cand_norm = float(np.linalg.norm(ref)), float(np.linalg.norm(cand))
    if ref_norm == 0:
        return None if cand_norm == 0 else 0.0
    return float(np.dot(ref, cand) / (ref_norm * cand_norm)) if cand_norm else 0.0


def _is_classifier(output: np.ndarray) -> bool:
    """Class scores: a float batch of score vectors (rank 2, more than one class). Feature maps,
    hidden states and integer outputs get cosine and SQNR, not a "top-1" over the wrong axis."""
    return output.ndim == 2 and output.shape[-1] > 1 and output.dtype.kind == "f"


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value
