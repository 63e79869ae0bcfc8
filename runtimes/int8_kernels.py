"""Which nodes ONNX Runtime's CPU provider really runs on int8 kernels.

A QDQ file says what is quantized; ORT's graph transforms decide what runs in int8. DequantizeLinear
-> Conv -> QuantizeLinear becomes QLinearConv, but DQ -> Conv -> float stays a float Conv on
dequantized weights. So a float-MAC share read off the Q/DQ placement can be wrong; this reads it
off the graph ORT builds (transforms up to the extended level, which keep the node names). Some of
them depend on the CPU (where it lacks VNNI, int8 activations are moved to uint8 first), so the
answer is this host's ORT's (edgeport's default uint8 activations skip that step).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from edgeport.runtimes.graph_cost import all_nodes

# ORT CPU ops that compute MACs on int8 operands (com.microsoft ones included)
INT8_KERNEL_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "ConvInteger", "MatMulInteger",
    "DynamicQuantizeMatMul", "QLinearConvTranspose", "DynamicQuantizeLSTM", "QAttention",
})


def int8_kernel_nodes(model: onnx.ModelProto | str | Path) -> set[str]:
    """Names of the nodes that ORT's CPU provider runs as an int8 kernel, after its graph transforms
    up to the extended level (the fusions that turn Q/DQ patterns into int8 ops, before the layout
    changes of the last level, which rename nodes)."""
    import onnxruntime as ort

    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        # weights in the side file: the optimized copy is read back for its graph only
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    # inside subgraphs too: an int8 recurrent step runs inside a Scan body
    return {n.name for n in all_nodes(optimized.graph) if n.op_type in INT8_KERNEL_OPS and n.name}

