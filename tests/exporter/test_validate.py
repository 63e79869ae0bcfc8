"""edgeport validate: budgets against real measurements, verdicts, JSON/JUnit/Markdown, exit codes."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

import edgeport
from edgeport.cli import cli
from edgeport.device_profiles import load_profile
from tests.conftest import corrupt_onnx, digits_paths, make_linear_onnx, npz_file

CI_PROFILE = load_profile("ci-x86-avx2").path


def _profile(tmp_path, name="tight", **replacements):
    text = open(CI_PROFILE).read().replace('name = "ci-x86-avx2"', f'name = "{name}"')
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def digits_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits-int8")
    edgeport.export("examples.digits.model:trained_digits_cnn", inputs=["image:batchx1x8x8"], calib=digits_paths()["calib"], out_dir=out)
    return out


def _validate(*args):
    return CliRunner().invoke(cli, ["validate", *map(str, args)])


def test_tight_latency_budget_fails_with_margin_in_json_and_junit(tmp_path, digits_int8, fake_host):
    fake_host()  # the CI runner's CPU, so the latency is judged as measured on target whatever this host is
    tight = _profile(tmp_path, **{"latency_p95_ms = 50.0": "latency_p95_ms = 0.0001"})
    junit = tmp_path / "junit.xml"
    result = _validate(digits_int8 / "model.onnx", "--profile", tight, "--runs", "20", "--junit", junit, "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["verdict"] == "fail"
    latency = next(b for b in report["profiles"][0]["budgets"] if b["name"] == "latency_p95_ms")
    assert latency["status"] == "fail" and latency["basis"] == "measured on target"
    assert latency["margin"] < 0 and latency["measured"] > latency["limit"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "1"
    failure = suite.find("testcase[@name='latency_p95_ms']/failure")
    assert failure is not None and "off by" in failure.get("message")


def test_loose_budgets_pass_with_parity_and_accuracy(tmp_path, digits_int8):
    out = tmp_path / "report"
    result = _validate(digits_int8 / "model.onnx", "--profile", "ci-x86-avx2", "--reference", digits_int8 / "model.fp32.onnx",
                       "--data", digits_paths()["test"], "--runs", "20", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "validation.json").read_text())
    budgets = {b["name"]: b for b in report["profiles"][0]["budgets"]}
    assert budgets["parity.top1_agreement_min"]["measured"] >= 0.99
    assert budgets["accuracy_drop_max"]["status"] == "pass"
    assert budgets["peak_memory_mb"]["measured"] > 0
    assert (out / "validation.md").read_text().startswith("# edgeport validation report")


def test_matrix_of_profiles_and_host_vs_target(tmp_path, digits_int8, fake_host):
    fake_host()
    result = edgeport.validate(digits_int8 / "model.onnx", profile=["ci-x86-avx2", "raspberry-pi-4", "android-nnapi"], runs=10)
    by_name = {v.profile.name: v for v in result.verdicts}
    assert by_name["ci-x86-avx2"].on_target
    pi = by_name["raspberry-pi-4"]
    assert not pi.on_target  # an arm64 profile on an x86 host
    latency = next(r for r in pi.results if r.name == "latency_p95_ms")
    assert latency.basis.startswith("estimate for target")
    assert pi.details["measurement"]["kind"] == "host"
    nnapi = by_name["android-nnapi"]
    coverage = next(r for r in nnapi.results if r.name == "provider_coverage_min")
    assert "usability checker" in coverage.basis and coverage.measured is not None
    assert "NnapiExecutionProvider" in nnapi.details["providers"]["missing_here"]


def test_missing_provider_without_fallback_measures_nothing_here(tmp_path, digits_int8):
    strict = _profile(tmp_path, "strict", **{'execution_providers = ["CPUExecutionProvider"]': 'execution_providers = ["TensorrtExecutionProvider"]\nallow_cpu_fallback = false'})
    verdict = edgeport.validate(digits_int8 / "model.onnx", profile=strict, runs=5).verdicts[0]
    assert verdict.details["providers"]["used"] == []
    memory = next(r for r in verdict.results if r.name == "peak_memory_mb")
    assert memory.status == "skipped"
    assert next(r for r in verdict.results if r.name == "latency_p95_ms").basis.startswith("estimate")


def test_dynamic_dims_need_sizes(tmp_path):
    model = tmp_path / "seq.onnx"
    make_linear_onnx(model, batch="batch")
    # a model whose second input dim is dynamic
    import onnx

    proto = onnx.load(str(model))
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "features"
    onnx.save(proto, str(model))
    result = _validate(model, "--profile", "ci-x86-avx2", "--runs", "5")
    assert result.exit_code == 2 and "--dim features=N" in result.stderr
    assert _validate(model, "--profile", "ci-x86-avx2", "--runs", "5", "--dim", "features=4").exit_code == 0


def _bad_eval(tmp_path):
    return npz_file(tmp_path, "eval.npz", image=np.zeros((4, 3, 8, 8), np.float32))


def _unrunnable(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "unrunnable.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t, m: [m, "--profile", "no-such-profile"], "unknown profile 'no-such-profile'"),
        (lambda t, m: [m, "--profile", _profile(t, **{"cores = 2\n": 'cores = "two"\n'})], "hardware.cores: must be int"),
        (lambda t, m: [corrupt_onnx(t), "--profile", "ci-x86-avx2"], "not a readable ONNX model"),
        (lambda t, m: [_unrunnable(t), "--profile", "ci-x86-avx2"], "ONNX Runtime cannot load"),
        (lambda t, m: [m, "--profile", "ci-x86-avx2", "--data", _bad_eval(t)], "batches of shape (1, 3, 8, 8)"),
        (lambda t, m: [m, "--profile", "ci-x86-avx2", "--runs", "0"], "--runs 0 is below 1"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, digits_int8, make_args, message):
    result = _validate(*make_args(tmp_path, digits_int8 / "model.onnx"))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_export_with_profile_validates_the_artifact(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", "examples.digits.model:trained_digits_cnn", "--input", "image:batchx1x8x8",
                                      "--calib", str(digits_paths()["calib"]), "--eval", str(digits_paths()["test"]),
                                      "--profile", "ci-x86-avx2", "--runs", "10", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "verdict: PASS" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["verdict"] == "pass"
    quant = next(s for s in report["steps"] if s["name"] == "quantize_search")
    assert quant["metrics"]["fidelity"]["met"] and "profile ci-x86-avx2" in quant["metrics"]["fidelity"]["target_source"]
    # The CI profile is AVX2 without VNNI: reduce_range on, and the report says which rule chose it.
    assert quant["metrics"]["reduce_range"] is True and "profile ci-x86-avx2" in quant["metrics"]["decisions"]["reduce_range"]


def test_profiles_commands():
    runner = CliRunner()
    listing = runner.invoke(cli, ["profiles", "list"])
    assert listing.exit_code == 0 and "raspberry-pi-5" in listing.stdout
    shown = runner.invoke(cli, ["profiles", "show", "jetson-orin-nano"])
    assert shown.exit_code == 0 and "TensorrtExecutionProvider" in shown.stdout
    assert runner.invoke(cli, ["profiles", "check", str(CI_PROFILE)]).exit_code == 0


def test_profiles_check_names_every_problem(tmp_path):
    bad = _profile(tmp_path, **{"cores = 2\n": "cores = 0\n", "batch = 1": "batch = 0", "opset_max = 21": "opset_maxx = 21"})
    result = CliRunner().invoke(cli, ["profiles", "check", str(bad)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 3


def test_transformer_export_and_validate_take_sequence_length_from_the_data(tmp_path):
    """int64 tokens with dynamic batch and sequence: no --dim needed when data is given."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, (32, 24)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[::4, 18:] = 0
    data = tmp_path / "tokens.npz"
    np.savez(data, input_ids=ids, attention_mask=mask)
    out = tmp_path / "tx"
    result = edgeport.export("examples.models:tiny_transformer", inputs=["input_ids:batchxsequence:int64", "attention_mask:batchxsequence:int64"],
                             calib=data, profile="ci-x86-avx2", runs=10, out_dir=out)
    profile = result.report["validation"]["profiles"][0]
    assert profile["input_shapes"] == {"input_ids": [1, 24], "attention_mask": [1, 24]}
    budgets = {b["name"]: b for b in profile["budgets"]}
    assert budgets["parity.cosine_min"]["status"] == "pass"  # latency is this host's to judge, not a test's
    quant = next(s for s in result.report["steps"] if s["name"] == "quantize_search")
    # the search starts from every op quantized; the transformer family rule only orders it
    assert {"Gather", "Gemm", "MatMul", "Softmax"} <= set(quant["metrics"]["op_types_quantized"])
    assert "only set the order" in quant["metrics"]["decisions"]["op_types"]
    assert quant["metrics"]["parity_vs_fp32"]["cosine_mean"] > 0.98



def test_export_with_only_calibration_data_says_parity_was_measured_on_it(tmp_path):
    result = edgeport.export("examples.digits.model:trained_digits_cnn", inputs=["image:batchx1x8x8"], calib=digits_paths()["calib"],
                             profile="ci-x86-avx2", runs=5, out_dir=tmp_path / "out")
    data = result.report["validation"]["profiles"][0]["parity"]["data"]
    assert data.startswith("calibration data") and "optimistic" in data  # it said "evaluation data"


def test_nan_outputs_fail_parity_explicitly_and_the_report_stays_strict_json(tmp_path):
    """A NaN cosine passed gates (comparisons with NaN are false), and report.json held bare NaN."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Sqrt", ["x"], ["y"], name="sqrt")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "sqrt.onnx"))
    np.savez(tmp_path / "negative.npz", x=-np.ones((8, 4), np.float32))
    out = tmp_path / "out"
    result = _validate(tmp_path / "sqrt.onnx", "--profile", "ci-x86-avx2", "--reference", tmp_path / "sqrt.onnx",
                       "--data", tmp_path / "negative.npz", "--runs", "3", "-o", out)
    assert result.exit_code == 1, result.output
    report = json.loads((out / "validation.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    budgets = {b["name"]: b for b in report["profiles"][0]["budgets"]}
    assert budgets["parity.non_finite_outputs_max"]["status"] == "fail"
    assert budgets["parity.non_finite_outputs_max"]["measured"] == 2  # the model's output and the reference's


def _two_output_model(path, second_scale: float):
    """y1 = x @ w (unchanged), y2 = (x @ w) * second_scale: a candidate can break only its second output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.array([1.0, 1.0, 1.0, 1.0, 1.0, second_scale], np.float32), "s")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"], name="head"), helper.make_node("Mul", ["scores", "s"], ["boxes"], name="box")],
        "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 6]), helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", 6])],
        [weight, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_parity_is_per_output_and_budgets_judge_the_worst(tmp_path):
    """Only the first output used to be compared by cosine: a broken second output passed."""
    reference = _two_output_model(tmp_path / "ref.onnx", 1.0)
    candidate = _two_output_model(tmp_path / "cand.onnx", -5.0)  # the last box coordinate flips and grows
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32))
    result = edgeport.validate(candidate, profile="ci-x86-avx2", reference=reference, data=tmp_path / "d.npz", runs=3)
    parity = result.verdicts[0].details["parity"]
    assert parity["outputs"]["scores"]["cosine_min"] == 1.0 and parity["outputs"]["scores"]["top1_agreement"] == 1.0
    assert parity["outputs"]["boxes"]["cosine_min"] < 0.9
    assert parity["cosine_min"] == parity["outputs"]["boxes"]["cosine_min"]
    assert parity["sqnr_db"] == parity["outputs"]["boxes"]["sqnr_db"]
    cosine = next(r for r in result.verdicts[0].results if r.name == "parity.cosine_min")
    assert cosine.status == "fail"


def test_parity_edge_cases_that_used_to_read_as_a_match_or_crash():
    from edgeport.runtimes.parity import ParityAccumulator

    rng = np.random.default_rng(0)
    scores = rng.standard_normal((4, 10)).astype(np.float32)
    # a collapsed (all-zero) candidate row scored cosine 1
    collapsed = ParityAccumulator()
    collapsed.update([scores], [np.zeros_like(scores)])
    assert collapsed.result()["cosine_min"] == 0.0
    # a recurrent hidden state beside the class scores is not judged by top-1
    hidden = rng.standard_normal((4, 8)).astype(np.float32)
    two = ParityAccumulator(class_outputs=frozenset({0}))
    two.update([scores, hidden], [scores, -hidden], labels=scores.argmax(1))
    result = two.result()
    assert result["top1_agreement"] == 1.0 and result["accuracy_drop"] == 0.0
    assert result["outputs"]["output_1"]["top1_agreement"] is None and result["cosine_min"] == -1.0
    # an empty output (no detections) is compared without a crash
    empty = ParityAccumulator()
    empty.update([scores, np.zeros((0, 4), np.float32)], [scores, np.zeros((0, 4), np.float32)])
    assert empty.result()["cosine_min"] == pytest.approx(1.0)
    # a reference output of zero energy has no SQNR to judge (it was -189 dB for 1e-6 of noise)
    silent = ParityAccumulator()
    silent.update([np.zeros((2, 3), np.float32)], [np.full((2, 3), 1e-6, np.float32)])
    assert silent.result()["sqnr_db"] is None


def test_integer_outputs_are_judged_by_exact_match(tmp_path):
    """An ArgMax-ids model got no cosine, no SQNR and no top-1: every budget skipped and it passed
    whatever its ids were."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def ids_model(path, flip: bool):
        weight = np.eye(5, dtype=np.float32)[:, ::-1] if flip else np.eye(5, dtype=np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["s"], name="mm"), helper.make_node("ArgMax", ["s"], ["ids"], name="argmax", axis=1, keepdims=0)],
            "ids", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
            [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])], [numpy_helper.from_array(weight, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(path))
        return path

    np.savez(tmp_path / "d.npz", x=np.random.default_rng(2).standard_normal((16, 5)).astype(np.float32))
    reference = ids_model(tmp_path / "ref.onnx", flip=False)
    same = edgeport.validate(reference, profile="ci-x86-avx2", reference=reference, data=tmp_path / "d.npz", runs=3).verdicts[0]
    agreement = next(r for r in same.results if r.name == "parity.top1_agreement_min")
    assert agreement.status == "pass" and agreement.measured == 1.0 and "exact match" in agreement.basis
    flipped = edgeport.validate(ids_model(tmp_path / "flip.onnx", flip=True), profile="ci-x86-avx2", reference=reference,
                                data=tmp_path / "d.npz", runs=3).verdicts[0]
    agreement = next(r for r in flipped.results if r.name == "parity.top1_agreement_min")
    assert agreement.status == "fail" and agreement.measured < 0.5
