"""The isolated benchmark worker: real ORT sessions in a fresh process."""

import pytest
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeport.runtimes.benchmark import measure
from edgeport.specs import TensorSpec
from tests.conftest import make_linear_onnx


def _activation_model(path, columns: int):
    """x (batch x 1024) -> Expand to (batch x 1024 x columns) -> ReduceSum: one large activation."""
    shape = numpy_helper.from_array(np.array([1, 1024, columns], dtype=np.int64), "shape")
    axes = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("Unsqueeze", ["x", "axes"], ["u"]), helper.make_node("Expand", ["u", "shape"], ["big"]),
         helper.make_node("ReduceSum", ["big", "axes"], ["y"], keepdims=0)],
        "activation", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1024])], [shape, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_peak_memory_grows_with_the_activation(tmp_path):
    spec = [TensorSpec("x", (1, 1024))]
    small = measure(_activation_model(tmp_path / "small.onnx", 16), ["CPUExecutionProvider"], spec, runs=5, coverage=False)
    large = measure(_activation_model(tmp_path / "large.onnx", 32768), ["CPUExecutionProvider"], spec, runs=5, coverage=False)
    # 1024 x 32768 floats = 128 MiB held at once by the large model; the small one holds 64 KiB.
    grown = large["memory"]["peak_above_baseline_mb"] - small["memory"]["peak_above_baseline_mb"]
    assert grown > 100, (small["memory"], large["memory"])


def test_latency_statistics_and_coverage(tmp_path):
    path = make_linear_onnx(tmp_path / "linear.onnx")
    result = measure(path, ["CPUExecutionProvider"], [TensorSpec("x", (4, 4))], runs=30, threads=1)
    lat = result["latency_ms"]
    assert result["runs"] == 30
    runs = result["latency_ms_runs"]  # every timed run, which the report's latency chart draws: the percentiles are theirs
    assert len(runs) == 30 and lat["p50"] == pytest.approx(float(np.percentile(runs, 50)), abs=1e-3)
    assert lat["p95"] == pytest.approx(float(np.percentile(runs, 95)), abs=1e-3) and lat["min"] == pytest.approx(min(runs), abs=1e-3)
    assert lat["cv"] >= 0 and result["session_load_ms"] > 0 and result["cold_first_inference_ms"] > 0
    assert result["coverage"]["by_provider"] == {"CPUExecutionProvider": result["coverage"]["nodes"]}
    assert result["coverage"]["preferred_share"] == 1.0


def test_coverage_counts_every_model_node_once_on_cpu(tmp_path):
    """Unnamed nodes, a Constant (ORT makes it an initializer) and a node ORT would fuse at full
    optimization: the coverage session counts the model's own nodes, 4 of 4 on CPU."""
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["bias"], value=numpy_helper.from_array(np.ones(4, np.float32))),
         helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "bias"], ["a"]),
         helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Identity", ["r"], ["y"])],
        "fusable", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "fusable.onnx"))
    coverage = measure(tmp_path / "fusable.onnx", ["CPUExecutionProvider"], [TensorSpec("x", (2, 4))], runs=3)["coverage"]
    assert coverage["nodes"] == 4
    assert coverage["by_provider"] == {"CPUExecutionProvider": 4}
    assert coverage["preferred_share"] == 1.0 and coverage["compiled_partitions"] == {}


def test_coverage_of_inlined_functions_and_colliding_names_stays_whole_on_cpu(tmp_path):
    """A model-local function runs as its inlined nodes, and an unnamed Add at index 1 is named
    'Add_1' by ORT, like the node explicitly named so: neither may cost CPU coverage."""
    function = helper.make_function("local", "act", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Neg", ["r"], ["b"])],
                                    [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["p"], name="first"), helper.make_node("Add", ["p", "p"], ["q"]),
         helper.make_node("Mul", ["q", "q"], ["m"], name="Add_1"), helper.make_node("act", ["m"], ["y"], domain="local")],
        "functions", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)], functions=[function])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "functions.onnx"))
    coverage = measure(tmp_path / "functions.onnx", ["CPUExecutionProvider"], [TensorSpec("x", (2, 4))], runs=3)["coverage"]
    assert coverage["preferred_share"] == 1.0, coverage
    assert coverage["by_provider"] == {"CPUExecutionProvider": coverage["nodes"]}


def test_time_bound_stops_early(tmp_path):
    path = _activation_model(tmp_path / "m.onnx", 4096)
    result = measure(path, ["CPUExecutionProvider"], [TensorSpec("x", (1, 1024))], runs=100000, time_limit_s=0.3, coverage=False, warmup=1)
    assert 5 <= result["runs"] < 100000


def test_a_fault_in_the_measuring_code_is_internal_and_a_model_fault_is_the_users(tmp_path):
    """Every worker exception used to become exit 2, "check the model", even where our code failed."""
    import pytest

    from edgeport.errors import InternalError, ModelLoadError

    model = make_linear_onnx(tmp_path / "linear.onnx")
    with pytest.raises(InternalError):  # no timed run: the percentile code has nothing to work on
        measure(model, ["CPUExecutionProvider"], [TensorSpec("x", (2, 4))], runs=0, coverage=False)
    with pytest.raises(ModelLoadError):  # the model fails on inputs of the wrong width
        measure(model, ["CPUExecutionProvider"], [TensorSpec("x", (2, 5))], runs=3, coverage=False)
