"""edgeport: take a PyTorch model to a validated, device-ready ONNX artifact with proof.

Attributes load lazily so ``import edgeport`` stays cheap and never imports torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from edgeport.errors import EdgeportError

_LAZY = {
    "export": "edgeport.api",
    "ExportResult": "edgeport.api",
    "validate": "edgeport.validation",
    "ValidationResult": "edgeport.validation",
    "load_profile": "edgeport.device_profiles",
    "distill": "edgeport.compress",
    "prune": "edgeport.compress",
    "Pipeline": "edgeport.pipeline",
    "TensorSpec": "edgeport.specs",
    "OnnxArtifact": "edgeport.artifacts",
    "TorchArtifact": "edgeport.artifacts",
}

__all__ = ["EdgeportError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name == "__version__":
        from edgeport.versions import edgeport_version

        return edgeport_version()
    raise AttributeError(f"module 'edgeport' has no attribute {name!r}")
