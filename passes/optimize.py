"""Portable graph optimization: ONNX Runtime's basic level applied offline, plus shape inference.

Only the basic level is saved into the artifact: extended/layout optimizations are specific to the
host's execution provider and CPU, and a model saved with them may not load on the target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import onnx

from edgeport.artifacts import OnnxArtifact
from edgeport.errors import UsageError, first_line
from edgeport.passes.context import PassContext
from edgeport.passes.parity_check import parity_between
from edgeport.runtimes.session import create_session
from edgeport.passes.registry import PassInfo

_PORTABLE_LEVELS = ("disable", "basic")


@dataclass(frozen=True)
class GraphOptimizeConfig:
    level: str = "basic"
    shape_inference: bool = True

    def __post_init__(self) -> None:
        if self.level not in _PORTABLE_LEVELS:
            raise UsageError(
                f"graph optimization level '{self.level}' is not portable",
                fix="use 'basic' (or 'disable'); ONNX Runtime applies extended/layout optimizations itself at load time on the target",
            )


def optimize_graph(model: OnnxArtifact, config: GraphOptimizeConfig, *, ctx: PassContext) -> OnnxArtifact:
    started = time.perf_counter()
    out_path = ctx.work_dir / "model.fp32.opt.onnx"
    before = _node_count(model)
    if config.level == "disable":
        onnx.save(onnx.load(str(model.path)), str(out_path))
    else:
        # Building a session with optimized_model_filepath makes ORT write the optimized graph.
        create_session(model.path, optimization=config.level, optimized_path=out_path, external_data=len(model.files()) > 1)
    notes: list[str] = []
    if config.shape_inference:
        try:
            onnx.shape_inference.infer_shapes_path(str(out_path), str(out_path))
        except Exception as exc:  # shape inference is an aid, not a requirement
            notes.append(f"ONNX shape inference skipped: {first_line(exc)[:200]}")
    artifact = OnnxArtifact.from_file(out_path, lineage=(*model.lineage, "optimize"))
    metrics = {"nodes_before": before, "nodes_after": _node_count(artifact)}
    metrics["parity_vs_input"] = parity_between(model, artifact, ctx, samples=8)
    ctx.record_pass(
        PASS, config, started,
        metrics=metrics,
        source=model,
        result=artifact,
        notes=notes,
    )
    return artifact


def _node_count(model: OnnxArtifact) -> int:
    return len(onnx.load(str(model.path), load_external_data=False).graph.node)


PASS = PassInfo(GraphOptimizeConfig, optimize_graph, name="optimize", label="optimizing graph", kind="onnx", cacheable=True)
