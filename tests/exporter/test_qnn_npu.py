"""Snapdragon NPU targets on QNN's HTP backend, which simulates the NPU on x86 hosts: export compiles
for it, validation measures coverage and numerics on it. Real QNN sessions throughout (the
onnxruntime-qnn plugin that `make test` installs); tiny models and few samples, the simulator is slow."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import edgeport
from edgeport.cli import cli
from edgeport.device_profiles import check_profile, load_profile
from edgeport.errors import UsageError
from edgeport.passes.fidelity import FidelityTarget
from edgeport.passes.finite_masks import MASK_FILL, finite_mask_fills
from edgeport.passes.quantize_static import StaticInt8Config
from edgeport.runtimes import ep_plugins
from edgeport.runtimes.session import create_session, run_session
from tests.conftest import digits_paths, npz_file

QNN = "QNNExecutionProvider"
PHONE = "snapdragon-8-gen3-htp"
PC = "snapdragon-x-elite-htp"

qnn_installed = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_qnn") is None,
                                   reason="onnxruntime-qnn is not installed: pip install 'edgeport[qnn]' (make test installs it)")


def _export(out, *args):
    paths = digits_paths()
    return CliRunner().invoke(cli, ["export", "examples.digits.model:trained_digits_cnn", "--input", "image:batchx1x8x8",
                                    "--calib", str(paths["calib"]), "--eval", str(paths["test"]), "-o", str(out), *map(str, args)])


@pytest.fixture(scope="module")
def digits_npu(tmp_path_factory):
    from edgeport.runtimes import hostcpu
    from tests.conftest import CI_RUNNER_CPU

    with pytest.MonkeyPatch.context() as patch:  # an x86 CI runner, where QNN's HTP is the simulator
        patch.setattr("edgeport.runtimes.measure.host_cpu", lambda: hostcpu.HostCpu(*CI_RUNNER_CPU))
        out = tmp_path_factory.mktemp("digits-htp") / "out"
        result = _export(out, "--profile", PHONE, "--runs", "3", "--json")
    return out, result


def _det_model(path):
    """Conv -> Relu -> Reshape -> Det: QNN has no Det."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["m"], name="reshape"), helper.make_node("Det", ["m"], ["y"], name="determinant")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
                              [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w"),
                               numpy_helper.from_array(np.zeros(4, np.float32), "b"), numpy_helper.from_array(np.array([-1, 3, 3], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@qnn_installed
def test_digits_export_runs_whole_on_htp_with_context_binary(digits_npu):
    out, result = digits_npu
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["fix_shapes"]["metrics"]["fixed"] == {"image": [1, 1, 8, 8]}  # the profile's batch, fixed for the NPU
    search = steps["quantize_search"]["metrics"]
    assert search["fidelity"]["met"] and search["fidelity"]["judged_on"].startswith("QNN's HTP")
    assert search["fallback"].startswith("16-bit activations") and search["float_mac_share"] == 0.0
    profile = report["validation"]["profiles"][0]
    assert profile["verdict"] == "pass" and profile["providers"]["used"] == [QNN]
    assert profile["coverage"]["preferred_share"] == 1.0 and profile["coverage"]["by_provider"] == {QNN: profile["coverage"]["nodes"]}
    assert profile["measurement"]["compiled_context"]["context_binary_bytes"] > 10_000
    assert "simulator" in profile and profile["measurement"]["runs"] <= 3
    latency = next(b for b in profile["budgets"] if b["name"] == "latency_p95_ms")
    assert latency["basis"].startswith("estimate for target")  # never the simulator's timing
    cosine = next(b for b in profile["budgets"] if b["name"] == "parity.cosine_min")
    assert cosine["status"] == "pass" and "HTP simulator" in cosine["basis"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"model_ctx.onnx", "model_ctx_qnn.bin"} <= set(manifest["artifacts"])
    assert onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


@qnn_installed
def test_context_binary_reloads_and_matches_the_qdq_model_on_htp(digits_npu):
    out, _ = digits_npu
    options = {QNN: dict(load_profile(PHONE).runtime.provider_options)}
    compiled = onnx.load(str(out / "model_ctx.onnx"))
    assert [n.op_type for n in compiled.graph.node] == ["EPContext"]
    qdq = create_session(out / "model.onnx", [QNN], provider_options=options, cpu_fallback=False)
    context = create_session(out / "model_ctx.onnx", [QNN], provider_options=options, cpu_fallback=False)
    images = np.load(digits_paths()["test"])["image"][:4]
    for image in images:
        feed = {"image": image[None]}
        np.testing.assert_array_equal(run_session(context, feed)[0], run_session(qdq, feed)[0])


@qnn_installed
def test_unsupported_op_fails_coverage_and_is_named(tmp_path):
    model = _det_model(tmp_path / "det.onnx")
    calib = npz_file(tmp_path, "calib.npz", x=np.random.default_rng(1).standard_normal((32, 4, 3, 3)).astype(np.float32))
    result = CliRunner().invoke(cli, ["export", str(model), "--calib", str(calib), "--profile", PC, "--runs", "3", "--dim", "batch=2",
                                      "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert next(s for s in report["steps"] if s["name"] == "fix_shapes")["metrics"]["fixed"] == {"x": [2, 4, 3, 3]}  # --dim beats the profile's batch
    assert any(w.startswith(f"no QNN context binary written for {PC}: QNN could not compile") for w in report["warnings"])
    profile = report["validation"]["profiles"][0]
    coverage = next(b for b in profile["budgets"] if b["name"] == "provider_coverage_min")
    assert coverage["status"] == "fail" and coverage["measured"] < 1.0
    assert coverage["detail"].startswith("not taken: determinant (Det): Operators of type `Det` are not supported")
    assert profile["coverage"]["refused_nodes"][0] == {"node": "determinant", "op_type": "Det",
                                                       "reason": profile["coverage"]["refused_nodes"][0]["reason"]}
    assert not (tmp_path / "out" / "model_ctx.onnx").exists()  # nothing that looks compiled when QNN refused the model


@qnn_installed
def test_context_compiled_for_another_soc_fails_that_profile(digits_npu):
    out, _ = digits_npu
    result = CliRunner().invoke(cli, ["validate", str(out / "model.onnx"), "--profile", PC, "--runs", "2", "--json"])
    assert result.exit_code == 1, result.output
    check = next(b for b in json.loads(result.stdout)["profiles"][0]["budgets"] if b["name"] == "model_format")
    assert check["status"] == "fail" and "htp_arch 75 (the profile's: 73)" in check["detail"] and "soc_model 57 (the profile's: 60)" in check["detail"]
    same = CliRunner().invoke(cli, ["validate", str(out / "model.onnx"), "--profile", PHONE, "--runs", "2", "--json"])
    check = next(b for b in json.loads(same.stdout)["profiles"][0]["budgets"] if b["name"] == "model_format")
    assert check["status"] == "pass" and check["detail"].endswith("it loads on QNNExecutionProvider")


@qnn_installed
def test_without_qnn_installed_export_keeps_the_model_and_fails_the_format(tmp_path, monkeypatch):
    import onnxruntime as ort

    listed = ep_plugins.available_providers
    monkeypatch.setattr(ep_plugins, "available_providers", lambda runtime: [p for p in listed(runtime) if p != QNN])
    result = _export(tmp_path / "out", "--profile", PHONE, "--runs", "2", "--search-budget", "10t", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert any(w.startswith(f"no QNN context binary written for {PHONE}: QNNExecutionProvider is not installed here") for w in report["warnings"])
    search = next(s for s in report["steps"] if s["name"] == "quantize_search")["metrics"]
    assert search["fidelity"]["judged_on"] == "ONNX Runtime's CPU kernels on this host"
    budgets = {b["name"]: b for b in report["validation"]["profiles"][0]["budgets"]}
    assert budgets["model_format"]["status"] == "fail" and budgets["parity.cosine_min"]["status"] == "skipped"
    assert (tmp_path / "out" / "model.onnx").is_file() and not (tmp_path / "out" / "model_ctx.onnx").exists()
    assert QNN in ort.get_available_providers()  # only edgeport's view was faked


def test_npu_and_cpu_profiles_cannot_share_one_export(tmp_path):
    result = _export(tmp_path / "out", "--profile", PHONE, "--profile", "ci-x86-avx2")
    assert result.exit_code == 2 and "need differently quantized models" in result.output
    assert not (tmp_path / "out").exists()


@qnn_installed
def test_parity_budgets_are_judged_in_the_simulators_arithmetic(tmp_path, digits_npu, fake_host):
    fake_host()
    out, _ = digits_npu
    text = open(load_profile(PHONE).path).read().replace(f'name = "{PHONE}"', 'name = "htp-strict"')
    strict = tmp_path / "strict.toml"
    strict.write_text(text.replace("cosine_min = 0.98", "cosine_min = 0.9999999"))
    result = CliRunner().invoke(cli, ["validate", str(out / "model.onnx"), "--profile", str(strict), "--reference",
                                      str(out / "model.fp32.onnx"), "--data", str(digits_paths()["test"]), "--runs", "2", "--json"])
    assert result.exit_code == 1, result.output
    profile = json.loads(result.stdout)["profiles"][0]
    cosine = next(b for b in profile["budgets"] if b["name"] == "parity.cosine_min")
    assert cosine["status"] == "fail" and 0.99 < cosine["measured"] < 0.9999999
    assert "HTP simulator" in cosine["basis"]
    assert "at most 32 samples on the simulator" in profile["parity"]["data"]


@qnn_installed
def test_transformer_meets_the_profiles_cosine_on_htp(tmp_path):
    rng = np.random.default_rng(0)

    def tokens(count):
        ids = rng.integers(0, 1000, (count, 32)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[::3, 24:] = 0  # padded sequences: the model masks them with -inf, which HTP cannot hold
        return {"input_ids": ids, "attention_mask": mask}

    calib, evaluation = npz_file(tmp_path, "calib.npz", **tokens(48)), npz_file(tmp_path, "eval.npz", **tokens(32))
    result = edgeport.export("examples.models:tiny_transformer", inputs=["input_ids:batchxsequence:int64", "attention_mask:batchxsequence:int64"],
                             calib=calib, eval=evaluation, profile=PHONE, dims={"sequence": 32}, runs=2, out_dir=tmp_path / "out")
    assert result.exit_code == 0
    search = next(s for s in result.report["steps"] if s["name"] == "quantize_search")["metrics"]
    assert search["fidelity"]["met"] and search["fidelity"]["judged_on"].startswith("QNN's HTP")
    assert search["float_mac_share"] == 0.0 and "share" in search["activations_16bit"]  # the report states the 16-bit share
    assert any("-inf became" in w for w in result.report["warnings"])
    profile = result.report["validation"]["profiles"][0]
    assert profile["coverage"]["preferred_share"] == 1.0  # LayerNorm included: its weights are quantized as HTP takes them
    assert next(b for b in profile["budgets"] if b["name"] == "parity.cosine_min")["status"] == "pass"
    assert onnx.load(str(tmp_path / "out" / "model.onnx")).graph.input[0].type.tensor_type.shape.dim[1].dim_value == 32


@qnn_installed
def test_sensitive_groups_get_16_bit_activations_not_float(tmp_path, monkeypatch):
    """All-int8 scores cosine 0.99968 on HTP; the target asks 0.9998: the search widens activations
    to 16 bits (W8A16) in the NPU's own arithmetic, never reverting a node to float (the CPU there)."""
    monkeypatch.setattr("edgeport.passes.quantize_search.NPU_TRIAL_S", 1e9)  # trials on the simulator, however slow this host
    paths = digits_paths()
    result = edgeport.export("examples.digits.model:trained_digits_cnn", inputs=["image:batchx1x8x8"], calib=paths["calib"], eval=paths["test"],
                             profile=PHONE, runs=2, out_dir=tmp_path / "out", fidelity=FidelityTarget(min_cosine=0.9998),
                             max_fallback=1.0, search_budget="30t")
    search = next(s for s in result.report["steps"] if s["name"] == "quantize_search")["metrics"]
    assert search["improvements"]["trials_scored_on"].startswith("QNN's HTP")
    assert not search["improvements"]["all_int8_on_npu"]["met"]
    assert search["fidelity"]["met"], search["fidelity"]["reason"]
    assert 0 < search["activations_16bit"]["share"] < 1 and search["float_mac_share"] == 0.0
    assert search["improvements"]["w8a16_compile_check"]["compiles"]
    assert result.exit_code == 0
    assert result.report["validation"]["profiles"][0]["coverage"]["preferred_share"] == 1.0


@qnn_installed
def test_json_output_stays_clean_of_the_qnn_librarys_banner(digits_npu):
    """QNN's library prints '# LIBNATIVE: ...' on file descriptor 1 when it loads: a fresh process,
    so the library loads during this run, must still print nothing but the JSON report."""
    out, _ = digits_npu
    done = subprocess.run([sys.executable, "-c", "from edgeport.cli import main; main()", "validate", str(out / "model.onnx"),
                           "--profile", PHONE, "--reference", str(out / "model.fp32.onnx"), "--runs", "2", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr[-500:]
    report = json.loads(done.stdout)
    assert report["profiles"][0]["providers"]["used"] == [QNN]


@qnn_installed
def test_plugin_provider_is_listed_once_registered():
    import onnxruntime as ort

    assert QNN in ep_plugins.available_providers(ort)
    assert ep_plugins.simulated(QNN, {"backend_type": "htp"}, "x86_64") and not ep_plugins.simulated(QNN, {}, "arm64")


def test_builtin_snapdragon_profiles_state_qnns_rules():
    for name in (PHONE, PC):
        profile = load_profile(name)
        assert profile.runtime.execution_providers == (QNN,) and not profile.runtime.allow_cpu_fallback
        assert profile.runtime.fixed_shapes and profile.runtime.model_format == "qnn-context"
        assert profile.runtime.provider_options["backend_type"] == "htp" and profile.runtime.provider_options["htp_arch"] in ("73", "75")
        assert profile.runtime.quantization.weight_symmetric is True and profile.budgets.provider_coverage_min == 1.0


def test_profile_rejects_qnn_settings_without_qnn(tmp_path):
    text = open(load_profile("ci-x86-avx2").path).read()
    path = tmp_path / "bad.toml"
    path.write_text(text.replace('activation_type = "uint8"', 'activation_type = "uint16"').replace('opset_max = 21', 'opset_max = 21\nmodel_format = "qnn-context"'))
    _, problems = check_profile(path)
    assert any("runtime.model_format" in p and "QNNExecutionProvider" in p for p in problems)
    assert any("runtime.quantization.activation_type" in p and "uint16" in p for p in problems)
    with pytest.raises(UsageError, match="uint16 activations are QNN's"):
        StaticInt8Config(activation_type="uint16")


def test_mask_fills_become_finite_for_an_integer_npu():
    fill = numpy_helper.from_array(np.array([-np.inf, 0.5, np.finfo(np.float32).min], np.float32), "fill")
    floor = numpy_helper.from_array(np.array(-np.inf, np.float32), "floor")  # a Clip bound: -inf means "no bound", keep it
    constant = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(-np.inf, np.float32), "v"))
    nodes = [constant, helper.make_node("Add", ["x", "fill"], ["a"]), helper.make_node("Where", ["cond", "c", "a"], ["w"]),
             helper.make_node("Clip", ["w", "floor"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [fill, floor])
    model = helper.make_model(graph)
    assert finite_mask_fills(model) == 2
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), [MASK_FILL, 0.5, MASK_FILL])
    assert float(numpy_helper.to_array(model.graph.node[0].attribute[0].t)) == MASK_FILL
    assert float(numpy_helper.to_array(model.graph.initializer[1])) == -np.inf
    assert finite_mask_fills(model) == 0


def test_refusal_log_is_parsed_into_nodes_and_reasons():
    log = ("2026-11-24 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation FAILED for 1 nodes in OrtNodeUnit (Det) :\n"
           "\tOperator type: Det Node name: determinant Node index: 3\n"
           "\tREASON : Operators of type `Det` are not supported by QNN EP.\n"
           "2026-11-24 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation FAILED for 1 nodes in OrtNodeUnit (DequantizeLinear) :\n"
           "\tOperator type: DequantizeLinear Node name: y_dq Node index: 4\n"
           "\tREASON : QNN EP is configured to not take DQ nodes that generate a graph output.\n")
    found = ep_plugins.refused_nodes(log + log)  # each GetCapability pass logs again: one entry per node
    assert [(f["node"], f["op_type"]) for f in found] == [("determinant", "Det"), ("y_dq", "DequantizeLinear")]
    assert found[0]["reason"].startswith("Operators of type `Det`")
