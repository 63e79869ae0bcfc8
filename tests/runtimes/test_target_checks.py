"""The target's yes/no conditions, on real model files."""

from onnx import TensorProto, helper, save

from edgeport.device_profiles import load_profile
from edgeport.runtimes.target_checks import opset_check


def _model(path, opsets):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Relu", ["x"], ["y"]) if any(o.domain == "" for o in opsets) else \
        helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")
    save(helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=opsets, ir_version=8), str(path))
    return path


def test_opset_is_judged_against_the_targets_range(tmp_path):
    profile = load_profile("raspberry-pi-4")  # opsets 13..21
    inside = opset_check(_model(tmp_path / "a.onnx", [helper.make_opsetid("", 17)]), profile)
    below = opset_check(_model(tmp_path / "b.onnx", [helper.make_opsetid("", 11)]), profile)
    assert (inside.status, inside.measured) == ("pass", 17)
    assert (below.status, below.measured) == ("fail", 11) and "outside the target's 13..21" in below.detail


def test_a_model_of_custom_domain_ops_only_has_no_onnx_opset_to_fail(tmp_path):
    """An EPContext or com.microsoft-only graph imports no default-domain opset: ONNX's assumed
    opset 1 would fail every target, yet there is nothing for the runtime's ONNX opsets to load."""
    result = opset_check(_model(tmp_path / "c.onnx", [helper.make_opsetid("com.microsoft", 1)]), load_profile("raspberry-pi-4"))
    assert result.status == "pass" and "no ONNX-domain opset" in result.detail
