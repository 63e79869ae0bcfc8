"""Execution providers that ship as plugin libraries (ONNX Runtime's EP ABI, 1.23+): QNN comes
from the `onnxruntime-qnn` package, not from onnxruntime itself.

Such a provider is registered with ORT once per process, and a session takes it through
``SessionOptions.add_provider_for_devices``: the ``providers=`` list ignores it (every node then
lands on the CPU). ``create_session`` hides that, so nothing else knows a provider is a plugin.

Standalone (stdlib only; onnxruntime is passed in): shipped to remote devices beside bench_worker.py.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile
from typing import Any, Iterator, Sequence

try:
    from edgeport.runtimes.hostcpu import X86_ARCHES
except ImportError:  # shipped to a device beside hostcpu.py, without edgeport
    from hostcpu import X86_ARCHES  # type: ignore[no-redef]

QNN = "QNNExecutionProvider"
# provider -> (python package that ships it, function returning its library path)
PLUGINS: dict[str, tuple[str, str]] = {QNN: ("onnxruntime_qnn", "get_library_path")}
# what a plugin needs when the profile says nothing: the QNN plugin finds no backend by itself
DEFAULT_OPTIONS: dict[str, dict[str, str]] = {QNN: {"backend_type": "htp"}}
CPU = "CPUExecutionProvider"

_registered: set[str] = set()
_problems: dict[str, str] = {}  # installed plugins ORT would not load, and why


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """Native plugin libraries print banners to file descriptor 1 (QNN: '# LIBNATIVE: ...'), which
    would corrupt JSON on stdout (--json, the benchmark worker's result): send them to stderr."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real stdout (an embedded interpreter): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def register_plugins(ort: Any) -> list[str]:
    """Register every plugin provider installed here (once per process); returns those registered."""
    for name, (package, function) in PLUGINS.items():
        if name in _registered or not hasattr(ort, "register_execution_provider_library"):
            continue
        try:
            library = getattr(importlib.import_module(package), function)()
        except ImportError:
            continue
        try:
            with native_stdout_to_stderr():
                ort.register_execution_provider_library(name, library)
        except Exception as exc:  # registered earlier in this process by someone else: usable all the same
            if "already" not in str(exc).lower():
                _problems[name] = f"{package} is installed but ONNX Runtime cannot load it: {(str(exc).strip().splitlines() or [''])[0][:200]}"
                continue
        _registered.add(name)
    return sorted(_registered)


def plugin_problem(name: str) -> str | None:
    """Why an installed plugin provider is not available (None: it is, or it is not installed)."""
    return _problems.get(name)


def available_providers(ort: Any) -> list[str]:
    """ORT's providers here, the installed plugins included."""
    register_plugins(ort)
    return list(ort.get_available_providers())


def create_session(ort: Any, model: Any, options: Any, providers: Sequence[str],
                   provider_options: dict[str, dict[str, str]] | None = None) -> Any:
    """An InferenceSession on ``providers`` in order, each with its options. With a plugin provider,
    the CPU provider is ORT's own fallback: ``session.disable_cpu_ep_fallback`` decides whether it
    may run nodes, as the callers set it."""
    provider_options = provider_options or {}
    plugins = [p for p in providers if p in PLUGINS]
    if not plugins:
        return ort.InferenceSession(model, options, providers=list(providers),
                                    provider_options=[dict(provider_options.get(p, {})) for p in providers])
    register_plugins(ort)
    others = [p for p in providers if p not in PLUGINS and p != CPU]
    if others:
        raise ValueError(f"{plugins[0]} is a plugin provider and cannot share a session with {others[0]}")
    for name in plugins:
        devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
        if not devices:
            raise ValueError(f"{name} is installed but offers no device here")
        given = provider_options.get(name, {})
        defaults = {} if "backend_path" in given else DEFAULT_OPTIONS.get(name, {})
        options.add_provider_for_devices(devices, {k: str(v) for k, v in {**defaults, **given}.items()})
    with native_stdout_to_stderr():  # the backend library loads with the session
        return ort.InferenceSession(model, options)


def write_compiled_context(options: Any, path: Any) -> None:
    """Make a session compile to ORT's EPContext form at ``path`` (a QNN context binary beside it):
    the precompiled model a device app loads without compiling."""
    options.add_session_config_entry("ep.context_enable", "1")
    options.add_session_config_entry("ep.context_file_path", str(path))


def refusals(ort: Any, model: Any, options: Any, providers: Sequence[str],
             provider_options: dict[str, dict[str, str]] | None = None) -> list[dict[str, str]]:
    """Which nodes the first provider leaves to the CPU, and why: a session allowed to fall back,
    with ORT's verbose log (where providers give their reasons) caught from stderr. ``options``
    must allow CPU fallback; its log level is set here."""
    options.log_severity_level = 0
    with tempfile.TemporaryFile(mode="w+b") as log:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(log.fileno(), 2)
            create_session(ort, model, options, providers, provider_options)
        except Exception:
            pass  # the reasons are in the log whether or not the session loads
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        return refused_nodes(log.read().decode("utf-8", "replace"))


def simulated(provider: str, provider_options: dict[str, str] | None, host_arch: str) -> bool:
    """QNN's HTP backend on an x86 host is Qualcomm's simulator of the NPU: its numerics and
    coverage are the device's, its timings are not."""
    backend = (provider_options or {}).get("backend_type", "htp")
    return provider == QNN and backend == "htp" and host_arch in X86_ARCHES


_FAILED = re.compile(r"Validation FAILED for \d+ nodes in OrtNodeUnit \((?P<unit>[^)]*)\)")
_NODE = re.compile(r"Operator type: (?P<op>\S+) Node name: (?P<name>.*?) Node index: (?P<index>\d+)")
_REASON = re.compile(r"REASON\s*:\s*(?P<reason>.*)")


def refused_nodes(log: str) -> list[dict[str, str]]:
    """The nodes a provider refused and why, from ORT's verbose log (QNN logs each refusal as
    'Validation FAILED ... Operator type: X Node name: Y ... REASON : ...'). One entry per node."""
    found: list[dict[str, str]] = []
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if not _FAILED.search(line):
            continue
        nodes, reason = [], ""
        for following in lines[index + 1:index + 40]:
            node, why = _NODE.search(following), _REASON.search(following)
            if node:
                nodes.append(node)
            elif why:
                reason = why.group("reason").strip()
                break
            elif following and not following[0].isspace():
                break  # the next log record
        for node in nodes:
            entry = {"node": node.group("name").strip() or f"#{node.group('index')}", "op_type": node.group("op"), "reason": reason}
            if entry not in found:
                found.append(entry)
    # the provider's own limits first; graph-input Q / graph-output DQ it leaves to the CPU by configuration follow
    return sorted(found, key=lambda entry: "is configured to" in entry["reason"])
