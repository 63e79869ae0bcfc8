"""A second real execution provider: OpenVINO (onnxruntime-openvino). `make test` runs this file
in .venv-openvino, where that build replaces onnxruntime; elsewhere it is skipped."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeport

pytestmark = pytest.mark.skipif(
    "OpenVINOExecutionProvider" not in ort.get_available_providers(), reason="onnxruntime-openvino is not installed here"
)


def _conv_net(path):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.2, "w1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((10, 16)).astype(np.float32) * 0.2, "w2"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32) * 0.1, "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _profile(tmp_path, providers: str, fallback: bool = True):
    text = open(edgeport.load_profile("openvino-cpu").path).read()
    text = text.replace('execution_providers = ["OpenVINOExecutionProvider", "CPUExecutionProvider"]', f"execution_providers = {providers}")
    text = text.replace("allow_cpu_fallback = true", f"allow_cpu_fallback = {'true' if fallback else 'false'}")
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_openvino_profile_runs_on_openvino_with_node_coverage(tmp_path, fake_host):
    fake_host()  # the profile's CPU shape, so on-target depends on the provider alone
    model = _conv_net(tmp_path / "m.onnx")
    verdict = edgeport.validate(model, profile="openvino-cpu", reference=model, runs=20).verdicts[0]
    assert verdict.on_target
    assert verdict.details["providers"]["used"][0] == "OpenVINOExecutionProvider"
    assert verdict.details["measurement"]["providers_used"][0] == "OpenVINOExecutionProvider"
    coverage = verdict.details["coverage"]
    assert coverage["source"] == "onnxruntime profiler"
    assert coverage["by_provider"].get("OpenVINOExecutionProvider", 0) >= 1
    assert coverage["preferred_share"] > 0.5
    # OpenVINO's kernels against ORT's CPU kernels on the same fp32 graph.
    assert verdict.details["parity"]["cosine_mean"] > 0.999
    judged = {r.name: r.status for r in verdict.results}  # latency is this host's, not the test's, to judge
    assert judged["provider_coverage_min"] == "pass" and judged["parity.cosine_min"] == "pass"


def test_missing_provider_falls_back_when_allowed(tmp_path):
    model = _conv_net(tmp_path / "m.onnx")
    profile = _profile(tmp_path, '["CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"]')
    verdict = edgeport.validate(model, profile=profile, runs=5).verdicts[0]
    assert verdict.details["providers"]["missing_here"] == ["CUDAExecutionProvider"]
    assert verdict.details["providers"]["used"] == ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    assert not verdict.on_target
    assert "allows CPU fallback" in verdict.details["providers"]["note"]


def test_missing_provider_without_fallback_runs_nothing(tmp_path):
    model = _conv_net(tmp_path / "m.onnx")
    profile = _profile(tmp_path, '["CUDAExecutionProvider", "OpenVINOExecutionProvider"]', fallback=False)
    verdict = edgeport.validate(model, profile=profile, runs=5).verdicts[0]
    assert verdict.details["providers"]["used"] == []
    assert next(r for r in verdict.results if r.name == "peak_memory_mb").status == "skipped"


def test_session_on_openvino_then_cpu_order(tmp_path):
    from edgeport.runtimes.session import create_session

    model = _conv_net(tmp_path / "m.onnx")
    session = create_session(model, ["OpenVINOExecutionProvider", "CPUExecutionProvider"])
    assert session.get_providers()[0] == "OpenVINOExecutionProvider"
    with pytest.raises(edgeport.EdgeportError, match="not available in this onnxruntime build"):
        create_session(model, ["TensorrtExecutionProvider"])


def test_forbidden_fallback_is_enforced_not_assumed(tmp_path):
    """With fallback forbidden, ORT's silent CPU fallback is switched off: OpenVINO must take the
    whole graph, which it does for this convnet."""
    model = _conv_net(tmp_path / "m.onnx")
    profile = _profile(tmp_path, '["OpenVINOExecutionProvider"]', fallback=False)
    verdict = edgeport.validate(model, profile=profile, runs=5).verdicts[0]
    assert verdict.details["measurement"]["providers_used"][0] == "OpenVINOExecutionProvider"
    assert not any(r.name == "runs_without_cpu_fallback" for r in verdict.results)


def _partly_supported(path):
    """Relu -> Unique: OpenVINO's provider takes the Relu but not Unique."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Unique", ["r"], ["y"])], "partly",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_node_coverage_splits_across_providers(tmp_path):
    model = _partly_supported(tmp_path / "partly.onnx")
    verdict = edgeport.validate(model, profile="openvino-cpu", runs=5).verdicts[0]
    coverage = verdict.details["coverage"]
    assert coverage["by_provider"].get("CPUExecutionProvider", 0) >= 1  # Unique fell back to CPU
    assert 0 < coverage["preferred_share"] < 1
    assert "Unique" in coverage["ops_not_on_preferred"]


def test_coverage_counts_the_nodes_inside_a_compiled_partition(tmp_path):
    """Six elementwise nodes go to OpenVINO as one compiled partition (one profiler event); Unique
    runs on CPU. Counting events would say 1 of 2; the model's nodes say 6 of 7."""
    ops = ["Relu", "Sigmoid", "Relu", "Tanh", "Relu", "Sigmoid"]
    names = ["x"] + [f"t{i}" for i in range(len(ops))]
    nodes = [helper.make_node(op, [names[i]], [names[i + 1]]) for i, op in enumerate(ops)]
    nodes.append(helper.make_node("Unique", [names[-1]], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "chain.onnx"))
    coverage = edgeport.validate(tmp_path / "chain.onnx", profile="openvino-cpu", runs=5).verdicts[0].details["coverage"]
    assert coverage["nodes"] == 7
    assert coverage["by_provider"] == {"OpenVINOExecutionProvider": 6, "CPUExecutionProvider": 1}
    assert coverage["compiled_partitions"] == {"OpenVINOExecutionProvider": 1}
    assert coverage["preferred_share"] == round(6 / 7, 4)
    assert coverage["ops_not_on_preferred"] == {"Unique": 1}


def test_forbidden_fallback_fails_when_openvino_cannot_take_every_node(tmp_path):
    model = _partly_supported(tmp_path / "partly.onnx")
    profile = _profile(tmp_path, '["OpenVINOExecutionProvider"]', fallback=False)
    verdict = edgeport.validate(model, profile=profile, runs=5).verdicts[0]
    refused = next(r for r in verdict.results if r.name == "runs_without_cpu_fallback")
    assert refused.status == "fail" and "CPU fallback is forbidden" in refused.detail
    assert verdict.verdict == "fail"
