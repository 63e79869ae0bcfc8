"""Validation's checks that only an NPU profile asks for: the coverage a provider reports by refusing
nodes (no CPU fallback), and the precompiled QNN context shipped beside the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeport.artifacts import OnnxArtifact
from edgeport.device_profiles import Profile
from edgeport.runtimes import ep_plugins
from edgeport.runtimes.ep_plugins import QNN
from edgeport.runtimes.session import create_session
from edgeport.verdict import FAIL, PASS, BudgetResult


def coverage_from_refusal(graph: Path | None, measurement: dict[str, Any], provider: str) -> dict[str, Any] | None:
    """Coverage when a provider refused the model (no CPU fallback): every node but those it named."""
    refused = measurement.get("refused_nodes")
    if not refused or graph is None:
        return None
    import onnx

    nodes = sum(1 for n in onnx.load(str(graph), load_external_data=False).graph.node if n.op_type != "Constant")
    return {"source": f"{provider}'s own refusals (ONNX Runtime verbose log; CPU fallback forbidden)", "nodes": nodes,
            "preferred_share": round(max(nodes - len(refused), 0) / nodes, 4) if nodes else None, "refused_nodes": refused}


def qnn_context_check(artifact: OnnxArtifact, prof: Profile) -> BudgetResult:
    """The precompiled QNN context beside the model: present, compiled for this profile's HTP and
    SoC, and (where QNN is installed) loadable with this profile's options."""
    import onnxruntime as ort

    from edgeport.passes.qnn_context import CONTEXT_NAME, compiled_for

    path = artifact.path.parent / CONTEXT_NAME
    if not path.is_file():
        return BudgetResult("model_format", FAIL, None, None, "", "model file",
                            f"the target loads a precompiled QNN context: no {CONTEXT_NAME} beside the model "
                            f"(edgeport export --profile {prof.name} writes it)")
    built = compiled_for(path) or {}
    wanted = prof.runtime.provider_options
    differ = [f"{key} {built.get(key, 'unrecorded')} (the profile's: {wanted[key]})" for key in ("htp_arch", "soc_model")
              if key in wanted and built.get(key) != wanted[key]]
    if differ:
        return BudgetResult("model_format", FAIL, None, None, "", "model file",
                            f"{CONTEXT_NAME} was compiled for another target: {', '.join(differ)}; export with --profile {prof.name}")
    if QNN not in ep_plugins.available_providers(ort):
        return BudgetResult("model_format", PASS, None, None, "", "model file",
                            f"{CONTEXT_NAME} compiled for this target (not loaded: {QNN} is not installed here)")
    try:
        create_session(path, [QNN], provider_options={QNN: dict(wanted)}, cpu_fallback=False)
    except Exception as exc:
        return BudgetResult("model_format", FAIL, None, None, "", "model file", f"{CONTEXT_NAME} does not load on {QNN}: {str(exc)[:300]}")
    return BudgetResult("model_format", PASS, None, None, "", "model file", f"{CONTEXT_NAME} compiled for this target, and it loads on {QNN}")
