"""Budgets against measurements: each budget passes, fails or is skipped, with the value, the
limit, the margin and the basis (measured on the target, on this host, estimated, or static)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgeport.device_profiles.budgets import BUDGETS

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


def judge(name: str, measured: float | None, limit: float | None, *, basis: str = "", skip_reason: str = "") -> BudgetResult | None:
    """A profile budget (by its name in device_profiles.budgets.BUDGETS, which gives its direction
    and unit) against a measurement. None when the profile sets no such budget; skipped when it
    does but nothing was measured."""
    spec = BUDGETS[name]
    if limit is None:
        return None
    if measured is None:
        return BudgetResult(name, SKIPPED, None, limit, spec.unit, basis, skip_reason or "not measured", spec.ceiling)
    ok = measured <= limit if spec.ceiling else measured >= limit
    return BudgetResult(name, PASS if ok else FAIL, round(float(measured), 6), limit, spec.unit, basis, ceiling=spec.ceiling)


def overall(results: list[BudgetResult]) -> str:
    return FAIL if any(r.status == FAIL for r in results) else PASS
