"""Progress bars on a real terminal (a pseudo-terminal as stderr), and silence without one."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from tests.conftest import digits_paths

P = digits_paths()
EXPORT = [sys.executable, "-m", "edgeport.cli", "export", "examples.digits.model:DigitsCNN", "--weights", str(P["weights"]), "--input",
          "image:batchx1x8x8", "--calib", str(P["calib"]), "--eval", str(P["test"]), "--profile", "ci-x86-avx2", "--runs", "20", "--no-cache"]


def _run_with_terminal_stderr(args, cwd) -> tuple[int, str, str]:
    """Run ``args`` with stderr on a pseudo-terminal (what a person at a terminal has); returns (code, stdout, terminal text)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns, as a terminal window has
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower, cwd=cwd, text=True)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    stdout = process.stdout.read()
    code = process.wait(timeout=300)
    os.close(leader)
    return code, stdout, seen.decode(errors="replace")


def test_a_terminal_sees_calibration_trials_and_timed_runs(tmp_path):
    code, stdout, terminal = _run_with_terminal_stderr([*EXPORT, "-o", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")], os.getcwd())
    assert code == 0, terminal
    for label in ("calibrating (minmax)", "int8 search trials", "timing model.onnx"):
        assert label in terminal, terminal[-2000:]
    assert "it/s" in terminal or "s/it" in terminal  # tqdm's rate: a real bar, not a line of text
    assert "step" in stdout and "it/s" not in stdout  # bars never reach stdout


def test_quiet_json_and_a_pipe_show_no_progress(tmp_path):
    for flag in ("--quiet", "--json"):
        code, stdout, terminal = _run_with_terminal_stderr([*EXPORT, "-o", str(tmp_path / flag), "--cache-dir", str(tmp_path / "c"), flag], os.getcwd())
        assert code == 0, terminal
        assert not any(mark in terminal for mark in ("it/s", "calibrating", "int8 search trials", "timing ")), (flag, terminal)
    piped = subprocess.run([*EXPORT, "-o", str(tmp_path / "piped"), "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert "it/s" not in piped.stderr and "calibrating" not in piped.stderr
