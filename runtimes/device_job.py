"""What runs on a remote device for `edgeport validate --remote`: standalone (the device has python,
numpy and onnxruntime, not edgeport), shipped with bench_worker.py, hostcpu.py, ep_plugins.py and synthetic.py beside it.

`SHELL` is the remote command: a POSIX sh that makes a private temporary folder and removes it
when python ends, however it ends. `BOOTSTRAP` is python's program there: it unpacks the tar the
client streams on stdin into that folder, runs `job(folder)`, prints one JSON line, and removes the
folder itself too: on success, on an error, on a signal, and when the connection drops (its parent
process goes away or its stdout is hung up: a watchdog thread checks both).
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys

# The remote command's shell: makes the private folder and removes it when python ends, however it
# ends (a signal, the OOM killer); {python} and {bootstrap} are shell-quoted by the client.
SHELL = ('d=$(mktemp -d "${{TMPDIR:-/tmp}}/edgeport-remote-XXXXXX") || exit 70; trap \'rm -rf "$d"\' EXIT; '
         'trap "exit 129" HUP; trap "exit 143" TERM; trap "exit 130" INT; {python} -c {bootstrap} "$d"')

BOOTSTRAP = r"""
import json, os, select, shutil, signal, sys, tarfile, tempfile, threading, time
folder = sys.argv[1]  # made by the shell that runs this, which removes it even if python is killed
os.environ["TMPDIR"] = tempfile.tempdir = folder  # ORT's profile files and any other temporary land inside it
def clean_exit(*_):
    shutil.rmtree(folder, ignore_errors=True)
    os._exit(3)
for number in (signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE, signal.SIGINT):
    signal.signal(number, clean_exit)
parent = os.getppid()
def watchdog():
    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLERR | select.POLLHUP)
    while True:
        if os.getppid() != parent or poller.poll(0):
            clean_exit()
        time.sleep(0.2)
threading.Thread(target=watchdog, daemon=True).start()
try:
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as archive:
        for member in archive:
            if not member.isfile() or "/" in member.name or member.name.startswith("."):
                raise ValueError("unexpected entry in the job archive: " + member.name)
            archive.extract(member, folder)
    sys.path.insert(0, folder)
    import device_job
    result = device_job.job(folder)
except SystemExit:
    raise
except BaseException as exc:
    result = {"error": type(exc).__name__ + ": " + (str(exc).strip().splitlines() or [""])[0][:300]}
try:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
finally:
    shutil.rmtree(folder, ignore_errors=True)
"""


def job(folder: str) -> dict:
    """The request in ``folder``/request.json: device facts always; a measurement and the model's
    outputs on the given feeds when asked."""
    with open(os.path.join(folder, "request.json")) as handle:
        request = json.load(handle)
    result: dict = {"facts": facts()}
    if "measure" in request:
        import bench_worker

        measure = dict(request["measure"], model=os.path.join(folder, request["measure"]["model"]))
        try:
            result["measurement"] = bench_worker.run(measure)
        except Exception as exc:
            cause = exc.__cause__ or exc
            return {**result, "error": f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:300]}"}
    if "time" in request:  # calibration: each model's median seconds per run
        entries = [dict(entry, path=os.path.join(folder, entry["path"])) for entry in request["time"]]
        result["seconds"] = time_entries(entries, request["threads"])
    if "outputs" in request:
        result["outputs"] = outputs(os.path.join(folder, request["outputs"]["model"]), os.path.join(folder, "feeds.npz"),
                                    request["outputs"]["providers"], request["outputs"].get("threads"),
                                    request["outputs"].get("provider_options"), request["outputs"].get("cpu_fallback", True))
    return result


def time_entries(entries: list, threads: int) -> dict:
    """Median seconds per run of each entry ({key, path, shape, repeats}): the median of its
    ``repeats`` timings. Calibration's timer, here and on a device."""
    import statistics

    return {e["key"]: statistics.median(time_model(e["path"], tuple(e["shape"]), threads) for _ in range(e["repeats"])) for e in entries}


def time_model(path: str, x_shape: tuple, threads: int, min_seconds: float = 0.4) -> float:
    """Median seconds per run of a one-input float model on the CPU provider at ``threads``."""
    import statistics
    import time

    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)}
    for _ in range(3):
        session.run(None, feed)
    times: list = []
    started = time.perf_counter()
    while len(times) < 7 or (time.perf_counter() - started < min_seconds and len(times) < 2000):
        begin = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def facts() -> dict:
    import platform

    import onnxruntime as ort
    from ep_plugins import available_providers
    from hostcpu import host_cpu, memory_mb

    cpu = host_cpu()
    return {"memory_mb": memory_mb(), "arch": cpu.arch, "flags": sorted(cpu.flags), "model_name": cpu.model_name, "cores": cpu.cores,
            "providers": available_providers(ort), "onnxruntime": ort.__version__, "python": platform.python_version(),
            "hostname": platform.node()}


def outputs(model: str, feeds_path: str, providers: list[str], threads: int | None, provider_options: dict | None = None,
            cpu_fallback: bool = True) -> str:
    """Every feed of feeds.npz ('<index>/<input>') through the model; the outputs ('<index>/<position>')
    as a base64 npz, so they travel in the one JSON line."""
    import numpy as np
    import onnxruntime as ort
    from ep_plugins import create_session

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not cpu_fallback and "CPUExecutionProvider" not in providers:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    session = create_session(ort, model, options, providers, provider_options)
    stored = np.load(feeds_path)
    feeds: dict[int, dict] = {}
    for key in stored.files:
        index, name = key.split("/", 1)
        feeds.setdefault(int(index), {})[name] = stored[key]
    results = {}
    for index in sorted(feeds):
        for position, value in enumerate(session.run(None, feeds[index])):
            results[f"{index}/{position}"] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez(buffer, **results)
    return base64.b64encode(buffer.getvalue()).decode()


if __name__ == "__main__":  # run by hand on a device: python device_job.py FOLDER
    print(json.dumps(job(sys.argv[1])))
