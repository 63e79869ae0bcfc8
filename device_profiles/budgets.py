"""The budgets a profile can set, declared once: the name reports use, the Budgets field that holds
the limit, whether the limit is a ceiling or a floor, and the unit. Judging reads the direction
here instead of guessing it from a name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetSpec:
    name: str  # as reports and JUnit name it
    field: str  # the dotted path of its limit in the profile's Budgets ("parity.cosine_min")
    ceiling: bool  # True: the measured value must stay at or below the limit; False: at or above
    unit: str = ""


BUDGETS: dict[str, BudgetSpec] = {spec.name: spec for spec in (
    BudgetSpec("latency_p95_ms", "latency_p95_ms", ceiling=True, unit=" ms"),
    BudgetSpec("peak_memory_mb", "peak_memory_mb", ceiling=True, unit=" MB"),
    BudgetSpec("model_size_mb", "model_size_mb", ceiling=True, unit=" MB"),
    BudgetSpec("provider_coverage_min", "provider_coverage_min", ceiling=False),
    BudgetSpec("accuracy_drop_max", "accuracy_drop_max", ceiling=True),
    BudgetSpec("parity.top1_agreement_min", "parity.top1_agreement_min", ceiling=False),
    BudgetSpec("parity.cosine_min", "parity.cosine_min", ceiling=False),
    BudgetSpec("parity.sqnr_db_min", "parity.sqnr_db_min", ceiling=False, unit=" dB"),
    BudgetSpec("parity.max_abs_diff_max", "parity.max_abs_diff_max", ceiling=True),
)}
