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
    """int8 / fp32 speed on the target for this model: from the calibrated profile's measured rates,
    the model's fp32 time over its int8 time, class by class; else the rule from the profile's peaks
    or CPU. (A depthwise-heavy net on a host whose int8 depthwise is slow must come out slow.)"""
    measured = profile.measured
    if measured is not None and measured.gops:
        macs = _macs_by_class(fp32, shapes)
        rates = {c: (measured.gops.get(f"{c}_fp32"), measured.gops.get(f"{c}_int8") or measured.gops.get(f"{c}_fp32")) for c in macs}
        if macs and all(fp and i8 for fp, i8 in rates.values()):
            fp32_time = sum(m / rates[c][0] for c, m in macs.items())
            int8_time = sum(m / rates[c][1] for c, m in macs.items())
            return round(fp32_time / int8_time, 3), (f"measured on the target by edgeport profiles calibrate ({measured.source.split(';')[0]}), "
                                                     "this model's MACs timed class by class at the measured fp32 and int8 rates")
    choice = int8_speedup(quant_target(profile))
    return choice.value, choice.rule


def _macs_by_class(fp32: OnnxArtifact, shapes: list[TensorSpec]) -> dict[str, int]:
    macs: dict[str, int] = {}
    for node in graph_cost(str(fp32.path), shapes).nodes:
        if node.macs:
            macs[node.op_class] = macs.get(node.op_class, 0) + node.macs * node.repeats
    return macs


def choose_precision(targets: list[tuple[Profile, list[TensorSpec]]], fp32: OnnxArtifact, has_calibration: bool) -> PrecisionChoice:
    """One precision for every profile given: int8 only where it pays on all of them."""
    speeds = [(profile, *target_int8_speedup(profile, fp32, shapes)) for profile, shapes in targets]
    known = [(p, s, b) for p, s, b in speeds if s is not None]
    slowest = min(known, key=lambda t: t[1]) if known else None
    speed = slowest[1] if slowest else None
    basis = "; ".join(f"{p.name}: {s if s is not None else 'unknown'} ({b})" for p, s, b in speeds)
    where = f" on {slowest[0].name}" if slowest and len(speeds) > 1 else ""
    macs = _macs_by_class(fp32, targets[0][1])
    # dynamic int8 quantizes activations at run time; ORT runs MatMulInteger well, ConvInteger slowly
    matmul_heavy = sum(m for c, m in macs.items() if c in ("matmul", "recurrent")) >= 0.5 * max(sum(macs.values()), 1)
    budget = min((p.budgets.model_size_mb for p, _ in targets if p.budgets.model_size_mb is not None), default=None)
    fp32_mb = fp32.size_bytes / 2**20
    if speed is None or speed > PAYS_ABOVE:
        why = "int8's speed on the target is unknown, so int8 as asked by default" if speed is None else f"int8 runs {speed:.2f}x as fast as fp32{where}"
        if has_calibration:
            return PrecisionChoice("int8", speed, basis, why)
        if matmul_heavy:
            return PrecisionChoice("dynamic-int8", speed, basis, f"{why}; no calibration data, so dynamic int8 (activations quantized at run time)")
        return PrecisionChoice("fp32", speed, basis, f"{why}, but static int8 needs --calib data and dynamic int8 runs convolutions slowly (ConvInteger)")
    if budget is not None and fp32_mb > budget and matmul_heavy:
        return PrecisionChoice("dynamic-int8", speed, basis, f"int8 does not pay{where} ({speed:.2f}x of fp32's speed), but the fp32 file "
                               f"({fp32_mb:.1f} MB) misses the {budget:g} MB size budget: dynamic int8 (int8 weights, activations quantized at run time)")
    missed = f"; the fp32 file ({fp32_mb:.1f} MB) misses the {budget:g} MB size budget, and dynamic int8 would run its convolutions slowly" \
        if budget is not None and fp32_mb > budget else ""
    return PrecisionChoice("fp32", speed, basis, f"int8 does not pay{where} ({speed:.2f}x of fp32's speed): fp32 keeps full fidelity at "
                           f"the same speed{missed}")
