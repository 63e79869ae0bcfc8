"""Versions of edgeport and the libraries whose behaviour an artifact depends on."""

from __future__ import annotations

import functools
import hashlib
import platform
import sys
from importlib import metadata
from pathlib import Path


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def edgeport_version() -> str:
    return package_version("edgeport") or "0.0.0+unknown"


def runtime_versions() -> dict[str, str | None]:
    ort = package_version("onnxruntime") or package_version("onnxruntime-openvino") or package_version("onnxruntime-gpu")
    versions = {
        "edgeport": edgeport_version(),
        "python": platform.python_version(),
        "onnx": package_version("onnx"),
        "onnxruntime": ort,
        "numpy": package_version("numpy"),
    }
    qnn = package_version("onnxruntime-qnn")
    if qnn:  # a plugin provider: the QNN compiler behind NPU artifacts and their context binaries
        versions["onnxruntime-qnn"] = qnn
    # Only report torch when this process used it: validate-only installs may not have it.
    if "torch" in sys.modules:
        versions["torch"] = getattr(sys.modules["torch"], "__version__", None)
    return versions


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of edgeport's own Python sources. The step cache keys on it: results change with the
    code between releases, and an editable install keeps one version number (a cached int8 step
    would otherwise outlive a change to how int8 is made)."""
    import edgeport
    import edgeport.passes
    import edgeport.runtimes
    from edgeport.artifacts import file_sha256

    digest = hashlib.sha256()
    for package in (edgeport, edgeport.passes, edgeport.runtimes):
        for folder in package.__path__:
            for path in sorted(Path(folder).glob("*.py")):
                digest.update(f"{package.__name__}.{path.name}:{file_sha256(path)}".encode())
    return digest.hexdigest()[:16]
