"""`edgeport profiles calibrate`: a device profile of the machine it runs on, with the rates its
ONNX Runtime CPU kernels reach, whether int8 pays there, and the estimator's measured error."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import replace
from pathlib import Path

from edgeport.device_profiles import load_profile
from edgeport.device_profiles.schema import Budgets, Hardware, Profile, Quantization, Runtime
from edgeport.device_profiles.toml_writer import profile_to_toml
from edgeport.errors import UsageError
from edgeport.outputs import write_atomic
from edgeport.passes.context import NullProgress
from edgeport.runtimes.hostcpu import host_cpu, memory_mb
from edgeport.runtimes.host_calibration import calibrate_host, local_timer
from edgeport.runtimes.remote import RemoteDevice, RemoteTarget, device_cpu

# Features that decide int8 kernels and that profiles name; a calibrated profile lists those present.
PROFILE_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "neon", "dotprod", "i8mm")


def calibrate_profile(out: str | Path, threads: int | None = None, name: str | None = None, budgets_from: str | None = None,
                      progress=None, remote: RemoteTarget | None = None) -> Profile:
    """Measure this machine, or the device ``remote`` names, at ``threads`` (all cores by default)
    and write its profile to ``out``."""
    progress = progress or NullProgress()
    device = RemoteDevice(remote) if remote is not None else None
    cpu = device_cpu(device.facts) if device else host_cpu()
    threads = cpu.cores if threads is None else threads
    if not 1 <= threads <= 256:
        raise UsageError(f"--threads {threads} is out of range", fix="give a thread count between 1 and 256")
    budgets = load_profile(budgets_from).budgets if budgets_from else Budgets()
    where = f" (remote host {remote.describe()})" if remote else ""
    stamp = f"measured by edgeport profiles calibrate on {cpu.model_name}{where}, {_dt.date.today().isoformat()}"
    memory = device.facts.get("memory_mb") if device else memory_mb()
    if not memory:  # the profile's memory_mb is a budget (peak memory must fit): never a made-up size
        raise UsageError("the OS there does not report its physical memory, which the profile's hardware.memory_mb must hold",
                         fix="calibrate on Linux, macOS or Windows, or write the profile by hand (edgeport profiles check FILE)")
    placeholder = Hardware(cpu.arch, cpu.cores, memory, 1.0, 1.0, 1.0)  # the estimator's check needs only the measured rates
    measured = calibrate_host(threads, placeholder, stamp, progress=progress.note, timer=device.timer if device else local_timer)
    fp32 = max(measured.gops[f"{k}_fp32"] for k in ("conv", "matmul"))
    int8 = max(measured.gops[f"{k}_int8"] for k in ("conv", "matmul"))
    hardware = replace(placeholder, peak_gops_fp32=fp32, peak_gops_int8=int8, mem_bandwidth_gbs=measured.bandwidth_gbs,
                       cpu_features=tuple(f for f in PROFILE_FEATURES if cpu.has_feature(f)), cpu_model_pattern=re.escape(cpu.model_name))
    x86_saturates = cpu.arch == "x86_64" and not cpu.has_vnni
    profile = Profile(
        name=name or "calibrated-host",
        description=f"{'The device ' + remote.describe() if remote else 'This machine'} as measured by edgeport profiles calibrate: "
                    f"{cpu.model_name}, {cpu.cores} cores, {threads} threads",
        hardware=hardware,
        runtime=Runtime(("CPUExecutionProvider",), intra_op_threads=threads, quantization=Quantization(reduce_range=x86_saturates)),
        budgets=budgets,
        sources={
            "cores": f"os.cpu_count() there; {stamp}",
            "memory_mb": f"physical memory reported by the OS there; {stamp}",
            "peak_gops_fp32": f"effective fp32 rate of ONNX Runtime's Conv/MatMul kernels at {threads} threads (not a spec-sheet peak); {stamp}",
            "peak_gops_int8": f"effective int8 (QDQ) rate of ONNX Runtime's Conv/MatMul kernels at {threads} threads; {stamp}",
            "mem_bandwidth_gbs": f"effective bandwidth of a 64 MB streaming Add at {threads} threads; {stamp}",
            **({"budgets": f"copied from profile {budgets_from}"} if budgets_from else {}),
        },
        measured=measured,
    )
    write_atomic(Path(out), profile_to_toml(profile))
    return load_profile(out)  # what was written reads back as a valid profile, or this fails loudly

