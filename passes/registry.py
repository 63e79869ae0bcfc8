"""What a pass is, declared once beside its code: each pass module ends with a ``PassInfo`` (two for
prune.py), and ``edgeport.passes`` collects them. The pipeline (labels), the step cache
(cacheable), the reports (precision) and the dispatch (``run_pass``) all read these facts here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class PassInfo:
    config: type  # the frozen config dataclass that selects this pass
    run: Callable[..., Any]  # run(artifact, config, *, ctx) -> artifact
    name: str  # its StepRecord's name in reports
    label: str  # what progress says while it runs
    kind: str  # "torch" or "onnx": the artifact it takes
    cacheable: bool = False  # its output depends only on its input, config, data and library versions
    precision: str | None = None  # the precision of the model it writes; None: its input's
    # torch passes a recipe or the CLI can ask for: "distill", or "prune:<method>" (edgeport prune --method)
    step: str | None = None
    # an ONNX pass config that export runs on every fp32 model it ships, a no-op where it finds
    # nothing to do (weight sharing's packing: only the finished file can hold indices instead of
    # weights, and a shared model can arrive as a .pt2 that prune wrote)
    finishing: Any = None

    def __post_init__(self) -> None:
        if self.kind not in ("torch", "onnx"):
            raise ValueError(f"pass {self.name}: kind must be torch or onnx, not {self.kind!r}")
