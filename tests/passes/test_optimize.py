import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeport.artifacts import OnnxArtifact
from edgeport.errors import UsageError
from edgeport.passes import GraphOptimizeConfig, PassContext, optimize_graph


def _conv_bn_graph(path):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"], name="bn"),
        helper.make_node("Identity", ["b"], ["i"], name="identity"),
        helper.make_node("Relu", ["i"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "convbn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return OnnxArtifact.from_file(path)


def test_basic_level_folds_batchnorm_and_keeps_outputs(tmp_path):
    source = _conv_bn_graph(tmp_path / "in.onnx")
    ctx = PassContext(work_dir=tmp_path)
    out = optimize_graph(source, GraphOptimizeConfig(), ctx=ctx)
    metrics = ctx.records[-1].metrics
    assert metrics["nodes_before"] == 4 and metrics["nodes_after"] == 2  # Conv(+BN folded) and Relu
    assert metrics["parity_vs_input"]["max_abs_diff"] < 1e-4
    ops = [n.op_type for n in onnx.load(str(out.path)).graph.node]
    assert "BatchNormalization" not in ops and "Identity" not in ops
    # Still a plain ONNX graph: no host-specific layout ops (NCHWc and friends) were saved.
    assert all(n.domain in ("", "ai.onnx") for n in onnx.load(str(out.path)).graph.node)


def test_host_specific_levels_are_refused():
    with pytest.raises(UsageError, match="not portable"):
        GraphOptimizeConfig(level="all")
