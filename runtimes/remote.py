"""Run validation's measurements on a real device over SSH (`edgeport validate --remote`).

asyncssh is the client: a well-kept pure-Python SSHv2 library (keys, agent, known_hosts,
timeouts) that needs no system ssh binary, so Windows and minimal CI images behave alike, and
whose server side lets the tests run a real SSH server on 127.0.0.1 with no root and no sshd.

Each job is one remote process: the client streams a tar (the job's files and device_job.py,
bench_worker.py, hostcpu.py, ep_plugins.py, synthetic.py) to `python -c BOOTSTRAP` on the device, which unpacks it into a
private temporary folder, runs it, prints one JSON line and removes the folder, also when the
connection drops. Nothing is written on this side.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import shlex
import tarfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from edgeport.errors import RemoteError, UsageError
from edgeport.runtimes import device_job
from edgeport.runtimes.hostcpu import HostCpu

RUNTIME_DIR = Path(__file__).resolve().parent
SHIPPED_MODULES = ("device_job.py", "bench_worker.py", "hostcpu.py", "ep_plugins.py", "synthetic.py")
CONNECT_TIMEOUT_S = 15.0
INSTALL_HINT = "install onnxruntime and numpy for that python on the device (pip install onnxruntime numpy: the no-torch install)"


@dataclass(frozen=True)
class RemoteTarget:
    host: str
    port: int
    user: str | None
    python: str = "python3"
    identity: str | None = None
    known_hosts: str | None = None  # None: ~/.ssh/known_hosts, as ssh does

    @classmethod
    def parse(cls, url: str, python: str | None = None, identity: str | None = None, known_hosts: str | None = None) -> "RemoteTarget":
        parts = urlsplit(url)
        try:
            port = parts.port or 22
        except ValueError:
            port = -1
        if parts.scheme != "ssh" or not parts.hostname or port < 1 or parts.path not in ("", "/"):
            raise UsageError(f"--remote '{url}' is not an SSH address", fix="write it as ssh://user@host or ssh://user@host:port")
        for name, path in (("--identity", identity), ("--known-hosts", known_hosts)):
            if path is not None and not Path(path).is_file():
                raise UsageError(f"{name} '{path}' is not a file", fix=f"give an existing file to {name}")
        return cls(parts.hostname, port, parts.username, python or "python3", identity, known_hosts)

    def describe(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


def device_cpu(facts: dict[str, Any]) -> HostCpu:
    return HostCpu(facts["arch"], frozenset(facts["flags"]), facts["model_name"], int(facts["cores"]))


def run_job(target: RemoteTarget, request: dict[str, Any], files: dict[str, Path] | None = None,
            feeds: list[dict[str, np.ndarray]] | None = None, timeout_s: float = 900.0) -> dict[str, Any]:
    """Run one job on the device and return its JSON result; RemoteError (exit 2) when the device
    cannot be reached, refuses us, lacks onnxruntime or drops the connection."""
    archive = _archive(request, files or {}, feeds)
    try:
        return asyncio.run(asyncio.wait_for(_run(target, archive), timeout_s))
    except asyncio.TimeoutError as exc:
        raise RemoteError(f"the job on {target.describe()} ran past {timeout_s:.0f} s", fix="check the device is not busy, or lower --runs") from exc
    finally:
        # A refused or dropped connection leaves asyncssh coroutines that were never awaited; collect
        # them here, quietly, or their RuntimeWarning lands at a random later moment in the user's output.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gc.collect()


def decode_outputs(encoded: str) -> list[list[np.ndarray]]:
    """The device's outputs per feed, in feed order."""
    stored = np.load(io.BytesIO(base64.b64decode(encoded)))
    by_feed: dict[int, dict[int, np.ndarray]] = {}
    for key in stored.files:
        index, position = (int(part) for part in key.split("/"))
        by_feed.setdefault(index, {})[position] = stored[key]
    return [[outputs[p] for p in sorted(outputs)] for _, outputs in sorted(by_feed.items())]


def _archive(request: dict[str, Any], files: dict[str, Path], feeds: list[dict[str, np.ndarray]] | None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            archive.addfile(info, io.BytesIO(data))

        add("request.json", json.dumps(request).encode())
        for name in SHIPPED_MODULES:
            add(name, (RUNTIME_DIR / name).read_bytes())
        for name, path in files.items():
            add(name, Path(path).read_bytes())
        if feeds is not None:
            packed = io.BytesIO()
            np.savez(packed, **{f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})
            add("feeds.npz", packed.getvalue())
    return buffer.getvalue()


async def _run(target: RemoteTarget, archive: bytes) -> dict[str, Any]:
    try:
        import asyncssh
    except ImportError as exc:
        raise RemoteError("--remote needs the asyncssh package, which is not installed", fix="pip install 'edgeport[remote]'") from exc

    options: dict[str, Any] = {"port": target.port, "username": target.user, "connect_timeout": CONNECT_TIMEOUT_S}
    if target.identity:
        options["client_keys"] = [target.identity]
    if target.known_hosts:
        options["known_hosts"] = target.known_hosts
    where = target.describe()
    connected = False
    try:
        async with asyncssh.connect(target.host, **options) as connection:
            connected = True
            script = device_job.SHELL.format(python=shlex.quote(target.python), bootstrap=shlex.quote(device_job.BOOTSTRAP))
            command = f"sh -c {shlex.quote(script)}"
            process = await connection.create_process(command, encoding=None)
            process.stdin.write(archive)
            process.stdin.write_eof()
            stdout, stderr = await asyncio.gather(process.stdout.read(), process.stderr.read())
            done = await process.wait()
    except asyncssh.KeyImportError as exc:
        raise RemoteError(f"--identity '{target.identity}' cannot be read as a private key ({exc})",
                          fix="give an unencrypted key file, or load an encrypted one into ssh-agent and drop --identity") from exc
    except asyncssh.PermissionDenied as exc:
        raise RemoteError(f"{where} refused the SSH login ({exc.reason})", fix="check the user and --identity key, or the device's authorized_keys") from exc
    except asyncssh.HostKeyNotVerifiable as exc:
        raise RemoteError(f"{where}'s host key is not in known_hosts", fix="ssh to it once to accept its key, or pass --known-hosts FILE") from exc
    except (OSError, asyncio.TimeoutError) as exc:
        if connected:
            raise RemoteError(f"the connection to {where} failed during the job ({type(exc).__name__}: {exc})", fix="check the network and rerun") from exc
        raise RemoteError(f"cannot reach {where} ({type(exc).__name__}: {exc})", fix="check the address, the port and that sshd runs there") from exc
    except (asyncssh.Error, asyncssh.misc.ConnectionLost) as exc:
        raise RemoteError(f"the connection to {where} dropped during the job ({type(exc).__name__}: {exc})",
                          fix="check the network and rerun; the device removes its temporary folder itself") from exc
    return _result(where, target.python, done.exit_status, stdout, stderr)


def _result(where: str, python: str, status: int | None, stdout: bytes, stderr: bytes) -> dict[str, Any]:
    last = (stdout.decode(errors="replace").strip().splitlines() or [""])[-1]
    if status is None or status != 0 or not last.startswith("{"):
        said = (stderr.decode(errors="replace").strip().splitlines() or [f"exit status {status}"])[-1][:200]
        if status is None or status < 0 or status == 3:
            raise RemoteError(f"the connection to {where} dropped during the job ({said})", fix="check the network and rerun")
        if status == 127 or "not found" in said:
            raise RemoteError(f"'{python}' is not a command on {where} ({said})", fix="pass --remote-python with the device's python path")
        raise RemoteError(f"the job on {where} failed ({said})", fix="run it again with EDGEPORT_DEBUG=1 and check the device's python")
    result = json.loads(last)
    error = result.get("error", "")
    if error.startswith(("ModuleNotFoundError", "ImportError")) and ("onnxruntime" in error or "numpy" in error):
        raise RemoteError(f"the device's python '{python}' on {where} cannot import what validation needs ({error})", fix=INSTALL_HINT)
    if error:
        raise RemoteError(f"the job on {where} failed: {error}", fix="check that the model runs with the device's onnxruntime")
    return result


class RemoteDevice:
    """A device validation measures on: its facts (asked once), measurements and model outputs."""

    def __init__(self, target: RemoteTarget):
        self.target = target
        self._facts: dict[str, Any] | None = None

    @property
    def facts(self) -> dict[str, Any]:
        if self._facts is None:
            self._facts = run_job(self.target, {})["facts"]
        return self._facts

    def measure(self, files: dict[str, Path], request: dict[str, Any]) -> dict[str, Any]:
        """bench_worker's measurement on the device; ``files`` maps names on the device to local paths,
        the model first."""
        return run_job(self.target, {"measure": dict(request, model=next(iter(files)))}, files)["measurement"]

    def outputs(self, files: dict[str, Path], feeds: list[dict[str, np.ndarray]], providers: list[str],
                threads: int | None, provider_options: dict[str, dict[str, str]] | None = None,
                cpu_fallback: bool = True) -> list[list[np.ndarray]]:
        request = {"outputs": {"model": next(iter(files)), "providers": providers, "threads": threads,
                               "provider_options": provider_options or {}, "cpu_fallback": cpu_fallback}}
        return decode_outputs(run_job(self.target, request, files, feeds)["outputs"])

    def timer(self, entries: list[dict[str, Any]], threads: int) -> dict[str, float]:
        """host_calibration's timer on the device: each model's median seconds per run there."""
        files = {Path(e["path"]).name: Path(e["path"]) for e in entries}
        request = {"time": [dict(e, path=Path(e["path"]).name) for e in entries], "threads": threads}
        return run_job(self.target, request, files)["seconds"]
