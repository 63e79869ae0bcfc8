"""ONNX files as other converters write them go through export and validate: older opsets are
upgraded (or quantized per tensor), metadata and dim names survive, artifacts pass the full
checker and declare only the opset domains they use."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgeport.cli import cli
from tests.onnx_corpus import CORPUS, branch_if, conv_gemm, point_external_data_at, write_corpus_model


def _export(model, data, out, *extra):
    return CliRunner().invoke(cli, ["export", str(model), "--calib", str(data), "-o", str(out), "--quiet", *extra])


def _check_artifact(path, metadata_key="converted_from"):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    used = {n.domain for n in model.graph.node} | {""}
    assert {o.domain for o in model.opset_import} <= used, [o.domain for o in model.opset_import]
    assert metadata_key in {p.key for p in model.metadata_props}
    return model


@pytest.mark.parametrize("opset, builder, external", CORPUS, ids=[f"{b.__name__}-opset{o}{'-external' if e else ''}" for o, b, e in CORPUS])
def test_a_converter_file_exports_to_int8_and_validates(tmp_path, opset, builder, external):
    model, data = write_corpus_model(tmp_path / "in", opset, builder, external)
    out = tmp_path / "out"
    result = _export(model, data, out)
    assert result.exit_code in (0, 1), result.output  # 1: a fidelity target missed, still a complete result
    report = json.loads((out / "report.json").read_text())
    int8 = _check_artifact(out / "model.onnx")
    _check_artifact(out / "model.fp32.onnx")
    opset_after = next(o.version for o in int8.opset_import if o.domain == "")
    upgrade = next((s for s in report["steps"] if s["name"] == "upgrade_opset"), None)
    if opset < 13:
        assert upgrade is not None and upgrade["metrics"]["upgraded"] and opset_after == 17
    else:
        assert upgrade is None and opset_after == opset
    if builder is branch_if:  # ORT's quantizer does not enter If subgraphs: the report must say the file stayed float
        assert any("no node was quantized" in w and "If subgraphs" in w for w in report["warnings"])
    else:
        assert any(n.op_type == "DequantizeLinear" for n in int8.graph.node)
    validation = CliRunner().invoke(cli, ["validate", str(out / "model.onnx"), "--profile", "ci-x86-avx2", "--runs", "3",
                                          "--reference", str(out / "model.fp32.onnx"), "--data", str(data), "-o", str(out), "--json"])
    assert validation.exit_code in (0, 1), validation.output
    verdict = json.loads(validation.stdout)
    names = {b["name"]: b for b in verdict["profiles"][0]["budgets"]}
    assert names["parity.cosine_min"]["status"] in ("pass", "fail") and "parity.non_finite_outputs_max" not in names


def test_dim_names_survive_the_upgrade(tmp_path):
    model, data = write_corpus_model(tmp_path / "in", 12, conv_gemm, False)
    assert _export(model, data, tmp_path / "out").exit_code == 0
    int8 = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert int8.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "p2o.DynamicDimension.0"


def test_when_no_upgrade_holds_int8_goes_per_tensor_and_says_so(tmp_path, monkeypatch):
    model, data = write_corpus_model(tmp_path / "in", 12, conv_gemm, False)

    def no_adapter(model, target):
        raise RuntimeError(f"No adapter for op Conv to opset {target}")  # what the converter says for an op it cannot move

    monkeypatch.setattr(onnx.version_converter, "convert_version", no_adapter)
    out = tmp_path / "out"
    result = _export(model, data, out)
    assert result.exit_code == 0, result.output
    int8 = onnx.load(str(out / "model.onnx"))
    assert next(o.version for o in int8.opset_import if o.domain == "") == 12
    dequantize = [n for n in int8.graph.node if n.op_type == "DequantizeLinear"]
    assert dequantize and not any(a.name == "axis" for n in dequantize for a in n.attribute)
    report = json.loads((out / "report.json").read_text())
    assert any("quantized per tensor" in w and "opset 12" in w for w in report["warnings"])
    upgrade = next(s for s in report["steps"] if s["name"] == "upgrade_opset")
    assert not upgrade["metrics"]["upgraded"] and "No adapter" in upgrade["metrics"]["attempts"][0]["reason"]
    # and the per-tensor file runs
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": np.load(data)["image"][:2]})[0].shape == (2, 5)


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    model, data = write_corpus_model(tmp_path / "in", 15, conv_gemm, True)
    point_external_data_at(model, "../../etc/passwd")
    result = _export(model, data, tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "outside its own folder" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_streaming_model_with_a_state_and_a_scalar_input_takes_complete_feeds(tmp_path):
    """A VAD-style file (state [2, batch, 16], scalar int64 sample rate) given a folder of .npz
    feeds used to end in 'internal error: IndexError' in the data reader."""
    from tests.onnx_corpus import write_streaming_vad

    model, feeds = write_streaming_vad(tmp_path / "in")
    out = tmp_path / "out"
    result = _export(model, feeds, out)
    assert result.exit_code in (0, 1), result.output
    report = json.loads((out / "report.json").read_text())
    search = next(s for s in report["steps"] if s["name"] == "quantize_search")["metrics"]
    assert search["fidelity"]["held_out"]["samples"] == 3  # feed by feed: 24 feeds, every 4th apart, half of those held out
    int8 = _check_artifact(out / "model.onnx")
    assert any(n.op_type == "DequantizeLinear" for n in int8.graph.node)
    validation = CliRunner().invoke(cli, ["validate", str(out / "model.onnx"), "--profile", "ci-x86-avx2", "--runs", "3",
                                          "--reference", str(out / "model.fp32.onnx"), "--data", str(feeds), "--json"])
    assert validation.exit_code in (0, 1), validation.output
    parity = json.loads(validation.stdout)["profiles"][0]["parity"]
    assert parity["samples"] == 24 and parity["cosine_min"] is not None
    # random data makes complete feeds too
    assert _export(model, "random:8", tmp_path / "random").exit_code in (0, 1)


def test_an_if_moved_above_what_its_branches_read_is_put_back():
    """ORT's quantizer sorts nodes by explicit inputs only; with a smoothing Mul in front it put an
    If above the Relu whose output the If's branches read, and the int8 file did not load."""
    from onnx import TensorProto, helper

    from edgeport.passes.qdq_graph import sort_topologically

    branch = helper.make_graph([helper.make_node("Neg", ["r"], ["out"])], "then", [], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["r"], ["out2"])], "else", [], [helper.make_tensor_value_info("out2", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=branch, else_branch=other),
             helper.make_node("Relu", ["x"], ["r"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model, full_check=True)
    assert sort_topologically(model) and [n.name for n in model.graph.node] == ["relu", "branch"]
    onnx.checker.check_model(model, full_check=True)
    assert not sort_topologically(model)  # already in order
