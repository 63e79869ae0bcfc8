"""`validate --remote` against a real SSH server (asyncssh's, on 127.0.0.1) whose commands run in a
second virtual environment standing for the device (.venv-openvino: its own onnxruntime, with the
OpenVINO provider this one lacks). Each failure gives exit 2 with one line and leaves no files."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from edgeport.cli import cli
from tests.conftest import ROOT

asyncssh = pytest.importorskip("asyncssh")  # a dev dependency: `make test` always has it
DEVICE_PYTHON = ROOT / ".venv-openvino" / "bin" / "python"
pytestmark = pytest.mark.skipif(not DEVICE_PYTHON.is_file(), reason="the device venv (.venv-openvino) is built by `make test`")


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True  # every login must authenticate

    def public_key_auth_supported(self) -> bool:
        return True


class SshDevice:
    """An SSH server on 127.0.0.1; each command runs under `sh` with TMPDIR in the device's own
    folder. ``drop_after_s`` aborts the connection that long into a command and closes the
    command's pipes, as sshd does when a connection dies (it signals nothing)."""

    def __init__(self, folder: Path):
        self.folder, self.tmp = folder, folder / "device-tmp"
        self.tmp.mkdir()
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.identity = folder / "id_ed25519"
        self.client_key.write_private_key(str(self.identity))
        self.drop_after_s: float | None = None
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(20)
        self.port = self.server.sockets[0].getsockname()[1]
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_key.export_public_key().decode().strip()}\n")
        self.url = f"ssh://tester@127.0.0.1:{self.port}"

    async def _start(self):
        authorized = asyncssh.import_authorized_keys(self.client_key.export_public_key().decode())
        return await asyncssh.create_server(_Server, "127.0.0.1", 0, server_host_keys=[self.host_key],
                                            authorized_client_keys=authorized, process_factory=self._handle, encoding=None)

    async def _handle(self, process) -> None:
        env = {**os.environ, "TMPDIR": str(self.tmp)}
        shell = await asyncio.create_subprocess_exec("sh", "-c", f"{process.command}; exit $?", env=env, start_new_session=True,
                                                     stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.PIPE)
        if self.drop_after_s is not None:
            async def drop() -> None:
                await asyncio.sleep(self.drop_after_s)
                if shell.returncode is None:  # a job still running: cut it off
                    process.get_extra_info("connection").abort()
                    for fd in (0, 1, 2):
                        shell._transport.get_pipe_transport(fd).close()
            asyncio.ensure_future(drop())
        await process.redirect(stdin=shell.stdin, stdout=shell.stdout, stderr=shell.stderr)
        process.exit(await shell.wait())

    def args(self, *, python: Path | str = DEVICE_PYTHON, identity: Path | None = None) -> list[str]:
        return ["--remote", self.url, "--remote-python", str(python), "--identity", str(identity or self.identity),
                "--known-hosts", str(self.known_hosts)]

    def leftovers(self, wait_s: float = 15.0) -> list[str]:
        deadline = time.time() + wait_s
        while time.time() < deadline and any(self.tmp.iterdir()):
            time.sleep(0.2)
        return [p.name for p in self.tmp.iterdir()]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture()
def device(tmp_path):
    server = SshDevice(tmp_path)
    yield server
    server.close()


@pytest.fixture()
def model(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], rng.standard_normal(8 * 27).astype(np.float32).tolist())
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 16, 16])], [weight])
    path = tmp_path / "m.onnx"
    # IR 8: the device's onnxruntime is older than this one, as a device's often is
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def _validate(model: Path, *extra: str):
    return CliRunner().invoke(cli, ["validate", str(model), "--profile", "ci-x86-avx2", "--runs", "10", *extra])


def _one_line_exit_2(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeport: error:"), result.output
    return lines[0]


def test_validate_measures_on_the_device_and_leaves_nothing_there(tmp_path, device, model):
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((6, 3, 16, 16)).astype(np.float32))
    result = _validate(model, "--reference", str(model), "--data", str(data), "--json", *device.args())
    assert result.exit_code in (0, 1), result.output
    profile = json.loads(result.stdout)["profiles"][0]
    where = f"remote host tester@127.0.0.1:{device.port}"
    assert profile["host"]["remote"] == f"tester@127.0.0.1:{device.port}"
    # the device's own runtime answered: it has the OpenVINO provider that this venv lacks
    assert "OpenVINOExecutionProvider" in profile["host"]["providers_available"]
    assert profile["measurement"]["remote"] == f"tester@127.0.0.1:{device.port}" and profile["measurement"]["runs"] == 10
    memory = next(b for b in profile["budgets"] if b["name"] == "peak_memory_mb")
    assert where in memory["basis"]
    assert profile["parity"]["cosine_min"] > 0.99999 and "evaluation data" in profile["parity"]["data"]
    cosine = next(b for b in profile["budgets"] if b["name"] == "parity.cosine_min")
    assert where in cosine["basis"]
    assert device.leftovers() == []


def test_an_unreachable_host_exits_2(model, device):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]  # closed again: nothing listens there
    args = device.args()
    args[1] = f"ssh://tester@127.0.0.1:{free_port}"
    assert "cannot reach tester@127.0.0.1" in _one_line_exit_2(_validate(model, *args))


def test_a_refused_login_exits_2(tmp_path, model, device):
    stranger = tmp_path / "stranger"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    assert "refused the SSH login" in _one_line_exit_2(_validate(model, *device.args(identity=stranger)))
    assert device.leftovers(wait_s=0) == []


def test_a_device_without_onnxruntime_exits_2_with_the_install_line(tmp_path, model, device):
    bare = tmp_path / "bare-python"  # the device venv's python without its site-packages
    bare.write_text(f"#!/bin/sh\nexec {DEVICE_PYTHON} -S \"$@\"\n")
    bare.chmod(0o755)
    line = _one_line_exit_2(_validate(model, *device.args(python=bare)))
    assert "cannot import" in line and "pip install onnxruntime numpy" in line
    assert device.leftovers() == []


def test_a_connection_dropped_mid_run_exits_2_and_the_device_cleans_up(model, device):
    device.drop_after_s = 4.0  # after the facts job: into the measurement, which runs for a minute
    line = _one_line_exit_2(CliRunner().invoke(cli, ["validate", str(model), "--profile", "ci-x86-avx2", "--runs", "1000000",
                                                     "--time-limit", "60", *device.args()]))
    assert "dropped" in line
    assert device.leftovers() == []


def test_calibrate_over_ssh_makes_a_measured_profile_of_the_device(tmp_path, device):
    from edgeport.device_profiles import load_profile

    out = tmp_path / "device.toml"
    result = CliRunner().invoke(cli, ["profiles", "calibrate", "-o", str(out), "--threads", "1", "--quiet", *device.args()])
    assert result.exit_code == 0, result.output
    profile = load_profile(out)
    assert f"(remote host tester@127.0.0.1:{device.port})" in profile.sources["peak_gops_fp32"]
    assert profile.description.startswith("The device tester@127.0.0.1")
    assert profile.measured.estimate_error_models == 6 and all(v > 0 for v in profile.measured.gops.values())
    assert device.leftovers() == []


def test_a_device_with_onnxruntime_but_no_onnx_package_is_measured(tmp_path, model, device):
    """The device needs python, numpy and onnxruntime only: the onnx package is hidden from it."""
    blocker = tmp_path / "blocker" / "onnx"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no onnx package on this device')\n")
    python = tmp_path / "device-python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={blocker.parent} exec {DEVICE_PYTHON} \"$@\"\n")
    python.chmod(0o755)
    result = _validate(model, "--reference", str(model), "--json", *device.args(python=python))
    assert result.exit_code in (0, 1), result.output
    profile = json.loads(result.stdout)["profiles"][0]
    assert profile["measurement"]["runs"] == 10 and profile["parity"]["cosine_min"] > 0.99999
    assert device.leftovers() == []
