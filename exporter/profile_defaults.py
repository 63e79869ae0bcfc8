"""What a device profile asks of the export side: int8 settings and the target CPU for defaults."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from edgeport.device_profiles import Profile
from edgeport.passes.context import QuantTarget
from edgeport.passes.fidelity import FidelityTarget
from edgeport.passes.quantize_static import StaticInt8Config
from edgeport.runtimes.ep_plugins import QNN
from edgeport.runtimes.hostcpu import VNNI_FLAGS


def quant_target(profile: Profile, others: Sequence[Profile] = ()) -> QuantTarget:
    """The int8 target ``profile`` describes; ``others``: the export's other profiles, which the same file serves."""
    return QuantTarget(
        arch=profile.hardware.arch,
        has_vnni=any(f in profile.hardware.cpu_features for f in VNNI_FLAGS),
        source=f"profile {profile.name}",
        int8_speedup=profile.hardware.peak_gops_int8 / profile.hardware.peak_gops_fp32 if profile.hardware.peak_gops_fp32 else None,
        provider=profile.preferred_provider,
        other_providers=tuple(p.preferred_provider for p in others),
    )


def quant_config_for(profile: Profile, base: StaticInt8Config | None = None) -> StaticInt8Config:
    q = profile.runtime.quantization
    return replace(
        base or StaticInt8Config(),
        format=q.format,
        activation_type=q.activation_type,
        activation_symmetric=profile.preferred_provider == "TensorrtExecutionProvider",  # TensorRT takes no activation zero point
        weight_type=q.weight_type,
        per_channel=q.per_channel,
        reduce_range=q.reduce_range,
        weight_symmetric=q.weight_symmetric,
        rules="qnn" if profile.preferred_provider == QNN else "onnxruntime",
        target_options=tuple(sorted(profile.runtime.provider_options.items())) if profile.preferred_provider == QNN else (),
    )


def fixed_shapes_for(profiles: list[Profile]) -> Profile | None:
    """The profile whose target compiles for fixed input shapes (the first such), if any."""
    return next((p for p in profiles if p.runtime.fixed_shapes), None)


def qnn_context_profile(profiles: list[Profile]) -> Profile | None:
    """The profile that asks for a precompiled QNN context binary beside the model, if any."""
    return next((p for p in profiles if p.runtime.model_format == "qnn-context"), None)


def fidelity_target(profiles: list[Profile], overrides: dict[str, Any] | None = None) -> FidelityTarget:
    """The int8 fidelity target: the strictest parity and accuracy budgets of the profiles, with
    each criterion given as a flag in ``overrides`` taking precedence. Without profiles, flags
    replace the default target as a whole; with neither, the default (cosine >= 0.99 per sample,
    top-1 agreement >= 99% for class scores) holds."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not profiles:
        return FidelityTarget(**overrides, source="flags") if overrides else FidelityTarget.default()
    budgets = [p.budgets for p in profiles]

    def strictest(values: list[float | None], pick) -> float | None:
        given = [v for v in values if v is not None]
        return pick(given) if given else None

    criteria = {
        "min_cosine": strictest([b.parity.cosine_min for b in budgets], max),
        "min_top1_agreement": strictest([b.parity.top1_agreement_min for b in budgets], max),
        "max_accuracy_drop": strictest([b.accuracy_drop_max for b in budgets], min),
        "min_sqnr_db": strictest([b.parity.sqnr_db_min for b in budgets], max),
    }
    names = ", ".join(p.name for p in profiles)
    if not any(v is not None for v in criteria.values()) and not overrides:
        return FidelityTarget.default(source=f"default (profile {names} sets no parity budget)")
    source = f"profile {names}" + (f", flags {', '.join(sorted(overrides))}" if overrides else "")
    return FidelityTarget(**{**criteria, **overrides}, source=source)
