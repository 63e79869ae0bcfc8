"""`export --profile P --precision auto`: int8 only where the target's int8 kernels pay.

On a CPU without fast int8 dot products (x86 without VNNI, say) a QDQ model can run no faster
than fp32 while losing fidelity. Auto picks int8 where the target's int8 is measurably faster
(more than 5%); otherwise fp32, or dynamic int8 where only int8 weights bring the file within the
profile's size budget. The report says which and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeport.artifacts import OnnxArtifact
from edgeport.device_profiles.schema import Profile
from edgeport.passes.quant_defaults import int8_speedup
from edgeport.profile_defaults import quant_target
from edgeport.runtimes.graph_cost import graph_cost
from edgeport.specs import TensorSpec

PAYS_ABOVE = 1.05  # int8 must beat fp32 by more than run-to-run noise to be worth its fidelity loss


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    int8_speedup: float | None
    basis: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"asked": "auto", "chosen": self.precision, "int8_speedup": self.int8_speedup, "basis": self.basis, "reason": self.reason}


def target_int8_speedup(profile: Profile, fp32: OnnxArtifact, shapes: list[TensorSpec]) -> tuple[float | None, str]:
    """int8 / fp32 speed on the target for this model: the calibrated profile's measured speed-up per
    op class weighted by the model's MACs in each, else the rule from the profile's peaks or CPU."""
    measured = profile.measured
    if measured is not None and measured.int8_speedup:
        macs: dict[str, int] = {}
        for node in graph_cost(str(fp32.path), shapes).nodes:
            if node.macs and node.op_class in measured.int8_speedup:
                macs[node.op_class] = macs.get(node.op_class, 0) + node.macs * node.repeats
        total = sum(macs.values())
        if total:
            # time-weighted: int8 time = sum(share / speed-up), so a slow class counts as it should
            speed = 1 / sum(m / total / measured.int8_speedup[c] for c, m in macs.items())
            return round(speed, 3), f"measured on the target by edgeport profiles calibrate ({measured.source.split(';')[0]}), weighted by this model's MACs"
    choice = int8_speedup(quant_target(profile))
    return choice.value, choice.rule


def choose_precision(profile: Profile, fp32: OnnxArtifact, shapes: list[TensorSpec], has_calibration: bool) -> PrecisionChoice:
    speed, basis = target_int8_speedup(profile, fp32, shapes)
    budget = profile.budgets.model_size_mb
    fp32_mb = fp32.size_bytes / 2**20
    if speed is None or speed > PAYS_ABOVE:
        why = "int8's speed on the target is unknown, so int8 as asked by default" if speed is None else f"int8 runs {speed:.2f}x as fast as fp32 there"
        if has_calibration:
            return PrecisionChoice("int8", speed, basis, why)
        return PrecisionChoice("dynamic-int8", speed, basis, f"{why}; no calibration data, so weights-only (dynamic) int8")
    if budget is not None and fp32_mb > budget:
        return PrecisionChoice("dynamic-int8", speed, basis, f"int8 does not pay there ({speed:.2f}x of fp32's speed), but the fp32 file "
                               f"({fp32_mb:.1f} MB) misses the {budget:g} MB size budget: int8 weights, float compute")
    return PrecisionChoice("fp32", speed, basis, f"int8 does not pay there ({speed:.2f}x of fp32's speed): fp32 keeps full fidelity at "
                           "the same speed")
