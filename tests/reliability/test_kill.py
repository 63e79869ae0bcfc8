"""Fault injection: export and validate are killed with SIGKILL at random moments. Each time the
output folder holds a complete result (the previous one or the new one, never a mix) and no
partial file; the cache never serves a truncated entry; a killed run's staging folder is removed
by the next run."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.conftest import ROOT, make_linear_onnx

TRIALS = 20


def _complete(folder: Path, ledger: str) -> bool:
    """The ledger names every file of the run, each present, and each artifact matches its hash."""
    record = json.loads((folder / ledger).read_text())
    if not all((folder / name).is_file() for name in record["files"]):
        return False
    artifacts = record.get("artifacts", {})
    return all(hashlib.sha256((folder / n).read_bytes()).hexdigest() == a["sha256"] for n, a in artifacts.items())


FAILPOINTS = ("commit-start", "commit-between", "commit-swapped")


def _run(args: list[str], cwd: Path, kill_after: float | None, env: dict, killed: bool = False) -> None:
    process = subprocess.Popen([sys.executable, "-m", "edgeport.cli", *args], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_after is None:
        code = process.wait(timeout=120)
        assert code in ((0, 1, -signal.SIGKILL) if killed else (0, 1)), code  # a failpoint off this run's path lets it finish
        return
    time.sleep(kill_after)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_killed_runs_leave_a_complete_result_never_a_mix(tmp_path):
    model = make_linear_onnx(tmp_path / "linear.onnx", 8, 4)
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((64, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=samples)
    np.savez(tmp_path / "calib2.npz", x=samples * 3)  # other ranges, so a mix of two runs' files shows in the hashes
    env = {**os.environ, "EDGEPORT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out"
    export = ["export", str(model), "--calib", str(tmp_path / "calib.npz"), "-o", str(out), "--quiet"]
    validate = ["validate", str(out / "model.onnx"), "--profile", "ci-x86-avx2", "--runs", "20", "-o", str(out), "--quiet"]
    started = time.perf_counter()
    _run(export, tmp_path, None, env)
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    _run(validate, tmp_path, None, env)
    validate_s = time.perf_counter() - started
    (out / "notes.txt").write_text("the user's own file")
    chooser = random.Random(0)
    # Kills inside the commit itself (a window of milliseconds a timer rarely hits), at each failpoint
    # for both commands, then kills at random moments of whole runs.
    plan = [(command, point) for point in FAILPOINTS for command in ("export", "validate")] * 2
    plan += [(("export", "validate")[t % 2], None) for t in range(TRIALS - len(plan))]
    for trial, (command, failpoint) in enumerate(plan):
        if command == "export":  # the other calibration data than the result in the folder used: every file differs
            current = json.loads((out / "manifest.json").read_text())["recipe"]["data"]["calibration"]
            args, duration = [a.replace("calib.npz", "calib2.npz") if current.endswith("/calib.npz") else a for a in export], export_s
        else:
            args, duration = validate, validate_s
        _run(args, tmp_path, None if failpoint else chooser.uniform(0.05, duration * 1.1), {**env, "EDGEPORT_FAILPOINT": failpoint or ""},
             killed=failpoint is not None)
        assert _complete(out, "manifest.json"), f"trial {trial}: the export in {out} is not complete"
        assert _complete(out, "validation.json"), f"trial {trial}: the validation in {out} is not complete"
        assert (out / "notes.txt").read_text() == "the user's own file"
        visible = {p.name for p in out.iterdir()}
        assert visible <= {"model.onnx", "model.fp32.onnx", "report.json", "report.md", "manifest.json", "validation.json",
                           "validation.md", "report.html", "validation.html", "notes.txt"}, visible
    # a later run finishes, reads no truncated cache entry, and removes the staging folders of the killed ones
    _run(export, tmp_path, None, env)
    assert _complete(out, "manifest.json")
    assert not list(tmp_path.glob(".out.edgeport-*"))
