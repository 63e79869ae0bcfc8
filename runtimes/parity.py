"""Output parity between a reference and a candidate model, accumulated over batches.

Metrics follow what quantization tools report: per-sample cosine, SQNR in dB, max/mean absolute
difference, top-1 agreement for classifier-like outputs, and task accuracy when labels are given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ParityAccumulator:
    samples: int = 0
    signal_energy: float = 0.0
    noise_energy: float = 0.0
    max_abs_diff: float = 0.0
    abs_diff_sum: float = 0.0
    elements: int = 0
    cosines: list[float] = field(default_factory=list)
    top1_agree: int = 0
    top1_total: int = 0
    labelled: int = 0
    reference_correct: int = 0
    candidate_correct: int = 0
    non_finite_reference: int = 0  # outputs (per batch) holding NaN or Inf: parity fails on any
    non_finite_candidate: int = 0

    def update(self, reference: list[np.ndarray], candidate: list[np.ndarray], labels: np.ndarray | None = None) -> None:
        if len(reference) != len(candidate):
            raise ValueError(f"reference has {len(reference)} outputs, candidate {len(candidate)}")
        for ref, cand in zip(reference, candidate):
            ref64 = np.asarray(ref, dtype=np.float64)
            cand64 = np.asarray(cand, dtype=np.float64)
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
        is_class_scores = _is_classifier(np.asarray(reference[0]))  # judged on the output's own dtype, before the cast
        first_ref = np.asarray(reference[0], dtype=np.float64)
        first_cand = np.asarray(candidate[0], dtype=np.float64)
        rows = first_ref.shape[0] if first_ref.ndim else 1
        ref_rows = first_ref.reshape(rows, -1)
        cand_rows = first_cand.reshape(rows, -1)
        norms = np.linalg.norm(ref_rows, axis=1) * np.linalg.norm(cand_rows, axis=1)
        dots = np.sum(ref_rows * cand_rows, axis=1)
        both_zero = norms == 0
        cos = np.where(both_zero, 1.0, dots / np.where(both_zero, 1.0, norms))
        self.cosines.extend(cos.tolist())
        self.samples += rows
        if is_class_scores:
            ref_top = first_ref.argmax(-1)
            cand_top = first_cand.argmax(-1)
            self.top1_agree += int(np.sum(ref_top == cand_top))
            self.top1_total += ref_top.size
            if labels is not None:
                labels = np.asarray(labels).reshape(ref_top.shape) if np.asarray(labels).size == ref_top.size else None
            if labels is not None:
                self.labelled += labels.size
                self.reference_correct += int(np.sum(ref_top == labels))
                self.candidate_correct += int(np.sum(cand_top == labels))

    def result(self) -> dict[str, float | int | None]:
        sqnr = math.inf if self.noise_energy == 0 else 10 * math.log10(max(self.signal_energy, 1e-30) / self.noise_energy) \
            if math.isfinite(self.noise_energy) else math.nan
        out: dict[str, float | int | None] = {
            "samples": self.samples,
            "cosine_mean": _round(float(np.mean(self.cosines))) if self.cosines else None,
            "cosine_min": _round(float(np.min(self.cosines))) if self.cosines else None,
            "sqnr_db": None if math.isinf(sqnr) else round(sqnr, 3),
            "max_abs_diff": _round(self.max_abs_diff),
            "mean_abs_diff": _round(self.abs_diff_sum / self.elements) if self.elements else None,
            "top1_agreement": _round(self.top1_agree / self.top1_total) if self.top1_total else None,
            "non_finite_reference": self.non_finite_reference,
            "non_finite_candidate": self.non_finite_candidate,
        }
        if self.labelled:
            out["reference_accuracy"] = _round(self.reference_correct / self.labelled)
            out["candidate_accuracy"] = _round(self.candidate_correct / self.labelled)
            out["accuracy_drop"] = _round((self.reference_correct - self.candidate_correct) / self.labelled)
        return out


def _is_classifier(output: np.ndarray) -> bool:
    """Class scores: a float batch of score vectors (rank 2, more than one class). Feature maps,
    hidden states and integer outputs get cosine and SQNR, not a "top-1" over the wrong axis."""
    return output.ndim == 2 and output.shape[-1] > 1 and output.dtype.kind == "f"


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value
