import json
import shutil

import numpy as np
import onnxruntime as ort
from click.testing import CliRunner

from edgeport.artifacts import OnnxArtifact
from edgeport.cli import cli
from edgeport.passes import OrtFormatConfig, PassContext, to_ort_format
from tests.conftest import digits_paths


def test_ort_format_loads_and_matches(tmp_path, digits_onnx):
    ctx = PassContext(work_dir=tmp_path)
    artifact = to_ort_format(OnnxArtifact.from_file(digits_onnx), OrtFormatConfig(), ctx=ctx)
    assert artifact.path.suffix == ".ort" and artifact.files() == [artifact.path]
    assert ctx.records[-1].metrics["parity_vs_onnx"]["max_abs_diff"] < 1e-5
    reread = OnnxArtifact.from_file(artifact.path)  # specs through an ORT session
    assert reread.inputs[0].name == "image" and reread.inputs[0].shape[1:] == (1, 8, 8)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    a = ort.InferenceSession(str(artifact.path)).run(None, {"image": x})[0]
    b = ort.InferenceSession(str(digits_onnx)).run(None, {"image": x})[0]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_mobile_profile_needs_the_ort_file_and_export_writes_it(tmp_path, digits_onnx):
    lone = tmp_path / "lone" / "model.onnx"
    lone.parent.mkdir()
    shutil.copy(digits_onnx, lone)
    runner = CliRunner()
    result = runner.invoke(cli, ["validate", str(lone), "--profile", "android-nnapi", "--runs", "5", "--json"])
    assert result.exit_code == 1
    budgets = {b["name"]: b for b in json.loads(result.stdout)["profiles"][0]["budgets"]}
    assert budgets["model_format"]["status"] == "fail" and "ORT format" in budgets["model_format"]["detail"]

    out = tmp_path / "out"
    exported = runner.invoke(cli, ["export", "examples.digits.model:trained_digits_cnn", "--input", "image:batchx1x8x8",
                                   "--calib", str(digits_paths()["calib"]), "--profile", "android-nnapi", "--runs", "5", "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    assert (out / "model.ort").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "model.ort" in manifest["artifacts"] and manifest["pipeline"][-1]["pass"] == "OrtFormatConfig"
    on_ort = runner.invoke(cli, ["validate", str(out / "model.ort"), "--profile", "android-nnapi", "--runs", "5", "--json"])
    assert on_ort.exit_code == 0, on_ort.output
    profile = json.loads(on_ort.stdout)["profiles"][0]
    assert profile["estimate"]["latency_ms"] > 0  # the graph read from model.onnx beside it
