"""Small ONNX files as other converters write them, built with onnx.helper: opsets 10 to 21,
If subgraphs, int64 token inputs, several inputs and outputs, external data, converter metadata
and odd dim names. Each comes with data that fits it."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)
BATCH = "p2o.DynamicDimension.0"  # paddle2onnx's name for a dynamic batch


def _init(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _const(name: str, values, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _value(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _images(n: int, c: int = 3, size: int = 12) -> np.ndarray:
    return RNG.standard_normal((n, c, size, size)).astype(np.float32)


def conv_gemm(opset: int) -> tuple[onnx.GraphProto, dict[str, np.ndarray]]:
    """Conv, Relu, MaxPool, Flatten, Gemm: a small image classifier."""
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "conv_gemm", [_value("image", TensorProto.FLOAT, [BATCH, 3, 12, 12])],
                              [_value("logits", TensorProto.FLOAT, [BATCH, 5])],
                              [_init("w", 8, 3, 3, 3), _init("b", 8, scale=0.1), _init("fc", 5, 8 * 6 * 6, scale=0.05), _init("fcb", 5, scale=0.1)])
    return graph, {"image": _images(24)}


def matmul_softmax_two_inputs(opset: int) -> tuple[onnx.GraphProto, dict[str, np.ndarray]]:
    """Two float inputs added, MatMul + bias, Softmax."""
    nodes = [helper.make_node("Add", ["a", "b"], ["s"], name="add_inputs"),
             helper.make_node("MatMul", ["s", "w"], ["m"], name="matmul"),
             helper.make_node("Add", ["m", "bias"], ["z"], name="bias"),
             helper.make_node("Softmax", ["z"], ["probs"], name="softmax", axis=-1 if opset >= 13 else 1)]
    graph = helper.make_graph(nodes, "two_inputs", [_value("a", TensorProto.FLOAT, ["n", 16]), _value("b", TensorProto.FLOAT, ["n", 16])],
                              [_value("probs", TensorProto.FLOAT, ["n", 6])], [_init("w", 16, 6), _init("bias", 6, scale=0.1)])
    return graph, {"a": RNG.standard_normal((24, 16)).astype(np.float32), "b": RNG.standard_normal((24, 16)).astype(np.float32)}


def branch_if(opset: int) -> tuple[onnx.GraphProto, dict[str, np.ndarray]]:
    """An If whose branches each hold a MatMul: control flow as exporters write for data-dependent paths."""
    def branch(name: str, scale: float) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_out"], name=f"{name}_matmul")], name, [],
                                 [_value(f"{name}_out", TensorProto.FLOAT, ["n", 4])], [_init(f"{name}_w", 8, 4, scale=scale)])
    reduce = helper.make_node("ReduceSum", ["x", "all_axes"], ["total"], name="total", keepdims=0) if opset >= 13 else \
        helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0)
    nodes = [reduce, helper.make_node("Greater", ["total", "zero"], ["positive"], name="positive"),
             helper.make_node("If", ["positive"], ["y"], name="branch", then_branch=branch("then", 0.3), else_branch=branch("else", 0.5))]
    inits = [_const("zero", 0.0, np.float32)] + ([_const("all_axes", [0, 1])] if opset >= 13 else [])
    graph = helper.make_graph(nodes, "branch_if", [_value("x", TensorProto.FLOAT, ["n", 8])], [_value("y", TensorProto.FLOAT, ["n", 4])], inits)
    return graph, {"x": RNG.standard_normal((24, 8)).astype(np.float32)}


def branch_reads_outer_scope(opset: int) -> tuple[onnx.GraphProto, dict[str, np.ndarray]]:
    """A MatMul in the main graph, then an If whose branches read a main-graph initializer and
    the MatMul's output from the enclosing scope, as silero-vad's files do."""
    def branch(name: str, op: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op, ["r", "shift"], [f"{name}_out"], name=f"{name}_{op.lower()}")], name, [],
                                 [_value(f"{name}_out", TensorProto.FLOAT, ["n", 6])])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("ReduceSum", ["x", "all_axes"], ["total"], name="total", keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["positive"], name="positive"),
             helper.make_node("If", ["positive"], ["y"], name="branch", then_branch=branch("then", "Add"), else_branch=branch("else", "Sub"))]
    graph = helper.make_graph(nodes, "outer_scope", [_value("x", TensorProto.FLOAT, ["n", 8])], [_value("y", TensorProto.FLOAT, ["n", 6])],
                              [_init("w", 8, 6), _init("shift", 6, scale=0.1), _const("zero", 0.0, np.float32), _const("all_axes", [0, 1])])
    return graph, {"x": RNG.standard_normal((24, 8)).astype(np.float32)}


def token_embedding(opset: int) -> tuple[onnx.GraphProto, dict[str, np.ndarray]]:
    """int64 token ids with a dynamic batch and sequence: Gather from a table, MatMul, mean over tokens."""
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["h"], name="proj"),
             helper.make_node("Tanh", ["h"], ["t"], name="tanh"),
             helper.make_node("ReduceMean", ["t"], ["pooled"], name="pool", axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "tokens", [_value("input_ids", TensorProto.INT64, ["batch", "sequence"])],
                              [_value("pooled", TensorProto.FLOAT, ["batch", 8])], [_init("table", 50, 16, scale=1.0), _init("w", 16, 8)])
    return graph, {"input_ids": RNG.integers(0, 50, (24, 10)).astype(np.int64)}


def two_heads(opset: int) -> tuple[onnx.GraphProto, dict[str, np.ndarray]]:
    """One trunk, two outputs: a class head and a regression head."""
    nodes = [helper.make_node("MatMul", ["x", "trunk"], ["h"], name="trunk"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "cls"], ["scores"], name="class_head"),
             helper.make_node("MatMul", ["r", "reg"], ["box"], name="box_head")]
    graph = helper.make_graph(nodes, "two_heads", [_value("x", TensorProto.FLOAT, ["n", 12])],
                              [_value("scores", TensorProto.FLOAT, ["n", 3]), _value("box", TensorProto.FLOAT, ["n", 4])],
                              [_init("trunk", 12, 24), _init("cls", 24, 3), _init("reg", 24, 4)])
    return graph, {"x": RNG.standard_normal((24, 12)).astype(np.float32)}


def layer_norm_mlp(opset: int) -> tuple[onnx.GraphProto, dict[str, np.ndarray]]:
    """LayerNormalization (opset 17 and later), MatMul, Relu, MatMul."""
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="norm", axis=-1),
             helper.make_node("MatMul", ["n", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "layer_norm", [_value("x", TensorProto.FLOAT, ["n", 16])], [_value("y", TensorProto.FLOAT, ["n", 16])],
                              [numpy_helper.from_array(np.ones(16, np.float32), "gamma"), numpy_helper.from_array(np.zeros(16, np.float32), "beta"),
                               _init("w1", 16, 32), _init("w2", 32, 16)])
    return graph, {"x": RNG.standard_normal((24, 16)).astype(np.float32)}


# (opset, builder, external data?) - at least ten files, opsets 10 to 21
CORPUS: list[tuple[int, Callable, bool]] = [
    (10, conv_gemm, False),
    (11, matmul_softmax_two_inputs, False),
    (11, branch_if, False),
    (12, conv_gemm, False),
    (12, token_embedding, False),
    (13, branch_if, False),
    (13, branch_reads_outer_scope, False),
    (16, branch_reads_outer_scope, True),
    (14, two_heads, False),
    (15, token_embedding, True),
    (17, layer_norm_mlp, False),
    (18, two_heads, True),
    (19, conv_gemm, False),
    (21, layer_norm_mlp, False),
]


def write_corpus_model(folder: Path, opset: int, builder: Callable, external: bool) -> tuple[Path, Path]:
    """The model file (with converter metadata, its weights in a side file when ``external``) and
    an .npz of data for it."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(f"{builder.__name__}{opset}".encode()))  # each file the same, whatever ran before
    graph, data = builder(opset)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="paddle2onnx", producer_version="1.0")
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    model.metadata_props.add(key="converted_from", value="a framework that is not torch")
    onnx.checker.check_model(model, full_check=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{builder.__name__}.opset{opset}.onnx"
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{path.name}.weights", size_threshold=128)
    else:
        onnx.save(model, str(path))
    data_path = folder / f"{builder.__name__}.opset{opset}.npz"
    np.savez(data_path, **data)
    return path, data_path


def write_streaming_vad(folder: Path, feeds: int = 24) -> tuple[Path, Path]:
    """A voice-activity-style streaming model as such files come: opset 15, a float chunk
    [batch, 64], a recurrent state [2, batch, 16] whose batch axis is 1, and a scalar int64 sample
    rate; it returns a probability and the next state. Data: a folder of .npz files, each one
    complete feed, carried from one chunk to the next as the model would run."""
    nodes = [
        helper.make_node("MatMul", ["input", "w_in"], ["x"], name="input_projection"),
        helper.make_node("Gather", ["state", "zero"], ["h_prev"], name="state_h", axis=0),
        helper.make_node("MatMul", ["h_prev", "w_rec"], ["r"], name="recurrent_projection"),
        helper.make_node("Add", ["x", "r"], ["pre"], name="add"),
        helper.make_node("Tanh", ["pre"], ["h"], name="tanh"),
        helper.make_node("Unsqueeze", ["h", "axis0"], ["h_new"], name="h_new"),
        helper.make_node("Unsqueeze", ["h_prev", "axis0"], ["h_old"], name="h_old"),
        helper.make_node("Concat", ["h_new", "h_old"], ["stateN"], name="next_state", axis=0),
        helper.make_node("Cast", ["sr"], ["sr_float"], name="sr_float", to=TensorProto.FLOAT),
        helper.make_node("Div", ["sr_float", "sr_ref"], ["sr_scale"], name="sr_scale"),
        helper.make_node("MatMul", ["h", "w_out"], ["logit"], name="head"),
        helper.make_node("Mul", ["logit", "sr_scale"], ["scaled"], name="scale"),
        helper.make_node("Sigmoid", ["scaled"], ["output"], name="probability"),
    ]
    graph = helper.make_graph(
        nodes, "streaming_vad",
        [_value("input", TensorProto.FLOAT, ["batch", 64]), _value("state", TensorProto.FLOAT, [2, "batch", 16]),
         _value("sr", TensorProto.INT64, [])],
        [_value("output", TensorProto.FLOAT, ["batch", 1]), _value("stateN", TensorProto.FLOAT, [2, "batch", 16])],
        [_init("w_in", 64, 16), _init("w_rec", 16, 16), _init("w_out", 16, 1, scale=1.0), _const("zero", 0), _const("axis0", [0]),
         _const("sr_ref", 16000.0, np.float32)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="a streaming converter")
    model.ir_version = 8
    model.metadata_props.add(key="converted_from", value="a framework that is not torch")
    onnx.checker.check_model(model, full_check=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vad.onnx"
    onnx.save(model, str(path))
    data = folder / "feeds"
    data.mkdir()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 16), np.float32)
    for i in range(feeds):
        chunk = (np.sin(np.arange(64) * (0.05 + 0.01 * i)) + 0.1 * RNG.standard_normal(64)).astype(np.float32)[None]
        feed = {"input": chunk, "state": state, "sr": np.array(16000, np.int64)}
        np.savez(data / f"feed{i:03d}.npz", **feed)
        state = session.run(None, feed)[1]
    return path, data


def point_external_data_at(path: Path, location: str) -> None:
    """Rewrite every external-data location in the file: a hostile model reading outside its folder."""
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(path))
