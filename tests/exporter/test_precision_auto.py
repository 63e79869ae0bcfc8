"""--precision auto: int8 only where the profile's target runs int8 faster than fp32."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import edgeport
from edgeport.errors import UsageError
from tests.conftest import digits_paths

DIGITS = "examples.digits.model:trained_digits_cnn"
INPUTS = ["image:batchx1x8x8"]


def _measured_profile(tmp_path: Path, speedup: float, size_mb: float | None = None) -> Path:
    """ci-x86-avx2 as if calibrated on a target where int8 runs at ``speedup`` x fp32's speed."""
    text = Path(edgeport.load_profile("ci-x86-avx2").path).read_text()
    text = text.split("\n[measured]")[0]  # its own measured rates give way to the ones this test states
    if size_mb is not None:
        text = text.replace("model_size_mb = 100", f"model_size_mb = {size_mb}")
    rates = ", ".join(f"{c}_fp32 = 10.0, {c}_int8 = {10.0 * speedup}" for c in ("conv", "depthwise", "matmul", "recurrent", "elementwise"))
    text += (f"\n[measured]\nthreads = 2\nbandwidth_gbs = 10.0\nnode_overhead_us = 1.0\nsource = \"test\"\n"
             f"gops = {{ {rates} }}\n"
             f"int8_speedup = {{ conv = {speedup}, depthwise = {speedup}, matmul = {speedup}, elementwise = {speedup} }}\n")
    path = tmp_path / f"measured-{speedup}-{size_mb}.toml"
    path.write_text(text)
    return path


def _quantized(model: Path) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger")
               or n.op_type == "DequantizeLinear" for n in onnx.load(str(model)).graph.node)


def test_where_int8_does_not_pay_auto_ships_fp32_and_says_why(tmp_path):
    result = edgeport.export(DIGITS, inputs=INPUTS, calib=digits_paths()["calib"], profile=_measured_profile(tmp_path, 1.0),
                             precision="auto", runs=5, out_dir=tmp_path / "out")
    choice = result.report["precision"]
    assert choice["chosen"] == "fp32" and choice["int8_speedup"] == 1.0 and "does not pay" in choice["reason"]
    assert "measured on the target" in choice["basis"]
    assert not _quantized(result.out_dir / "model.onnx")
    assert "precision: **fp32** (auto: int8 does not pay" in (result.out_dir / "report.md").read_text()


def test_where_int8_pays_auto_quantizes(tmp_path):
    result = edgeport.export(DIGITS, inputs=INPUTS, calib=digits_paths()["calib"], profile=_measured_profile(tmp_path, 2.0),
                             precision="auto", runs=5, out_dir=tmp_path / "out")
    assert result.report["precision"]["chosen"] == "int8" and _quantized(result.out_dir / "model.onnx")


def test_a_size_budget_fp32_misses_takes_dynamic_int8_for_matmuls_not_for_convs(tmp_path):
    import numpy as np

    conv = edgeport.export(DIGITS, inputs=INPUTS, calib=digits_paths()["calib"], profile=_measured_profile(tmp_path, 1.0, size_mb=0.2),
                           precision="auto", runs=5, out_dir=tmp_path / "cnn")
    # ORT runs dynamic int8 convolutions (ConvInteger) slowly: the CNN stays fp32, and the report says the budget is missed
    assert conv.report["precision"]["chosen"] == "fp32" and "misses the 0.2 MB size budget" in conv.report["precision"]["reason"]
    tokens = tmp_path / "tokens.npz"
    rng = np.random.default_rng(0)
    np.savez(tokens, input_ids=rng.integers(0, 1000, (8, 16)).astype(np.int64), attention_mask=np.ones((8, 16), np.int64))
    transformer = edgeport.export("examples.models:tiny_transformer", inputs=["input_ids:batchxsequence:int64", "attention_mask:batchxsequence:int64"],
                                  calib=tokens, profile=_measured_profile(tmp_path, 1.0, size_mb=0.2), precision="auto", runs=5,
                                  out_dir=tmp_path / "tx")
    assert transformer.report["precision"]["chosen"] == "dynamic-int8" and "size budget" in transformer.report["precision"]["reason"]


def test_the_speed_up_times_each_op_class_at_its_own_rates(tmp_path):
    """conv 2x faster in int8, depthwise 2x slower, equal MACs: int8 takes 0.55x of fp32's speed,
    not the 0.8x a MAC-weighted average of speed-ups gives."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from edgeport.artifacts import OnnxArtifact
    from edgeport.precision_choice import target_int8_speedup
    from edgeport.specs import TensorSpec

    # 1x1 conv 8->8 and 3x3 depthwise on 8 channels... sized so both have 8*8*8*64 MACs
    conv_w = helper.make_tensor("cw", TensorProto.FLOAT, [72, 8, 1, 1], np.ones(72 * 8, np.float32).tolist())
    dw_w = helper.make_tensor("dw", TensorProto.FLOAT, [72, 1, 3, 3], np.ones(72 * 9, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("Conv", ["x", "cw"], ["c"]), helper.make_node("Conv", ["c", "dw"], ["y"], group=72, pads=[1, 1, 1, 1])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [conv_w, dw_w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    text = _measured_profile(tmp_path, 1.0).read_text().replace("conv_int8 = 10.0", "conv_int8 = 20.0").replace("depthwise_int8 = 10.0", "depthwise_int8 = 5.0")
    profile_path = tmp_path / "mixed.toml"
    profile_path.write_text(text)
    speed, basis = target_int8_speedup(edgeport.load_profile(profile_path), OnnxArtifact.from_file(path), [TensorSpec("x", (1, 8, 8, 8))])
    # MACs: conv 72*8*64 = 36864, depthwise 72*9*64 = 41472 -> fp32 time (36864 + 41472) / 10, int8 36864/20 + 41472/5
    expected = (36864 + 41472) / 10 / (36864 / 20 + 41472 / 5)
    assert speed == pytest.approx(expected, abs=1e-3) and "class by class" in basis


def test_asking_for_int8_where_it_does_not_pay_is_not_silent(tmp_path):
    result = edgeport.export(DIGITS, inputs=INPUTS, calib=digits_paths()["calib"], profile=_measured_profile(tmp_path, 1.0),
                             precision="int8", search=False, runs=5, out_dir=tmp_path / "out")
    assert any("--precision auto would ship fp32" in w for w in result.report["warnings"])


def test_with_several_profiles_int8_ships_only_where_it_pays_on_all(tmp_path):
    result = edgeport.export(DIGITS, inputs=INPUTS, calib=digits_paths()["calib"], precision="auto", runs=5, out_dir=tmp_path / "out",
                             profile=[_measured_profile(tmp_path, 2.0), _measured_profile(tmp_path, 1.0)])
    choice = result.report["precision"]
    assert choice["chosen"] == "fp32" and choice["int8_speedup"] == 1.0 and "measured-1.0" not in choice["reason"]
    assert choice["basis"].count("ci-x86-avx2") == 2  # each profile's figure is named


def test_auto_needs_a_profile(tmp_path):
    with pytest.raises(UsageError, match="needs a device profile"):
        edgeport.export(DIGITS, inputs=INPUTS, precision="auto", out_dir=tmp_path / "out")
