"""Dynamic int8 and fp16 artifacts: real conversions, checked in ONNX Runtime against fp32."""

import json

import onnx
import pytest
from click.testing import CliRunner

import edgeport
from edgeport.artifacts import OnnxArtifact
from edgeport.cli import cli
from edgeport.errors import UsageError
from edgeport.passes import DynamicInt8Config, Fp16Config, PassContext, convert_fp16, quantize_dynamic_int8
from tests.conftest import digits_paths


@pytest.fixture(scope="module")
def transformer_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("tx")
    edgeport.export("examples.models:tiny_transformer", inputs=["input_ids:batchxsequence:int64", "attention_mask:batchxsequence:int64"],
                    precision="fp32", out_dir=out)
    return out / "model.onnx"


def test_dynamic_int8_needs_no_calibration_and_keeps_a_transformer_close(tmp_path, transformer_onnx):
    ctx = PassContext(work_dir=tmp_path)
    artifact = quantize_dynamic_int8(OnnxArtifact.from_file(transformer_onnx), DynamicInt8Config(), ctx=ctx)
    ops = {n.op_type for n in onnx.load(str(artifact.path)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}
    metrics = ctx.records[-1].metrics
    assert metrics["size_ratio"] < 0.5
    assert metrics["parity_vs_fp32"]["cosine_mean"] > 0.98
    assert "reduce_range" in metrics["decisions"]


def test_fp16_keeps_float32_io_and_halves_the_weights(tmp_path, digits_onnx):
    ctx = PassContext(work_dir=tmp_path)
    artifact = convert_fp16(OnnxArtifact.from_file(digits_onnx), Fp16Config(), ctx=ctx)
    assert artifact.inputs[0].dtype == "float32" and artifact.outputs[0].dtype == "float32"
    metrics = ctx.records[-1].metrics
    assert 0.45 < metrics["size_ratio"] < 0.6
    assert metrics["parity_vs_fp32"]["cosine_min"] > 0.999


def test_cli_precision_choices(tmp_path):
    runner = CliRunner()
    base = ["export", "examples.digits.model:trained_digits_cnn", "--input", "image:batchx1x8x8", "--eval", str(digits_paths()["test"])]
    dynamic = runner.invoke(cli, [*base, "--precision", "dynamic-int8", "-o", str(tmp_path / "d"), "--json"])
    assert dynamic.exit_code == 0, dynamic.output  # no --calib needed
    report = json.loads(dynamic.stdout)
    assert report["summary"]["precision"] == "dynamic-int8" and report["steps"][-1]["name"] == "quantize_dynamic"
    fp16 = runner.invoke(cli, [*base, "--precision", "fp16", "-o", str(tmp_path / "h"), "--json"])
    assert fp16.exit_code == 0, fp16.output
    assert json.loads(fp16.stdout)["summary"]["parity_vs_fp32"]["top1_agreement"] >= 0.99
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["manifest.json", "model.fp32.onnx", "model.onnx", "report.html", "report.json", "report.md"]


def test_unknown_precision():
    with pytest.raises(UsageError, match="precision 'int4' is unknown"):
        edgeport.export("examples.digits.model:trained_digits_cnn", inputs=["image:batchx1x8x8"], precision="int4", out_dir="unused")
