"""The budgets a profile sets, declared once, and what a budget is judged on.

A row names the budget as reports do, where its limit lives in the profile, the measured quantity
it is judged against, whether the limit is a ceiling or a floor, the unit, and its basis rule: the
kinds of reading it may be judged on, best first (latency on the target, else the estimate for
it; never a timing of some other machine). ``verdict.judge_budgets`` applies every row; adding a
budget is one row here plus its reading in ``runtimes/measure.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# What a reading stands on.
TARGET = "target"  # measured on the profile's device
HOST = "host"  # measured on a machine that is not the target (this host, a simulator, another SSH host)
ESTIMATE = "estimate"  # the roofline estimate for the target
STATIC = "static"  # read from the model file alone (its size, a static provider checker)


@dataclass(frozen=True)
class Reading:
    """One measured value a budget can be judged on, and what it stands on."""

    value: float | None
    kind: str  # TARGET, HOST, ESTIMATE or STATIC: what the basis rule picks by
    basis: str = ""  # said beside the verdict ("measured on this host (not the target)")
    missing: str = ""  # why there is no value
    detail: str = ""  # said after the verdict (the nodes a provider refused)


@dataclass(frozen=True)
class BudgetSpec:
    name: str  # as reports and JUnit name it
    field: str  # the dotted path of its limit in the Profile ("budgets.parity.cosine_min", "hardware.memory_mb")
    measures: str  # the Measurement field it is judged against
    ceiling: bool  # True: the measured value must stay at or below the limit; False: at or above
    judged_on: tuple[str, ...]  # the basis rule: reading kinds it may be judged on, best first
    unit: str = ""

    def limit(self, profile: Any) -> float | None:
        value = profile
        for part in self.field.split("."):
            value = getattr(value, part)
        return value


MEASURED = (TARGET, HOST)  # a session's figures: the target's, else another machine's as a stand-in
BUDGETS: dict[str, BudgetSpec] = {spec.name: spec for spec in (
    # a timing of another machine says nothing of the target: off target, the estimate judges
    BudgetSpec("latency_p95_ms", "budgets.latency_p95_ms", "latency_p95_ms", True, (TARGET, ESTIMATE), " ms"),
    BudgetSpec("peak_memory_mb", "budgets.peak_memory_mb", "peak_memory_mb", True, MEASURED, " MB"),
    # the device's own RAM and storage: a model that needs more cannot run there, whatever the budgets say
    BudgetSpec("device_memory_mb", "hardware.memory_mb", "peak_memory_mb", True, MEASURED, " MB"),
    BudgetSpec("model_size_mb", "budgets.model_size_mb", "model_size_mb", True, (STATIC,), " MB"),
    BudgetSpec("device_storage_mb", "hardware.storage_mb", "model_size_mb", True, (STATIC,), " MB"),
    BudgetSpec("provider_coverage_min", "budgets.provider_coverage_min", "provider_coverage", False, (*MEASURED, STATIC)),
    BudgetSpec("parity.top1_agreement_min", "budgets.parity.top1_agreement_min", "decision_agreement", False, MEASURED),
    BudgetSpec("parity.cosine_min", "budgets.parity.cosine_min", "cosine_min", False, MEASURED),
    BudgetSpec("parity.sqnr_db_min", "budgets.parity.sqnr_db_min", "sqnr_db", False, MEASURED, " dB"),
    BudgetSpec("parity.max_abs_diff_max", "budgets.parity.max_abs_diff_max", "max_abs_diff", True, MEASURED),
    BudgetSpec("accuracy_drop_max", "budgets.accuracy_drop_max", "accuracy_drop", True, MEASURED),
)}
