"""The device profile schema: what a target is, how to run on it, and the budgets it must meet.

Parsing is strict and collects every problem: an unknown key (with the nearest valid one), a
wrong type, an impossible value, or a hardware number without a source.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from edgeport.device_profiles.typed_toml import Problems, build_dataclass

ARCHES = ("arm64", "armv7", "x86_64")
# qnn-context: model.onnx plus the QNN context binary compiled for the profile's SoC (model_ctx.onnx)
MODEL_FORMATS = ("onnx", "ort", "qnn-context")
ACTIVATION_TYPES = ("uint8", "int8", "uint16")  # uint16: QNN HTP's 16-bit activations (W8A16)
KNOWN_PROVIDERS = (
    "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider", "OpenVINOExecutionProvider",
    "NnapiExecutionProvider", "CoreMLExecutionProvider", "XnnpackExecutionProvider", "QNNExecutionProvider",
    "DmlExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider", "ACLExecutionProvider",
    "ArmNNExecutionProvider", "DnnlExecutionProvider", "WebGpuExecutionProvider", "VitisAIExecutionProvider",
    "CANNExecutionProvider", "RknpuExecutionProvider", "SNPEExecutionProvider", "AzureExecutionProvider",
)
# Hardware numbers that feed estimates must say where they came from.
SOURCED_FIELDS = ("cores", "memory_mb", "peak_gops_fp32", "peak_gops_int8", "mem_bandwidth_gbs")


@dataclass(frozen=True)
class Hardware:
    arch: str
    cores: int
    memory_mb: int
    peak_gops_fp32: float
    peak_gops_int8: float
    mem_bandwidth_gbs: float
    storage_mb: int | None = None
    cpu_features: tuple[str, ...] = ()  # e.g. avx2, avx512_vnni, neon, dotprod: they choose int8 defaults
    accelerator: str | None = None  # what runs the model when not the CPU (gpu, npu, ane)
    # the CPU's own peaks where the peaks above are the accelerator's: nodes it does not take run there
    cpu_peak_gops_fp32: float | None = None
    cpu_peak_gops_int8: float | None = None
    cpu_model_pattern: str | None = None  # regex on the host's CPU name that on-target also requires, e.g. "Cortex-A76|BCM2712"


@dataclass(frozen=True)
class Quantization:
    format: str = "qdq"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool | None = None  # None: from cpu_features (x86 without VNNI -> on)
    weight_symmetric: bool | None = None  # None: symmetric for signed weight types (ORT's default)


@dataclass(frozen=True)
class Runtime:
    execution_providers: tuple[str, ...]
    # options of the first provider, as ONNX Runtime names them (QNN: backend_type, htp_arch, soc_model)
    provider_options: dict[str, str] = field(default_factory=dict)
    allow_cpu_fallback: bool = True
    # the target compiles for fixed input shapes (NPUs): export fixes every dynamic dim from
    # budgets.batch and budgets.dims (or --dim) before quantizing
    fixed_shapes: bool = False
    intra_op_threads: int | None = None
    opset_min: int = 7
    opset_max: int = 21
    model_format: str = "onnx"
    enable_cpu_mem_arena: bool = True
    enable_mem_pattern: bool = True
    quantization: Quantization = field(default_factory=Quantization)


@dataclass(frozen=True)
class ParityBudget:
    top1_agreement_min: float | None = None
    cosine_min: float | None = None
    sqnr_db_min: float | None = None
    max_abs_diff_max: float | None = None


@dataclass(frozen=True)
class Budgets:
    latency_p95_ms: float | None = None
    batch: int = 1  # the batch size the latency and memory budgets are stated at
    dims: dict[str, int] = field(default_factory=dict)  # sizes for other symbolic dims, e.g. sequence = 128
    peak_memory_mb: float | None = None
    model_size_mb: float | None = None
    provider_coverage_min: float | None = None  # share of nodes the first provider must take
    accuracy_drop_max: float | None = None
    parity: ParityBudget = field(default_factory=ParityBudget)


@dataclass(frozen=True)
class Measured:
    """Rates measured on the device itself by `edgeport profiles calibrate`: the estimator prices
    nodes with these where present, and with peaks times assumed efficiencies otherwise."""

    threads: int  # the thread count they were measured at
    gops: dict[str, float]  # "<op class>_<precision>" -> effective GOPS (2 per MAC; G elements/s for non-MAC classes)
    bandwidth_gbs: float  # effective, from a large streaming copy
    node_overhead_us: float  # what one tiny node costs beyond its work
    mac_node_overhead_us: float | None = None  # the same for a Conv/MatMul, which wakes the thread pool
    int8_speedup: dict[str, float] = field(default_factory=dict)  # op class -> int8 rate / fp32 rate
    activation_bandwidth_gbs: float | None = None  # activations of a few MB stay in cache between nodes
    estimate_error_median: float | None = None  # |predicted / measured - 1| over the calibration check models
    estimate_error_max: float | None = None
    estimate_error_models: int | None = None
    source: str = ""


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    hardware: Hardware
    runtime: Runtime
    budgets: Budgets
    sources: dict[str, str]
    measured: Measured | None = None
    path: str = ""

    @property
    def preferred_provider(self) -> str:
        return self.runtime.execution_providers[0]


def parse_profile(data: dict[str, Any], origin: str) -> tuple[Profile | None, list[str]]:
    """Build a Profile from TOML data; returns (profile or None, every problem found)."""
    problems = Problems(origin)
    profile = build_dataclass(Profile, {**data, "path": origin}, "", problems)
    if profile is not None:
        _check_values(profile, problems)
    return (profile if not problems.items else None), problems.items


def _check_values(p: Profile, problems: Problems) -> None:
    hw, rt, b = p.hardware, p.runtime, p.budgets
    if not p.name.strip():
        problems.add("name", "must not be empty")
    if hw.arch not in ARCHES:
        problems.add("hardware.arch", f"'{hw.arch}' is not one of {', '.join(ARCHES)}")
    for name in ("cores", "memory_mb", "peak_gops_fp32", "peak_gops_int8", "mem_bandwidth_gbs", "storage_mb"):
        value = getattr(hw, name)
        if value is not None and value <= 0:
            problems.add(f"hardware.{name}", f"must be positive, not {value}")
    if hw.cpu_model_pattern is not None:
        try:
            re.compile(hw.cpu_model_pattern)
        except re.error as exc:
            problems.add("hardware.cpu_model_pattern", f"is not a regular expression ({exc})")
    for name in ("cpu_peak_gops_fp32", "cpu_peak_gops_int8"):
        value = getattr(hw, name)
        if value is not None and value <= 0:
            problems.add(f"hardware.{name}", f"must be positive, not {value}")
        if value is not None and not str(p.sources.get(name, "")).strip():
            problems.add(f"sources.{name}", f"hardware.{name} needs a source (a spec sheet, a datasheet, or how it was derived)")
    for name in SOURCED_FIELDS + (("storage_mb",) if hw.storage_mb is not None else ()):  # storage is a budget where given
        if name not in p.sources or not str(p.sources[name]).strip():
            problems.add(f"sources.{name}", f"hardware.{name} needs a source (a spec sheet, a datasheet, or how it was derived)")
    if not rt.execution_providers:
        problems.add("runtime.execution_providers", "must name at least one provider")
    for provider in rt.execution_providers:
        if provider not in KNOWN_PROVIDERS:
            lowered = {p.lower(): p for p in KNOWN_PROVIDERS}
            near = [lowered[m] for m in difflib.get_close_matches(provider.lower(), list(lowered), n=1)]
            problems.add("runtime.execution_providers", f"'{provider}' is not an ONNX Runtime provider" + (f"; did you mean '{near[0]}'?" if near else ""))
    if rt.intra_op_threads is not None and not 1 <= rt.intra_op_threads <= 256:
        problems.add("runtime.intra_op_threads", f"must be between 1 and 256, not {rt.intra_op_threads}")
    if not 1 <= rt.opset_min <= rt.opset_max <= 30:
        problems.add("runtime.opset_min", f"opset range {rt.opset_min}..{rt.opset_max} is impossible")
    if rt.model_format not in MODEL_FORMATS:
        problems.add("runtime.model_format", f"'{rt.model_format}' is not one of {', '.join(MODEL_FORMATS)}")
    q = rt.quantization
    for name, allowed in (("format", ("qdq", "qoperator")), ("activation_type", ACTIVATION_TYPES), ("weight_type", ("uint8", "int8"))):
        if getattr(q, name) not in allowed:
            problems.add(f"runtime.quantization.{name}", f"'{getattr(q, name)}' is not one of {', '.join(allowed)}")
    if rt.model_format == "qnn-context" and rt.execution_providers[:1] != ("QNNExecutionProvider",):
        problems.add("runtime.model_format", "'qnn-context' is compiled by QNNExecutionProvider, which must be the first provider")
    if q.activation_type == "uint16" and rt.execution_providers[:1] != ("QNNExecutionProvider",):
        problems.add("runtime.quantization.activation_type", "uint16 activations run on QNNExecutionProvider only; use uint8 or int8")
    if b.batch < 1:
        problems.add("budgets.batch", f"must be at least 1, not {b.batch}")
    for dim, size in b.dims.items():
        if size < 1:
            problems.add(f"budgets.dims.{dim}", f"must be at least 1, not {size}")
    for name in ("latency_p95_ms", "peak_memory_mb", "model_size_mb"):
        value = getattr(b, name)
        if value is not None and value <= 0:
            problems.add(f"budgets.{name}", f"must be positive, not {value}")
    for name, value in (("provider_coverage_min", b.provider_coverage_min), ("accuracy_drop_max", b.accuracy_drop_max),
                        ("parity.top1_agreement_min", b.parity.top1_agreement_min)):
        if value is not None and not 0 <= value <= 1:
            problems.add(f"budgets.{name}", f"must be within [0, 1], not {value}")
    if b.parity.cosine_min is not None and not -1 <= b.parity.cosine_min <= 1:
        problems.add("budgets.parity.cosine_min", f"must be within [-1, 1], not {b.parity.cosine_min}")
    if b.parity.max_abs_diff_max is not None and b.parity.max_abs_diff_max < 0:
        problems.add("budgets.parity.max_abs_diff_max", f"must not be negative, not {b.parity.max_abs_diff_max}")
