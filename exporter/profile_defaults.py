"""What a device profile asks of the export side: int8 settings and the target CPU for defaults."""

from __future__ import annotations

from dataclasses import replace

from edgeport.device_profiles import Profile
from edgeport.passes.context import QuantTarget
from edgeport.passes.quantize_static import StaticInt8Config
from edgeport.runtimes.hostcpu import VNNI_FLAGS


def quant_target(profile: Profile) -> QuantTarget:
    return QuantTarget(
        arch=profile.hardware.arch,
        has_vnni=any(f in profile.hardware.cpu_features for f in VNNI_FLAGS),
        source=f"profile {profile.name}",
    )


def quant_config_for(profile: Profile, base: StaticInt8Config | None = None) -> StaticInt8Config:
    q = profile.runtime.quantization
    return replace(
        base or StaticInt8Config(),
        format=q.format,
        activation_type=q.activation_type,
        weight_type=q.weight_type,
        per_channel=q.per_channel,
        reduce_range=q.reduce_range,
    )
