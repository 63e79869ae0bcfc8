"""The regression gate: a new artifact against the last release's, both measured in the same run."""

import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeport.cli import cli
from tests.conftest import digits_paths, npz_file

P = digits_paths()
DIGITS = ["examples.digits.model:DigitsCNN", "--weights", P["weights"], "--input", "image:batchx1x8x8", "--calib", P["calib"], "--eval", P["test"]]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _matmul_chain(path, layers: int, width: int = 384, seed: int = 0):
    """x -> (MatMul, Relu) x layers, the last MatMul giving y: its cost grows with ``layers``, so fewer layers is a faster release."""
    rng = np.random.default_rng(seed)
    nodes, inits, name = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}"))
        last = i == layers - 1  # a MatMul makes the output: class scores, so labelled data gives accuracy
        nodes.append(helper.make_node("MatMul", [name, f"w{i}"], ["y" if last else f"m{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        name = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_same_model_as_baseline_passes_and_every_format_shows_both_sides(tmp_path):
    first = _invoke("export", *DIGITS, "-o", tmp_path / "release-1", "--quiet")
    assert first.exit_code == 0, first.output
    # a baseline made by an older edgeport on another machine: still compared, and its provenance reported
    manifest = json.loads((tmp_path / "release-1" / "manifest.json").read_text())
    manifest["versions"]["edgeport"] = "0.0.9"
    manifest.pop("recipe")
    (tmp_path / "release-1" / "manifest.json").write_text(json.dumps(manifest))
    second = _invoke("export", *DIGITS, "-o", tmp_path / "release-2", "--baseline", tmp_path / "release-1")
    assert second.exit_code == 0, second.output
    assert "regression gate vs" in second.stdout and ": PASS" in second.stdout
    report = json.loads((tmp_path / "release-2" / "report.json").read_text())
    gate = report["regression"]
    assert gate["verdict"] == "pass" and gate["baseline"]["edgeport"] == "0.0.9"
    assert {c["name"] for c in gate["checks"]} >= {"latency_p50_increase_max", "latency_p95_increase_max", "peak_memory_increase_max",
                                                     "model_size_increase_max", "cosine_min_drop_max", "accuracy_drop_max"}
    assert gate["bytes"]["new"] == gate["bytes"]["baseline"]
    assert gate["parity"]["new"]["cosine_min"] == gate["parity"]["baseline"]["cosine_min"]  # the same bytes, the same reference
    # the very bytes of the baseline's model: nothing to time (a CI run once failed the same file on host noise)
    assert gate["same_bytes_as_baseline"] and gate["latency_ms"] is None and gate["from_baseline_files"]
    assert all(c["status"] == "pass" for c in gate["checks"] if c["name"].startswith(("latency", "peak_memory")))
    markdown = (tmp_path / "release-2" / "report.md").read_text()
    assert "## Regression gate" in markdown and "| latency p95 |" in markdown and "Taken from the baseline's files" in markdown
    assert "nothing timed" in markdown


def test_the_same_timings_with_host_noise_pass_and_a_slower_model_fails():
    """The judged increase is the low end of a paired bootstrap interval: two draws of one noisy
    distribution (jitter and rare 3x spikes, as a busy 2-core host gives) pass at 5%, 30% slower fails."""
    from edgeport.regression import _latency_check

    rng = np.random.default_rng(3)

    def host(n, scale=1.0):
        times = scale * rng.lognormal(np.log(0.08), 0.15, n)
        spikes = rng.random(n) < 0.03
        times[spikes] *= 3.0
        return times.tolist()

    for seed in range(5):
        rng = np.random.default_rng(seed)
        same = [host(100), host(100)]
        assert all(_latency_check(same, q, 0.05).status == "pass" for q in (50, 95)), seed
    slower = [host(100, 1.3), host(100)]
    assert _latency_check(slower, 50, 0.05).status == "fail"


def test_a_faster_baseline_fails_the_gate_on_latency(tmp_path):
    new = _matmul_chain(tmp_path / "new.onnx", layers=10)
    release = tmp_path / "release"
    release.mkdir()
    _matmul_chain(release / "model.onnx", layers=7)  # the last release did 30% less work: about 30% faster
    data = npz_file(tmp_path, "eval.npz", x=np.random.default_rng(1).standard_normal((16, 384)).astype(np.float32))
    junit = tmp_path / "junit.xml"
    result = _invoke("validate", new, "--profile", "ci-x86-avx2", "--data", data, "--runs", "40", "--baseline", release, "--junit", junit)
    assert result.exit_code == 1, result.output
    failed = [line for line in result.stdout.splitlines() if line.strip().startswith("FAIL")]
    assert any("latency p50" in line for line in failed), result.stdout
    suites = {s.get("name"): s for s in ET.parse(junit).getroot()}
    gate_suite = suites["edgeport.regression"]
    latency = next(c for c in gate_suite if c.get("name") == "latency_p50_increase_max")
    assert latency.find("failure") is not None
    assert "baseline" in latency.find("system-out").text and "new" in latency.find("system-out").text
    # no reference model: parity is skipped, and the report says why
    skipped = next(c for c in gate_suite if c.get("name") == "cosine_min_drop_max")
    assert skipped.find("skipped") is not None


def test_a_missing_baseline_is_a_clear_error_before_any_work(tmp_path):
    result = _invoke("export", *DIGITS, "-o", tmp_path / "out", "--baseline", tmp_path / "nowhere")
    assert result.exit_code == 2
    assert "baseline" in result.stderr and "does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _invoke("validate", P["weights"].parent / "nothing.onnx", "--profile", "ci-x86-avx2", "--baseline", empty)
    assert result.exit_code == 2


def test_recipe_regression_limits_apply(tmp_path):
    """A recipe's [regression] limits are the ones judged: a zero size increase allowed fails a bigger model."""
    small = tmp_path / "small"
    small.mkdir()
    _matmul_chain(small / "model.onnx", layers=2)
    big = _matmul_chain(tmp_path / "big.onnx", layers=3)
    recipe = tmp_path / "edgeport.toml"
    recipe.write_text(f'schema_version = 1\n[model]\nsource = "{big}"\n[quantization]\nprecision = "fp32"\n'
                      f'[regression]\nbaseline = "small"\nsize_max_increase = 0.0\nlatency_p50_max_increase = 10.0\nlatency_p95_max_increase = 10.0\n'
                      f'[outputs]\ndir = "out"\n')
    result = _invoke("run", recipe, "--quiet")
    assert result.exit_code == 1, result.output
    gate = json.loads((tmp_path / "out" / "report.json").read_text())["regression"]
    failed = {c["name"] for c in gate["checks"] if c["status"] == "fail"}
    assert failed == {"model_size_increase_max"}
    assert (tmp_path / "out" / "junit.xml").is_file()
    shutil.rmtree(tmp_path / "out")


def test_a_retrained_baseline_is_compared_on_accuracy_not_on_cosine(tmp_path):
    """Each release is closest to its own fp32 model: cosine to either would favour one side."""
    new, old = tmp_path / "new", tmp_path / "old"
    for folder, seed in ((new, 1), (old, 2)):
        folder.mkdir()
        _matmul_chain(folder / "model.onnx", layers=2, width=16, seed=seed)
        shutil.copyfile(folder / "model.onnx", folder / "model.fp32.onnx")
    rng = np.random.default_rng(3)
    data = npz_file(tmp_path, "eval.npz", x=rng.standard_normal((32, 16)).astype(np.float32), labels=rng.integers(0, 16, 32))
    result = _invoke("validate", new / "model.onnx", "--profile", "ci-x86-avx2", "--data", data, "--runs", "10", "--baseline", old, "--json")
    assert result.exit_code in (0, 1), result.output
    gate = json.loads(result.stdout)["regression"]
    checks = {c["name"]: c for c in gate["checks"]}
    assert checks["cosine_min_drop_max"]["status"] == "skipped" and "another fp32 model" in checks["cosine_min_drop_max"]["detail"]
    assert checks["accuracy_drop_max"]["status"] in ("pass", "fail") and gate["reference"]["same_fp32_as_baseline"] is False
    assert gate["reference"]["path"] == str(new / "model.fp32.onnx")  # the new release's own fp32 model, never the baseline's


def test_a_baseline_with_another_interface_is_refused(tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    _matmul_chain(release / "model.onnx", layers=2, width=32)
    new = _matmul_chain(tmp_path / "new.onnx", layers=2, width=16)
    result = _invoke("validate", new, "--profile", "ci-x86-avx2", "--runs", "5", "--baseline", release)
    assert result.exit_code == 2 and "the baseline is not comparable" in result.stderr
