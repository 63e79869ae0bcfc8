"""QNN's quantization rules, from ONNX Runtime's own ``get_qnn_qdq_config``: every op quantized
(a float op on QNN's HTP runs on the CPU), fixed scales for Sigmoid/Tanh, 16-bit activations
where asked (W8A16) with converts where 8 and 16 bits meet, and the weight types HTP takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from edgeport.errors import QuantizationError, first_line
from edgeport.passes.finite_masks import MASK_NOTE, finite_mask_fills
from edgeport.passes.qdq_graph import sort_topologically
from edgeport.passes.calibration import ort_method, quiet_ort
from edgeport.passes.quantize_static import StaticInt8Config

def prepare_for_qnn(model: onnx.ModelProto, work: Path, notes: list[str]) -> onnx.ModelProto:
    """The float model as QNN's HTP can take it once quantized: ORT's qnn_preprocess_model fuses the
    Erf form of GELU into one Gelu (QNN has no quantized Erf) and ReduceMean/ReduceL2 sequences into
    LayerNormalization/LpNormalization; -inf mask fills become finite (HTP holds no -inf)."""
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    given, fused = work / "qnn-preprocess-input.onnx", work / "qnn-preprocessed.onnx"
    onnx.save(model, str(given))  # a file, not the proto: ORT's preprocessing moves a proto's weights to external files it then deletes
    with quiet_ort():
        if qnn_preprocess_model(given, fused, fuse_layernorm=True):
            before = len(model.graph.node)
            model = onnx.load(str(fused))
            notes.append(f"fused for QNN by ONNX Runtime's qnn_preprocess_model (GELU, LayerNorm, L2 norm): {before} -> {len(model.graph.node)} nodes")
    if finite_mask_fills(model):
        notes.append(MASK_NOTE)
    return model


def prepared_for_qnn(path: Path, work: Path, notes: list[str]) -> Path:
    """``prepare_for_qnn`` on a model file; the prepared copy is saved in ``work``."""
    prepared = prepare_for_qnn(onnx.load(str(path)), work, notes)
    out = work / "prepared-for-qnn.onnx"
    onnx.save(prepared, str(out))
    return out


_QUANT_TYPES = {"uint8": "QUInt8", "int8": "QInt8", "uint16": "QUInt16"}


def quantize_for_qnn(source_path: Path, out_path: Path, ranges_path: Path, method: str, op_types: list[str],
                      config: StaticInt8Config, exclude_nodes: tuple[str, ...] | list[str], wide_nodes: frozenset[str]) -> None:
    """QNN's QDQ layout from ORT's own rules (get_qnn_qdq_config: fixed scales for Sigmoid/Tanh,
    16-bit neighbours kept consistent, weights of 16-bit MatMuls and LayerNorms typed as QNN takes them)."""
    from onnxruntime.quantization import QuantType, quantize_static
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    proto = onnx.load(str(source_path), load_external_data=False)
    overrides = qnn_overrides(proto, wide_nodes)
    with quiet_ort():
        try:
            qnn = get_qnn_qdq_config(
                proto, None, calibrate_method=ort_method(method),
                activation_type=getattr(QuantType, _QUANT_TYPES[config.activation_type]),
                weight_type=getattr(QuantType, _QUANT_TYPES[config.weight_type]),
                per_channel=config.per_channel, init_overrides=overrides or None, weight_symmetric=config.weight_symmetric,
                activation_symmetric=config.activation_symmetric, op_types_to_quantize=op_types, nodes_to_exclude=list(exclude_nodes) or None,
            )
            quantize_static(
                str(source_path), str(out_path), calibration_data_reader=None, quant_format=qnn.quant_format,
                op_types_to_quantize=qnn.op_types_to_quantize, per_channel=qnn.per_channel, reduce_range=False,
                activation_type=qnn.activation_type, weight_type=qnn.weight_type, nodes_to_exclude=qnn.nodes_to_exclude or [],
                calibrate_method=ort_method(method), extra_options=qnn.extra_options, calibration_cache_path=str(ranges_path),
            )
        except Exception as exc:
            raise QuantizationError(f"ONNX Runtime quantization for QNN failed: {first_line(exc)[:300]}",
                                    fix="exclude the failing node (--exclude-nodes), or report the model") from exc
    quantized = onnx.load(str(out_path), load_external_data=False)
    if sort_topologically(quantized):
        onnx.save(quantized, str(out_path))


def qnn_overrides(proto: onnx.ModelProto, wide_nodes: frozenset[str]) -> dict[str, list[dict[str, Any]]]:
    """TensorQuantOverrides for QNN: each of ``wide_nodes``' activation inputs and outputs in 16 bits;
    LayerNormalization's scale and bias unsigned and asymmetric, the only way HTP takes them (with
    symmetric int8 ones it refuses the node: error 3110 from QNN's op validation)."""
    from onnxruntime.quantization import QuantType

    constants = {t.name for t in proto.graph.initializer}
    tensors: dict[str, list[dict[str, Any]]] = {}
    for node in proto.graph.node:
        if node.op_type == "LayerNormalization":
            for name in node.input[1:]:
                if name in constants:
                    tensors[name] = [{"quant_type": QuantType.QUInt8, "symmetric": False}]
        if node.name in wide_nodes:
            for name in (*node.input, *node.output):
                if name and name not in constants:
                    tensors[name] = [{"quant_type": QuantType.QUInt16}]
    return tensors
