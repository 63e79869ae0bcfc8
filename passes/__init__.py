"""Transformations of artifacts. Each pass is a frozen config dataclass plus one function.

``run_pass`` dispatches on the config's type (the torchao pattern), so a pipeline is just a list of configs.
Torch passes import torch inside themselves: importing this package never does.
"""

from __future__ import annotations

from typing import Any, Callable

from edgeport.passes.context import PassContext, Progress
from edgeport.passes.export_onnx import OnnxExportConfig, export_onnx
from edgeport.passes.optimize import GraphOptimizeConfig, optimize_graph
from edgeport.passes.quantize_static import StaticInt8Config, quantize_static_int8

PASS_REGISTRY: dict[type, Callable[..., Any]] = {
    OnnxExportConfig: export_onnx,
    GraphOptimizeConfig: optimize_graph,
    StaticInt8Config: quantize_static_int8,
}


def run_pass(artifact: Any, config: Any, ctx: PassContext) -> Any:
    handler = PASS_REGISTRY.get(type(config))
    if handler is None:
        raise TypeError(f"no pass is registered for {type(config).__name__}")
    return handler(artifact, config, ctx=ctx)


__all__ = [
    "PASS_REGISTRY",
    "GraphOptimizeConfig",
    "OnnxExportConfig",
    "PassContext",
    "Progress",
    "StaticInt8Config",
    "export_onnx",
    "optimize_graph",
    "quantize_static_int8",
    "run_pass",
]
