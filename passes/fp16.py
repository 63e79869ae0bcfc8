"""fp16: weights and compute in half precision for GPUs and NPUs (CUDA, TensorRT, CoreML), with
float32 inputs and outputs kept so callers need not change. Uses the converter that ships inside
onnxruntime (onnxruntime.transformers.float16), which keeps numerically fragile ops in fp32."""

from __future__ import annotations

import time
from dataclasses import dataclass

import onnx

from edgeport.artifacts import OnnxArtifact
from edgeport.errors import QuantizationError, first_line
from edgeport.passes.context import PassContext
from edgeport.passes.parity_check import parity_between
from edgeport.passes.registry import PassInfo


@dataclass(frozen=True)
class Fp16Config:
    keep_io_types: bool = True
    op_block_list: tuple[str, ...] | None = None  # None: ORT's default list of ops kept in fp32
    eval_samples: int = 1000


def convert_fp16(model: OnnxArtifact, config: Fp16Config, *, ctx: PassContext) -> OnnxArtifact:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    started = time.perf_counter()
    out_path = ctx.work_dir / "model.fp16.onnx"
    try:
        converted = convert_float_to_float16(
            onnx.load(str(model.path)), keep_io_types=config.keep_io_types,
            op_block_list=list(config.op_block_list) if config.op_block_list is not None else None,
        )
    except Exception as exc:
        raise QuantizationError(f"fp16 conversion failed: {first_line(exc)[:300]}", fix="block the failing op type from conversion") from exc
    onnx.save(converted, str(out_path))
    artifact = OnnxArtifact.from_file(out_path, lineage=(*model.lineage, "fp16"))
    ctx.record_pass(
        PASS, config, started,
        metrics={"size_ratio": round(artifact.size_bytes / model.size_bytes, 4),
                 "parity_vs_fp32": parity_between(model, artifact, ctx, samples=config.eval_samples)},
        source=model,
        result=artifact,
        notes=["fp16 kernels are slow or missing on most CPUs: this artifact is for GPUs and NPUs"],
    )
    return artifact


PASS = PassInfo(Fp16Config, convert_fp16, name="fp16", label="converting to fp16", kind="onnx", cacheable=True, precision="fp16")
