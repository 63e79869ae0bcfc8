"""Output folders: a command replaces or removes only the files an earlier run of the same command
wrote there, validate writes beside an export, and everything written is strict JSON."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from edgeport.cli import cli
from edgeport.outputs import dumps_strict
from tests.conftest import make_linear_onnx, npz_file


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


@pytest.fixture()
def linear(tmp_path):
    model = make_linear_onnx(tmp_path / "linear.onnx", 8, 4)
    calib = npz_file(tmp_path, "calib.npz", x=np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32))
    return model, calib


def _export(model, calib, out, *extra):
    return CliRunner().invoke(cli, ["export", str(model), "--calib", str(calib), "-o", str(out), "--quiet", *extra])


def test_validate_into_an_export_folder_keeps_every_export_file_byte_identical(tmp_path, linear):
    model, calib = linear
    out = tmp_path / "out"
    assert _export(model, calib, out).exit_code == 0
    before = _digests(out)
    assert {"model.onnx", "model.fp32.onnx", "manifest.json", "report.json", "report.md"} <= set(before)
    for _ in range(2):  # and again: validate replaces its own files
        result = CliRunner().invoke(cli, ["validate", str(out / "model.onnx"), "--profile", "ci-x86-avx2", "--runs", "5",
                                          "--data", str(calib), "-o", str(out), "--quiet"])
        assert result.exit_code in (0, 1), result.output
    after = _digests(out)
    assert {n: after[n] for n in before} == before
    assert set(after) - set(before) == {"validation.json", "validation.md", "validation.html"}
    assert json.loads((out / "validation.json").read_text())["written_by"] == "validate"


def test_a_file_this_command_did_not_write_is_refused_unless_forced(tmp_path, linear):
    model, calib = linear
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"mine": true}')
    result = _export(model, calib, out)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "report.json" in lines[0] and "--force" in lines[0]
    assert json.loads((out / "report.json").read_text()) == {"mine": True} and not (out / "model.onnx").exists()
    assert _export(model, calib, out, "--force").exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["written_by"] == "export"


def test_prune_refuses_an_export_folder(tmp_path, linear):
    model, calib = linear
    out = tmp_path / "out"
    assert _export(model, calib, out).exit_code == 0
    before = _digests(out)
    result = CliRunner().invoke(cli, ["prune", "examples.digits.model:trained_digits_cnn", "--input", "image:batchx1x8x8", "--method", "magnitude",
                                      "--ratio", "0.5", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "report.json" in result.stderr and _digests(out) == before


def test_a_rerun_removes_only_its_own_stale_files(tmp_path, linear):
    model, calib = linear
    out = tmp_path / "out"
    assert _export(model, calib, out).exit_code == 0
    (out / "notes.txt").write_text("the user's")
    assert _export(model, calib, out, "--no-quantize").exit_code == 0
    assert not (out / "model.fp32.onnx").exists()  # written by the earlier export, not by this one
    assert (out / "notes.txt").read_text() == "the user's"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == sorted(["model.onnx", "report.json", "report.md", "report.html", "manifest.json"])


def test_json_is_strict_and_says_why_a_value_is_missing():
    text = dumps_strict({"cosine_min": float("nan"), "sqnr_db": np.float64("inf"), "series": [1.0, float("-inf")], "ok": np.float32(0.5)})
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert parsed == {"cosine_min": None, "cosine_min_not_a_number": "nan", "sqnr_db": None, "sqnr_db_not_a_number": "inf",
                      "series": [1.0, None], "ok": 0.5}
    assert all(not (isinstance(v, float) and not math.isfinite(v)) for v in parsed.values())


def test_an_export_from_an_empty_folder_leaves_only_its_output_there(tmp_path, monkeypatch, linear):
    model, calib = linear
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    result = CliRunner().invoke(cli, ["export", "examples.models:tiny_transformer", "--input", "input_ids:batchxsequence:int64",
                                      "--input", "attention_mask:batchxsequence:int64", "--calib", "random:8", "-o", "out", "--quiet"])
    assert result.exit_code in (0, 1), result.output
    assert [p.name for p in empty.iterdir()] == ["out"]
    assert _export(model, calib, "out2").exit_code == 0
    assert sorted(p.name for p in empty.iterdir()) == ["out", "out2"]


def test_junit_is_readable_by_the_group_and_others_as_the_umask_allows(tmp_path, linear):
    """It was written through mkstemp, mode 0600: a CI runner reading it as another user could not."""
    import os

    model, calib = linear
    out = tmp_path / "out"
    assert _export(model, calib, out).exit_code == 0
    previous = os.umask(0o022)
    try:
        result = CliRunner().invoke(cli, ["validate", str(out / "model.onnx"), "--profile", "ci-x86-avx2", "--runs", "3",
                                          "--junit", str(tmp_path / "junit.xml"), "--quiet"])
    finally:
        os.umask(previous)
    assert result.exit_code in (0, 1), result.output
    assert (tmp_path / "junit.xml").stat().st_mode & 0o777 == 0o644


def test_an_artifact_the_user_replaced_is_not_ours_any_more(tmp_path, linear):
    model, calib = linear
    out = tmp_path / "out"
    assert _export(model, calib, out).exit_code == 0
    (out / "model.fp32.onnx").write_bytes(b"the user's own model")  # same name, other bytes than the manifest records
    result = _export(model, calib, out, "--no-quantize")  # would remove model.fp32.onnx as its own stale file
    assert result.exit_code == 2 and "model.fp32.onnx" in result.stderr and "--force" in result.stderr
    assert (out / "model.fp32.onnx").read_bytes() == b"the user's own model"


def test_writing_into_the_current_folder_keeps_the_shell_in_a_live_folder(tmp_path, monkeypatch, linear):
    """The whole-folder exchange would leave a shell inside `-o .` in a deleted directory."""
    import os

    model, calib = linear
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    assert _export(model, calib, ".").exit_code == 0
    assert _export(model, calib, ".").exit_code == 0
    assert os.path.samefile(os.getcwd(), work) and (work / "manifest.json").is_file()
