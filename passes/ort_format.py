"""ONNX Runtime's mobile format: the model saved as an .ort flatbuffer, which the minimal and
mobile builds of ONNX Runtime load (and which loads faster anywhere). Only portable (basic)
optimizations are saved into it, as for the .onnx artifact."""

from __future__ import annotations

import time
from dataclasses import dataclass

from edgeport.artifacts import OnnxArtifact
from edgeport.errors import UsageError
from edgeport.passes.context import PassContext
from edgeport.passes.parity_check import parity_between
from edgeport.runtimes.session import session_options
from edgeport.passes.registry import PassInfo


@dataclass(frozen=True)
class OrtFormatConfig:
    optimization: str = "basic"

    def __post_init__(self) -> None:
        if self.optimization not in ("disable", "basic"):
            raise UsageError(f"optimization '{self.optimization}' is not portable for an .ort file", fix="use basic or disable")


def to_ort_format(model: OnnxArtifact, config: OrtFormatConfig, *, ctx: PassContext) -> OnnxArtifact:
    import onnxruntime as ort

    started = time.perf_counter()
    out_path = ctx.work_dir / (model.path.stem.replace(".fp32", "") + ".ort")
    options = session_options(optimization=config.optimization, optimized_path=out_path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
    artifact = OnnxArtifact(out_path, model.inputs, model.outputs, lineage=(*model.lineage, "ort_format"))
    ctx.record_pass(
        PASS, config, started,
        metrics={"parity_vs_onnx": parity_between(model, artifact, ctx, samples=8)},
        source=model,
        result=artifact,
    )
    return artifact


PASS = PassInfo(OrtFormatConfig, to_ort_format, name="ort_format", label="saving ORT format", kind="onnx", cacheable=True)
