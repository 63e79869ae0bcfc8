"""Budgets against measurements: each budget passes, fails or is skipped, with the value, the
limit, the margin and the basis (measured on the target, on another host, estimated, or static).
The generic judge of every row of ``budgets.BUDGETS``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from edgeport.device_profiles.budgets import BUDGETS, BudgetSpec, Reading

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"


@dataclass
class BudgetResult:
    name: str
    status: str
    measured: float | None = None
    limit: float | None = None
    unit: str = ""
    basis: str = ""
    detail: str = ""
    ceiling: bool = True  # the measured value must stay at or below the limit (False: at or above); a yes/no check has no limit

    @property
    def margin(self) -> float | None:
        """Headroom left (positive) or overrun (negative), in the budget's unit."""
        if self.measured is None or self.limit is None:
            return None
        return round(self.limit - self.measured if self.ceiling else self.measured - self.limit, 6)

    def describe(self) -> str:
        if self.status == SKIPPED:
            return f"{self.name}: skipped ({self.detail})"
        if self.limit is None:  # a yes/no check: the detail says it all
            return f"{self.name}: {self.detail} [{self.basis}]"
        relation = ("<=" if self.ceiling else ">=") if self.status == PASS else ("exceeds" if self.ceiling else "is below")
        text = f"{self.name}: {_fmt(self.measured)}{self.unit} {relation} {_fmt(self.limit)}{self.unit} [{self.basis}]"
        if self.status == FAIL and self.margin is not None and self.limit:
            text += f", off by {_fmt(abs(self.margin))}{self.unit} ({abs(self.margin) / abs(self.limit):.0%} of the limit)"
        if self.detail:
            text += f"; {self.detail}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "margin": self.margin}


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def judge_budgets(profile: Any, measurement: Any) -> list[BudgetResult]:
    """Every budget ``profile`` sets (a row of BUDGETS each) against ``measurement``, whose field
    named by the row's ``measures`` holds its readings."""
    results = (judge(spec, spec.limit(profile), getattr(measurement, spec.measures)) for spec in BUDGETS.values())
    return [r for r in results if r is not None]


def judge(spec: BudgetSpec, limit: float | None, readings: Sequence[Reading]) -> BudgetResult | None:
    """One budget: None where the profile sets no limit; judged on the first reading its basis rule
    accepts; skipped, with the reason a reading gives, where none has a value."""
    if limit is None:
        return None
    usable = [r for kind in spec.judged_on for r in readings if r.kind == kind and r.value is not None]
    if not usable:
        why, basis = next(((r.missing, r.basis) for r in readings if r.missing), ("not measured", ""))
        return BudgetResult(spec.name, SKIPPED, None, limit, spec.unit, basis, why, spec.ceiling)
    reading = usable[0]
    ok = reading.value <= limit if spec.ceiling else reading.value >= limit
    return BudgetResult(spec.name, PASS if ok else FAIL, round(float(reading.value), 6), limit, spec.unit, reading.basis,
                        reading.detail, spec.ceiling)


def overall(results: list[BudgetResult]) -> str:
    return FAIL if any(r.status == FAIL for r in results) else PASS
