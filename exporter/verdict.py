"""Budgets against measurements: each budget passes, fails or is skipped, with the value, the
limit, the margin and the basis (measured on the target, on this host, estimated, or static)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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

    @property
    def margin(self) -> float | None:
        """Headroom left (positive) or overrun (negative), in the budget's unit."""
        if self.measured is None or self.limit is None:
            return None
        return round(self.limit - self.measured if _is_max(self.name) else self.measured - self.limit, 6)

    def describe(self) -> str:
        if self.status == SKIPPED:
            return f"{self.name}: skipped ({self.detail})"
        if self.limit is None:  # a yes/no check: the detail says it all
            return f"{self.name}: {self.detail} [{self.basis}]"
        relation = ("<=" if _is_max(self.name) else ">=") if self.status == PASS else ("exceeds" if _is_max(self.name) else "is below")
        text = f"{self.name}: {_fmt(self.measured)}{self.unit} {relation} {_fmt(self.limit)}{self.unit} [{self.basis}]"
        if self.status == FAIL and self.margin is not None and self.limit:
            text += f", off by {_fmt(abs(self.margin))}{self.unit} ({abs(self.margin) / abs(self.limit):.0%} of the limit)"
        if self.detail:
            text += f"; {self.detail}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "margin": self.margin}


def _is_max(name: str) -> bool:
    """Budgets named *_max, latency, memory and size are ceilings; the rest are floors."""
    return name.endswith("_max") or name in ("latency_p95_ms", "peak_memory_mb", "model_size_mb")


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def judge(name: str, measured: float | None, limit: float | None, *, unit: str = "", basis: str = "", skip_reason: str = "") -> BudgetResult | None:
    """None when the profile sets no such budget; skipped when it does but nothing was measured."""
    if limit is None:
        return None
    if measured is None:
        return BudgetResult(name, SKIPPED, None, limit, unit, basis, skip_reason or "not measured")
    ok = measured <= limit if _is_max(name) else measured >= limit
    return BudgetResult(name, PASS if ok else FAIL, round(float(measured), 6), limit, unit, basis)


def overall(results: list[BudgetResult]) -> str:
    return FAIL if any(r.status == FAIL for r in results) else PASS
