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
    if size_mb is not None:
        text = text.replace("model_size_mb = 100", f"model_size_mb = {size_mb}")
    rates = ", ".join(f"{c}_{p} = 10.0" for c in ("conv", "depthwise", "matmul", "elementwise") for p in ("fp32", "int8"))
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


def test_a_size_budget_fp32_misses_takes_int8_weights(tmp_path):
    result = edgeport.export(DIGITS, inputs=INPUTS, profile=_measured_profile(tmp_path, 1.0, size_mb=0.2), precision="auto", runs=5,
                             out_dir=tmp_path / "out")
    assert result.report["precision"]["chosen"] == "dynamic-int8" and "size budget" in result.report["precision"]["reason"]


def test_asking_for_int8_where_it_does_not_pay_is_not_silent(tmp_path):
    result = edgeport.export(DIGITS, inputs=INPUTS, calib=digits_paths()["calib"], profile=_measured_profile(tmp_path, 1.0),
                             precision="int8", search=False, runs=5, out_dir=tmp_path / "out")
    assert any("--precision auto would ship fp32" in w for w in result.report["warnings"])


def test_auto_needs_a_profile(tmp_path):
    with pytest.raises(UsageError, match="needs a device profile"):
        edgeport.export(DIGITS, inputs=INPUTS, precision="auto", out_dir=tmp_path / "out")
