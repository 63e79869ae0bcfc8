"""The target's yes/no conditions, which have no limit to weigh a value against: the model's opset
is one the target's runtime loads, the file is in the format the target loads (ORT format, or a
QNN context compiled for its SoC), the session ran without the CPU fallback the profile forbids,
and no output is NaN or Inf. Each passes or fails as found; budgets with limits are judged by
``device_profiles.verdict.judge_budgets``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeport.artifacts import OnnxArtifact, declared_opset
from edgeport.device_profiles import Profile
from edgeport.device_profiles.verdict import FAIL, PASS, SKIPPED, BudgetResult
from edgeport.runtimes import ep_plugins
from edgeport.runtimes.ep_plugins import QNN

CONTEXT_NAME = "model_ctx.onnx"  # the precompiled QNN context an NPU profile loads, beside model.onnx
TARGET_KEY = "edgeport.qnn_target"  # its metadata: the provider options it was compiled with


def compiled_for(path: Path) -> dict[str, str] | None:
    """The provider options a model_ctx.onnx was compiled with, as export recorded them."""
    import onnx

    props = {e.key: e.value for e in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[TARGET_KEY]) if TARGET_KEY in props else None


def opset_check(graph: Path | None, prof: Profile) -> BudgetResult:
    if graph is None:
        return BudgetResult("opset_supported", SKIPPED, basis="model file", detail="an .ort file does not expose its opset here")
    opset = declared_opset(graph)
    low, high = prof.runtime.opset_min, prof.runtime.opset_max
    if opset is None:  # custom-domain ops only (an EPContext model): no ONNX opset for the runtime to support
        return BudgetResult("opset_supported", PASS, None, None, "", "model file", "the model imports no ONNX-domain opset")
    ok = low <= opset <= high
    return BudgetResult("opset_supported", PASS if ok else FAIL, opset, None, "", "model file",
                        f"opset {opset} {'within' if ok else 'outside'} the target's {low}..{high}")


def format_check(artifact: OnnxArtifact, prof: Profile) -> BudgetResult | None:
    """A target that loads only ORT format (mobile and minimal builds) needs the .ort file, and one
    that loads a precompiled QNN context needs model_ctx.onnx; full builds load either format, so an
    "onnx" target sets no check."""
    if prof.runtime.model_format == "qnn-context":
        return qnn_context_check(artifact, prof)
    if prof.runtime.model_format != "ort":
        return None
    ort_file = artifact.path if artifact.is_ort_format else artifact.path.with_suffix(".ort")
    ok = ort_file.is_file()
    detail = f"{ort_file.name} present" if ok else f"the target loads ORT format: no {ort_file.name} beside the model (edgeport export --profile {prof.name} writes it)"
    return BudgetResult("model_format", PASS if ok else FAIL, None, None, "", "model file", detail)


def qnn_context_check(artifact: OnnxArtifact, prof: Profile) -> BudgetResult:
    """The precompiled QNN context beside the model: present, compiled for this profile's HTP and
    SoC, and (where QNN is installed) loadable with this profile's options."""
    import onnxruntime as ort

    from edgeport.runtimes.session import create_session

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


def refusal_check(refused: str | None) -> BudgetResult | None:
    """The profile forbids CPU fallback and the provider would not take the whole model."""
    if refused is None:
        return None
    return BudgetResult("runs_without_cpu_fallback", FAIL, None, None, "", "ONNX Runtime session", refused)


def finite_outputs_check(parity: dict[str, Any] | None, basis: str) -> BudgetResult | None:
    """Any NaN or Inf in an output fails, whatever the budgets: no metric of such outputs means anything."""
    bad = {side: (parity or {}).get(f"non_finite_{side}") or 0 for side in ("candidate", "reference")}
    if not any(bad.values()):
        return None
    return BudgetResult("parity.non_finite_outputs_max", FAIL, bad["candidate"] + bad["reference"], 0, "", basis,
                        f"outputs with NaN or Inf: {bad['candidate']} from the model, {bad['reference']} from the reference")
