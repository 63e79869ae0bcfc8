"""MACs per node: shape inference fixes what it can for the feed's shapes, a real run measures the
rest, and both give the counts a run alone gives."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeport.passes.int8_eval import run_exposing, static_shapes
from edgeport.passes.sensitivity import node_mac_counts


def _model() -> onnx.ModelProto:
    """Conv (dynamic batch) -> Reshape by a constant shape -> MatMul; and a MatMul whose left operand
    has a data-dependent length (NonZero), which inference cannot fix."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0, 8, -1], np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((36, 5)).astype(np.float32), "m"),
             numpy_helper.from_array(rng.standard_normal((1, 4)).astype(np.float32), "k")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[0, 0, 0, 0]),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
             helper.make_node("MatMul", ["r", "m"], ["y"], name="matmul"),
             helper.make_node("NonZero", ["mask"], ["nz"], name="nonzero"),
             helper.make_node("Cast", ["nz"], ["nzf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["nzf"], ["t"], name="transpose"),
             helper.make_node("MatMul", ["t", "k"], ["z"], name="data_dependent")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8]),
                                           helper.make_tensor_value_info("mask", TensorProto.BOOL, [6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_inference_fixes_static_shapes_and_leaves_data_dependent_ones_out():
    model = _model()
    feed = {"x": np.zeros((2, 3, 8, 8), np.float32), "mask": np.array([1, 0, 1, 1, 0, 0], bool)}
    shapes = static_shapes(model, feed, ["x", "c", "r", "t"])
    ran = run_exposing(model, ["c", "r", "t"], [feed])
    assert shapes["x"] == (2, 3, 8, 8)  # a graph input takes the feed's shape
    assert shapes["c"] == ran["c"][0].shape == (2, 8, 6, 6)
    assert shapes["r"] == ran["r"][0].shape == (2, 8, 36)  # through the constant shape of the Reshape
    assert "t" not in shapes  # NonZero's length is known only by running
    assert len(model.graph.initializer) == 4  # the caller's model keeps its weights


def test_mac_counts_match_the_shapes_of_a_real_run():
    model = _model()
    feed = {"x": np.zeros((2, 3, 8, 8), np.float32), "mask": np.array([1, 0, 1, 1, 0, 0], bool)}
    counts = node_mac_counts(model, feed)
    assert counts["conv"] == 2 * 8 * 6 * 6 * 3 * 3 * 3
    assert counts["matmul"] == 2 * 8 * 36 * 5
    assert counts["data_dependent"] == 3 * 1 * 4  # three nonzero entries, measured by the run


def test_shapes_the_file_declares_do_not_override_the_feed():
    """An export that made only the input's batch dynamic still declares batch 1 on its outputs."""
    model = _model()
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 5]))
    model.graph.value_info.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 8, 6, 6]))
    feed = {"x": np.zeros((2, 3, 8, 8), np.float32), "mask": np.array([1, 0, 1, 1, 0, 0], bool)}
    assert static_shapes(model, feed, ["c", "y"]) == {"c": (2, 8, 6, 6), "y": (2, 8, 5)}
    assert node_mac_counts(model, feed)["conv"] == 2 * 8 * 6 * 6 * 3 * 3 * 3
