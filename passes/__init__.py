"""Transformations of artifacts. Each pass is a frozen config dataclass plus one function.

``run_pass`` dispatches on the config's type (the torchao pattern), so a pipeline is just a list of configs.
Torch passes import torch inside themselves: importing this package never does.
"""

from __future__ import annotations

from typing import Any, Callable

from edgeport.errors import UsageError
from edgeport.passes.context import PassContext, Progress
from edgeport.passes.distill import DistillConfig, distill
from edgeport.passes.export_onnx import OnnxExportConfig, export_onnx
from edgeport.passes.fix_shapes import FixShapesConfig, fix_shapes
from edgeport.passes.fp16 import Fp16Config, convert_fp16
from edgeport.passes.lowrank import LowRankConfig, low_rank
from edgeport.passes.opset_upgrade import OpsetUpgradeConfig, upgrade_opset
from edgeport.passes.optimize import GraphOptimizeConfig, optimize_graph
from edgeport.passes.ort_format import OrtFormatConfig, to_ort_format
from edgeport.passes.qnn_context import QnnContextConfig, compile_qnn_context
from edgeport.passes.prune import ChannelPruneConfig, MagnitudePruneConfig, channel_prune, magnitude_prune
from edgeport.passes.quantize_dynamic import DynamicInt8Config, quantize_dynamic_int8
from edgeport.passes.quantize_search import AccuracyAwareInt8Config, quantize_accuracy_aware
from edgeport.passes.quantize_static import StaticInt8Config, quantize_static_int8

def _distill_step(artifact: Any, config: DistillConfig, *, ctx: PassContext) -> Any:
    if ctx.teacher is None or ctx.training is None:
        raise UsageError("a distillation step needs a teacher and training data", fix="pass teacher= and train_data= to edgeport.export")
    return distill(artifact, config, teacher=ctx.teacher, data=ctx.training, ctx=ctx)


PASS_REGISTRY: dict[type, Callable[..., Any]] = {
    MagnitudePruneConfig: magnitude_prune,
    ChannelPruneConfig: channel_prune,
    LowRankConfig: low_rank,
    DistillConfig: _distill_step,
    OnnxExportConfig: export_onnx,
    OpsetUpgradeConfig: upgrade_opset,
    FixShapesConfig: fix_shapes,
    GraphOptimizeConfig: optimize_graph,
    StaticInt8Config: quantize_static_int8,
    AccuracyAwareInt8Config: quantize_accuracy_aware,
    DynamicInt8Config: quantize_dynamic_int8,
    Fp16Config: convert_fp16,
    OrtFormatConfig: to_ort_format,
    QnnContextConfig: compile_qnn_context,
}


def run_pass(artifact: Any, config: Any, ctx: PassContext) -> Any:
    handler = PASS_REGISTRY.get(type(config))
    if handler is None:
        raise TypeError(f"no pass is registered for {type(config).__name__}")
    return handler(artifact, config, ctx=ctx)


__all__ = [
    "AccuracyAwareInt8Config",
    "quantize_accuracy_aware",
    "PASS_REGISTRY",
    "ChannelPruneConfig",
    "DynamicInt8Config",
    "FixShapesConfig",
    "QnnContextConfig",
    "compile_qnn_context",
    "fix_shapes",
    "Fp16Config",
    "convert_fp16",
    "quantize_dynamic_int8",
    "DistillConfig",
    "LowRankConfig",
    "MagnitudePruneConfig",
    "channel_prune",
    "distill",
    "low_rank",
    "magnitude_prune",
    "GraphOptimizeConfig",
    "OnnxExportConfig",
    "OpsetUpgradeConfig",
    "OrtFormatConfig",
    "PassContext",
    "Progress",
    "StaticInt8Config",
    "export_onnx",
    "optimize_graph",
    "quantize_static_int8",
    "run_pass",
    "to_ort_format",
    "upgrade_opset",
]
