"""Whether this host is the profile's target: a claim that every condition must prove.

A measurement counts as "on target" only when the host has the profile's architecture, every CPU
feature it lists (an AVX2 runner is not the VNNI server; an arm64 board without dotprod is not a
Raspberry Pi 5), enough cores for its threads, its execution providers, and, where the profile
names one, a CPU whose name matches its pattern. Otherwise the basis is "host", with the reasons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeport.device_profiles.schema import Profile
from edgeport.runtimes.hostcpu import HostCpu


@dataclass(frozen=True)
class TargetClaim:
    on_target: bool
    failed: tuple[str, ...]  # each condition that does not hold, in words

    def describe(self) -> str:
        return "this host is the target" if self.on_target else "not the target: " + "; ".join(self.failed)

    def to_dict(self) -> dict[str, object]:
        return {"on_target": self.on_target, "failed": list(self.failed)}


def claim_target(profile: Profile, host: HostCpu, available_providers: list[str]) -> TargetClaim:
    hardware, runtime = profile.hardware, profile.runtime
    failed: list[str] = []
    if host.arch != hardware.arch:
        failed.append(f"architecture {host.arch}, the profile's is {hardware.arch}")
    lacking = [f for f in hardware.cpu_features if not host.has_feature(f)]
    if lacking:
        failed.append(f"the CPU lacks {', '.join(lacking)}")
    threads = runtime.intra_op_threads or hardware.cores
    if host.cores < threads:
        failed.append(f"{host.cores} cores, the profile runs {threads} threads")
    missing = [p for p in runtime.execution_providers if p not in available_providers]
    if missing:
        failed.append(f"{', '.join(missing)} not available")
    if hardware.cpu_model_pattern and not re.search(hardware.cpu_model_pattern, host.model_name, re.IGNORECASE):
        failed.append(f"CPU '{host.model_name}' does not match the profile's '{hardware.cpu_model_pattern}'")
    return TargetClaim(not failed, tuple(failed))
