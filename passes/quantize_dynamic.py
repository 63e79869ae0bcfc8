"""Dynamic int8: weights quantized offline, activations at run time from their live range. No
calibration data; suits transformers and recurrent nets on CPUs, where activations vary a lot."""

from __future__ import annotations

import time
from dataclasses import dataclass

from edgeport.artifacts import OnnxArtifact
from edgeport.errors import QuantizationError, UsageError, first_line
from edgeport.passes.context import PassContext
from edgeport.passes.parity_check import parity_between
from edgeport.passes.calibration import quiet_ort
from edgeport.passes.quantize_static import per_tensor_if_needed, resolve_reduce_range
from edgeport.passes.registry import PassInfo


@dataclass(frozen=True)
class DynamicInt8Config:
    weight_type: str = "int8"
    per_channel: bool = False
    reduce_range: bool | None = None  # None: chosen from the target CPU, as for static int8
    op_types: tuple[str, ...] | None = None  # None: every op type ORT quantizes dynamically
    exclude_nodes: tuple[str, ...] = ()
    eval_samples: int = 1000

    def __post_init__(self) -> None:
        if self.weight_type not in ("int8", "uint8"):
            raise UsageError(f"weight_type '{self.weight_type}' is unknown", fix="use int8 or uint8")
        if self.eval_samples < 1:
            raise UsageError("eval_samples must be at least 1", fix="use e.g. 1000")


def quantize_dynamic_int8(model: OnnxArtifact, config: DynamicInt8Config, *, ctx: PassContext) -> OnnxArtifact:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    notes: list[str] = []
    config = per_tensor_if_needed(config, model.path, notes)
    reduce_range, range_rule = resolve_reduce_range(config.reduce_range, ctx)
    out_path = ctx.work_dir / "model.dynamic-int8.onnx"
    with quiet_ort():
        try:
            quantize_dynamic(
                str(model.path), str(out_path), op_types_to_quantize=list(config.op_types) if config.op_types else None,
                per_channel=config.per_channel, reduce_range=reduce_range,
                weight_type=QuantType.QInt8 if config.weight_type == "int8" else QuantType.QUInt8,
                nodes_to_exclude=list(config.exclude_nodes),
            )
        except Exception as exc:
            raise QuantizationError(f"ONNX Runtime dynamic quantization failed: {first_line(exc)[:300]}",
                                    fix="exclude the failing node (--exclude-nodes) or use static int8") from exc
    artifact = OnnxArtifact.from_file(out_path, lineage=(*model.lineage, "quantize_dynamic"))
    ctx.record_pass(
        PASS, config, started,
        metrics={
            "reduce_range": reduce_range,
            "decisions": {"reduce_range": range_rule},
            "size_ratio": round(artifact.size_bytes / model.size_bytes, 4),
            "parity_vs_fp32": parity_between(model, artifact, ctx, samples=config.eval_samples),
        },
        source=model,
        result=artifact,
        notes=notes,
    )
    return artifact


PASS = PassInfo(DynamicInt8Config, quantize_dynamic_int8, name="quantize_dynamic", label="quantizing weights to int8 (dynamic)", kind="onnx", cacheable=True, precision="dynamic-int8")
