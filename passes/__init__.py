"""Transformations of artifacts. Each pass is a frozen config dataclass plus one function.

``run_pass`` dispatches on the config's type (the torchao pattern), so a pipeline is just a list of configs.
Torch passes import torch inside themselves: importing this package never does.
"""

from __future__ import annotations

from typing import Any

from edgeport.passes import distill as _distill, export_onnx as _export_onnx, fix_shapes as _fix_shapes, fp16 as _fp16
from edgeport.passes import lowrank as _lowrank, opset_upgrade as _opset_upgrade, optimize as _optimize, ort_format as _ort_format
from edgeport.passes import prune as _prune, qnn_context as _qnn_context, quantize_dynamic as _quantize_dynamic
from edgeport.passes import quantize_search as _quantize_search, quantize_static as _quantize_static
from edgeport.passes import weight_sharing as _weight_sharing
from edgeport.artifacts import TorchArtifact
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
from edgeport.passes.registry import PassInfo

# Every pass, by its config class: the one table the pipeline, step cache and reports read.
PASSES: dict[type, PassInfo] = {info.config: info for info in (
    _prune.MAGNITUDE_PASS, _prune.CHANNELS_PASS, _lowrank.PASS, _distill.PASS, _export_onnx.PASS, _opset_upgrade.PASS, _fix_shapes.PASS,
    _optimize.PASS, _quantize_static.PASS, _quantize_search.PASS, _quantize_dynamic.PASS, _fp16.PASS, _ort_format.PASS, _qnn_context.PASS,
    _weight_sharing.PASS, _weight_sharing.PACK_PASS,
)}


def step_kinds() -> dict[str, type]:
    """Recipe step kind ("distill", "prune:<method>") -> its pass config class."""
    return {info.step: info.config for info in PASSES.values() if info.step}


def prune_methods() -> list[str]:
    return [kind.split(":", 1)[1] for kind in step_kinds() if kind.startswith("prune:")]


def finishing_steps() -> list[Any]:
    """The ONNX passes export runs on every fp32 model it ships, once each."""
    found = [info.finishing for info in PASSES.values() if info.finishing is not None]
    return list({type(config): config for config in found}.values())


def pass_info(config: Any) -> PassInfo:
    info = PASSES.get(type(config))
    if info is None:
        raise TypeError(f"no pass is registered for {type(config).__name__}")
    return info


def precision_of_step(name: str) -> str | None:
    """The precision a step (by its report name) writes; None when it keeps its input's."""
    return next((info.precision for info in PASSES.values() if info.name == name), None)


def run_pass(artifact: Any, config: Any, ctx: PassContext) -> Any:
    info = pass_info(config)
    if (info.kind == "torch") != isinstance(artifact, TorchArtifact):
        have = "a torch model" if isinstance(artifact, TorchArtifact) else "an ONNX model"
        raise UsageError(f"the {info.name} step takes {'a torch' if info.kind == 'torch' else 'an ONNX'} model, and it was given {have}",
                         fix="put torch steps (distill, prune) before the export, and give them a PyTorch model")
    return info.run(artifact, config, ctx=ctx)


__all__ = [
    "PASSES",
    "PassInfo",
    "pass_info",
    "precision_of_step",
    "AccuracyAwareInt8Config",
    "quantize_accuracy_aware",
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
