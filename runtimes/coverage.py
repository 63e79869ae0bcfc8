"""Execution-provider coverage without a session that placed the nodes: static, for NNAPI and
CoreML, from ONNX Runtime's own mobile usability checker when the provider is not on this machine;
and from a provider's own refusals when it would not take the model and CPU fallback is forbidden."""

from __future__ import annotations

from typing import Any

import onnx

STATIC_CHECKERS = ("NnapiExecutionProvider", "CoreMLExecutionProvider")


def static_coverage(model_path: str, provider: str, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any] | None:
    """Share of nodes the provider can take, per ORT's supported-op tables; None if no checker exists.
    With ``shapes`` (the input shapes validation runs at), dynamic dims are fixed to them first: NNAPI
    and CoreML take no node whose shapes are not fixed, so a count with dims left open overstates."""
    if provider not in STATIC_CHECKERS:
        return None
    try:
        from onnxruntime.tools.mobile_helpers import usability_checker as checker
    except ImportError:
        return None
    model = onnx.load(model_path)
    for value in model.graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, (shapes or {}).get(value.name, ())):
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = int(size)
    model = onnx.shape_inference.infer_shapes(model)
    dynamic = [i.name for i in model.graph.input if any(not d.HasField("dim_value") for d in i.type.tensor_type.shape.dim)]
    fixed = not dynamic
    if provider == "NnapiExecutionProvider":
        info = checker.check_nnapi_partitions(model, require_fixed_input_sizes=fixed)
    else:
        info = checker.check_coreml_partitions(model, require_fixed_input_sizes=fixed, config_filename="coreml_supported_mlprogram_ops.md")
    return {
        "source": "onnxruntime mobile usability checker (static, by op type)",
        "nodes": info.num_nodes,
        "supported_nodes": info.num_supported_nodes,
        "preferred_share": round(info.num_supported_nodes / info.num_nodes, 4) if info.num_nodes else None,
        "partitions": info.num_partitions,
        "unsupported_ops": sorted(info.unsupported_ops),
        "input_shapes": {i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input},
        "note": f"inputs {dynamic} have dynamic dims: {provider.replace('ExecutionProvider', '')} needs fixed sizes (fix them with onnxruntime.tools.make_dynamic_shape_fixed)" if dynamic else "",
    }


def coverage_from_refusal(graph: str | None, measurement: dict[str, Any], provider: str) -> dict[str, Any] | None:
    """Coverage when a provider refused the model (no CPU fallback): every node but those it named."""
    refused = measurement.get("refused_nodes")
    if not refused or graph is None:
        return None
    nodes = sum(1 for n in onnx.load(str(graph), load_external_data=False).graph.node if n.op_type != "Constant")
    return {"source": f"{provider}'s own refusals (ONNX Runtime verbose log; CPU fallback forbidden)", "nodes": nodes,
            "preferred_share": round(max(nodes - len(refused), 0) / nodes, 4) if nodes else None, "refused_nodes": refused}
