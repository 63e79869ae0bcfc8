"""The command line end to end through click's CliRunner: wiring, outputs and exit codes."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeport.artifacts import OnnxArtifact, file_sha256
from edgeport.cli import cli
from tests.conftest import corrupt_onnx, digits_paths, npz_file

P = digits_paths()
DIGITS_ARGS = ["examples.digits.model:DigitsCNN", "--weights", str(P["weights"]), "--input", "image:batchx1x8x8"]


def _run(*args):
    return CliRunner().invoke(cli, ["export", *map(str, args)])


def test_export_digits_end_to_end(tmp_path):
    out = tmp_path / "out"
    result = _run(*DIGITS_ARGS, "--calib", P["calib"], "--eval", P["test"], "-o", out)
    assert result.exit_code == 0, result.output
    assert "quantize_search" in result.stdout and "top-1 agree" in result.stdout and "target met" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.fp32.onnx", "model.onnx", "report.html", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == "2.0"
    assert [s["name"] for s in report["steps"]] == ["export", "optimize", "quantize_search"]
    parity = report["summary"]["parity_vs_fp32"]
    assert parity["top1_agreement"] >= 0.99 and parity["accuracy_drop"] <= 0.01
    manifest = json.loads((out / "manifest.json").read_text())
    for name, entry in manifest["artifacts"].items():
        assert entry["sha256"] == file_sha256(out / name)
    assert manifest["versions"]["torch"] and manifest["versions"]["onnxruntime"]
    assert manifest["pipeline"][-1]["config"]["quant"]["per_channel"] is True
    assert manifest["pipeline"][-1]["config"]["target"]["min_cosine"] == 0.99
    assert not list(tmp_path.glob(".out.edgeport-*"))  # staging folder gone


def test_json_mode_prints_only_the_report(tmp_path):
    result = _run(*DIGITS_ARGS, "--calib", P["calib"], "-o", tmp_path / "o", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["kind"] == "export"


def test_quiet_and_no_quantize(tmp_path):
    result = _run(*DIGITS_ARGS, "--no-quantize", "-o", tmp_path / "o", "--quiet")
    assert result.exit_code == 0 and result.stdout == ""
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["manifest.json", "model.onnx", "report.html", "report.json", "report.md"]


def _bad_calib(tmp_path):
    return npz_file(tmp_path, "calib.npz", pixels=np.zeros((4, 1, 8, 8), np.float32))


def _bad_shape_calib(tmp_path):
    return npz_file(tmp_path, "calib.npz", image=np.zeros((4, 1, 9, 9), np.float32))


def _file_in_the_way(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    return blocker / "out"


@pytest.mark.parametrize(
    "case, make_args, message",
    [
        ("missing model file", lambda t: ["missing.onnx", "--no-quantize"], "does not exist"),
        ("corrupt model file", lambda t: [corrupt_onnx(t), "--no-quantize"], "not a readable ONNX model"),
        ("unknown module", lambda t: ["no_such_pkg.models:Net", "--input", "x:1x3", "--no-quantize"], "cannot be imported"),
        ("malformed input spec", lambda t: [*DIGITS_ARGS[:3], "--input", "image:1xax", "--no-quantize"], "neither a number nor a name"),
        ("input spec the model rejects", lambda t: [*DIGITS_ARGS[:3], "--input", "image:batchx3x8x8", "--no-quantize"], "forward fails"),
        ("calibration names mismatch", lambda t: [*DIGITS_ARGS, "--calib", _bad_calib(t)], "no array for input 'image'"),
        ("calibration shapes mismatch", lambda t: [*DIGITS_ARGS, "--calib", _bad_shape_calib(t)], "batches of shape (4, 1, 9, 9)"),
        ("no calibration data", lambda t: [*DIGITS_ARGS], "needs calibration data"),
        ("model that cannot export", lambda t: ["tests.exporter.bad_models:Unexportable", "--input", "x:batchx4", "--no-quantize"], "aten::special_zeta"),
        ("pickled model without trust", lambda t: [_pickled(t), "--input", "image:1x1x8x8", "--no-quantize"], "--trust-pickle"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_artifact(tmp_path, case, make_args, message):
    out = tmp_path / "out"
    result = _run(*make_args(tmp_path), "-o", out)
    assert result.exit_code == 2, (case, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Fix:" in lines[0], (case, result.stderr)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.edgeport-*"))


def test_unwritable_output_folder(tmp_path):
    result = _run(*DIGITS_ARGS, "--no-quantize", "-o", _file_in_the_way(tmp_path))
    assert result.exit_code == 2
    assert "cannot be written" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_failed_rerun_keeps_the_earlier_good_output(tmp_path):
    out = tmp_path / "out"
    assert _run(*DIGITS_ARGS, "--no-quantize", "-o", out).exit_code == 0
    before = file_sha256(out / "model.onnx")
    assert _run(*DIGITS_ARGS, "--calib", _bad_calib(tmp_path), "-o", out).exit_code == 2
    assert file_sha256(out / "model.onnx") == before


def _pickled(tmp_path):
    import torch

    from examples.digits.model import DigitsCNN

    path = tmp_path / "whole.pt"
    torch.save(DigitsCNN(), path)
    return path


def test_unchanged_steps_come_from_the_step_cache(tmp_path):
    first = _run(*DIGITS_ARGS, "--calib", P["calib"], "--eval", P["test"], "-o", tmp_path / "a", "--json")
    second = _run(*DIGITS_ARGS, "--calib", P["calib"], "--eval", P["test"], "-o", tmp_path / "b", "--json")
    fresh = _run(*DIGITS_ARGS, "--calib", P["calib"], "--eval", P["test"], "-o", tmp_path / "c", "--json", "--no-cache")
    cached = {s["name"]: s["cached"] for s in json.loads(second.stdout)["steps"]}
    assert cached == {"export": False, "optimize": True, "quantize_search": True}  # torch export is never cached
    assert not any(s["cached"] for s in json.loads(fresh.stdout)["steps"])
    assert file_sha256(tmp_path / "a" / "model.onnx") == file_sha256(tmp_path / "b" / "model.onnx")
    # Other calibration data is another key: the quantize step runs again.
    other = tmp_path / "calib2.npz"
    np.savez(other, image=np.load(P["calib"])["image"][:64])
    third = _run(*DIGITS_ARGS, "--calib", other, "--eval", P["test"], "-o", tmp_path / "d", "--json")
    assert {s["name"]: s["cached"] for s in json.loads(third.stdout)["steps"]}["quantize_search"] is False
    assert first.exit_code == 0


def test_a_change_to_edgeports_code_is_another_step_cache_entry(tmp_path, monkeypatch, digits_onnx):
    """One version number covers many states of an editable install: the code itself is in the key,
    so an int8 step cached before a change to how int8 is made is not served after it."""
    from edgeport import step_cache
    from edgeport.passes import PassContext, StaticInt8Config

    artifact, ctx = OnnxArtifact.from_file(digits_onnx), PassContext(work_dir=tmp_path)
    before = step_cache.step_key(artifact, StaticInt8Config(), ctx)
    assert step_cache.step_key(artifact, StaticInt8Config(), ctx) == before
    monkeypatch.setattr(step_cache, "code_fingerprint", lambda: "edited")
    assert step_cache.step_key(artifact, StaticInt8Config(), ctx) != before


def test_two_fresh_runs_give_the_same_bytes(tmp_path):
    """Determinism, not the cache: two runs, each with --no-cache and its own cache folder."""
    for name in ("a", "b"):
        result = _run(*DIGITS_ARGS, "--calib", P["calib"], "--eval", P["test"], "-o", tmp_path / name, "--no-cache", "--cache-dir", tmp_path / f"cache-{name}", "--quiet")
        assert result.exit_code == 0, result.output
    for artifact in ("model.onnx", "model.fp32.onnx"):
        assert file_sha256(tmp_path / "a" / artifact) == file_sha256(tmp_path / "b" / artifact), artifact
    assert not (tmp_path / "cache-a" / "steps").exists() or not any((tmp_path / "cache-a" / "steps").iterdir())


def test_a_truncated_step_cache_entry_is_recomputed_not_served(tmp_path, monkeypatch):
    import os

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEPORT_CACHE_DIR", str(cache))
    first = _run(*DIGITS_ARGS, "--calib", P["calib"], "-o", tmp_path / "a", "--json")
    assert first.exit_code == 0, first.output
    for entry in (cache / "steps").iterdir():  # cut every stored model in half, as a killed copy would
        model = next(f for f in entry.iterdir() if f.suffix == ".onnx")
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    second = _run(*DIGITS_ARGS, "--calib", P["calib"], "-o", tmp_path / "b", "--json")
    assert second.exit_code == 0, second.output
    assert not any(s["cached"] for s in json.loads(second.stdout)["steps"])
    assert file_sha256(tmp_path / "a" / "model.onnx") == file_sha256(tmp_path / "b" / "model.onnx")
    # and the cache stays within its size: the least recently used entries go first
    from edgeport.step_cache import prune

    entries = sorted((cache / "steps").iterdir(), key=lambda p: p.stat().st_mtime)
    assert len(entries) >= 2
    os.utime(entries[-1])
    prune(cache / "steps", max_bytes=sum(f.stat().st_size for f in entries[-1].iterdir()))
    assert [p.name for p in (cache / "steps").iterdir()] == [entries[-1].name]
