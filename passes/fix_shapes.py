"""Fix a model's dynamic input dims to sizes: NPU compilers (QNN HTP, NNAPI, CoreML) take only
nodes whose shapes are all known, so an NPU target ships a model compiled for one shape.

Shapes are then inferred again. The pipeline runs this before graph optimization, whose constant
folding then removes the Shape/Gather/Concat arithmetic that the fixed sizes made constant (nodes
an NPU would otherwise leave to the CPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx

from edgeport.artifacts import OnnxArtifact
from edgeport.errors import UsageError
from edgeport.passes.context import PassContext
from edgeport.passes.registry import PassInfo


@dataclass(frozen=True)
class FixShapesConfig:
    """``shapes``: input name -> full concrete shape (every dim a positive int)."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, shape in self.shapes.items():
            if not all(isinstance(d, int) and d >= 1 for d in shape):
                raise UsageError(f"fixed shape {list(shape)} of input '{name}' has a dim that is not a positive size",
                                 fix="give every dim a size (--dim NAME=N or the profile's [budgets.dims])")


def fix_shapes(model: OnnxArtifact, config: FixShapesConfig, *, ctx: PassContext) -> OnnxArtifact:
    started = time.perf_counter()
    proto = onnx.load(str(model.path))
    changed: dict[str, list[int]] = {}
    for value in proto.graph.input:
        shape = config.shapes.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if shape is None or not value.type.HasField("tensor_type"):
            continue
        if len(shape) != len(dims):
            raise UsageError(f"input '{value.name}' has rank {len(dims)}, not the {len(shape)} dims given to fix it",
                             fix="give one size per dim")
        for dim, size in zip(dims, shape):
            if dim.HasField("dim_value") and dim.dim_value != size:
                raise UsageError(f"input '{value.name}' has a fixed dim {dim.dim_value} where {size} was asked",
                                 fix="fix only the dynamic dims (the profile's batch and [budgets.dims], or --dim)")
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = size
                changed[value.name] = list(shape)
    # shapes inferred from dynamic dims are stale now: drop them and infer again
    del proto.graph.value_info[:]
    for output in proto.graph.output:  # inference writes them anew, at the fixed sizes
        output.type.tensor_type.ClearField("shape")
    proto = onnx.shape_inference.infer_shapes(proto)
    out_path = ctx.work_dir / "model.fixed-shapes.onnx"
    external = len(model.files()) > 1
    onnx.save(proto, str(out_path), save_as_external_data=external, location=f"{out_path.name}.data" if external else None)
    artifact = OnnxArtifact.from_file(out_path, lineage=(*model.lineage, "fix_shapes"))
    ctx.record_pass(
        PASS, config, started,
        metrics={"fixed": changed},
        source=model,
        result=artifact,
    )
    return artifact


PASS = PassInfo(FixShapesConfig, fix_shapes, name="fix_shapes", label="fixing input shapes", kind="onnx", cacheable=True)
