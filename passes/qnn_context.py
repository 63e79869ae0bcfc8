"""Compile a QDQ model for a Qualcomm NPU ahead of time: ONNX Runtime's EPContext model
(model_ctx.onnx) holding a QNN context binary (model_ctx_qnn.bin) built for the profile's SoC,
the form a phone or PC app loads without compiling on the device.

The compile refuses any node QNN does not take (no CPU fallback), and the compiled model is
checked to reload and give the QDQ model's outputs on the same backend.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgeport.artifacts import OnnxArtifact, StepRecord
from edgeport.errors import QuantizationError, first_line
from edgeport.runtimes.ep_plugins import QNN
from edgeport.runtimes.target_checks import CONTEXT_NAME, TARGET_KEY
from edgeport.passes.context import PassContext, config_to_dict
from edgeport.runtimes.session import create_session, run_session, session_options
from edgeport.specs import example_array
from edgeport.passes.registry import PassInfo

class QnnRefusal(QuantizationError):
    """No context binary can be compiled here: QNN is not installed, or it would not take the
    whole model (validation then names each refused node)."""


@dataclass(frozen=True)
class QnnContextConfig:
    provider_options: dict[str, str] = field(default_factory=dict)  # backend_type, htp_arch, soc_model
    check_samples: int = 2  # feeds the reloaded context model must reproduce (the simulator is slow)


def compile_qnn_context(model: OnnxArtifact, config: QnnContextConfig, *, ctx: PassContext) -> OnnxArtifact:
    import onnxruntime as ort

    from edgeport.runtimes import ep_plugins

    if QNN not in ep_plugins.available_providers(ort):
        raise QnnRefusal(ep_plugins.plugin_problem(QNN) or f"{QNN} is not installed here",
                         fix="pip install 'edgeport[qnn]' (onnxruntime-qnn), or use a profile whose model_format is onnx")
    started = time.perf_counter()
    folder = ctx.work_dir / "qnn-context"
    folder.mkdir(parents=True, exist_ok=True)
    out_path = folder / CONTEXT_NAME
    options = session_options(optimization="all")
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    ep_plugins.write_compiled_context(options, out_path)
    providers = {QNN: dict(config.provider_options)}
    try:
        ep_plugins.create_session(ort, str(model.path), options, [QNN], providers)
    except Exception as exc:
        raise QnnRefusal(f"QNN could not compile '{model.path.name}' whole: {first_line(exc)[:300]}",
                                fix="run 'edgeport validate' with the profile: its coverage names each node QNN refuses and why") from exc
    compile_s = time.perf_counter() - started
    binaries = sorted(p for p in folder.iterdir() if p != out_path)
    compiled = onnx.load(str(out_path))  # say what it was compiled for: validation checks it against each profile
    onnx.helper.set_model_props(compiled, {**{e.key: e.value for e in compiled.metadata_props},
                                           TARGET_KEY: json.dumps(dict(sorted(config.provider_options.items())))})
    onnx.save(compiled, str(out_path))
    artifact = OnnxArtifact.from_file(out_path, lineage=(*model.lineage, "qnn_context"))
    check = _reload_check(model.path, out_path, model, providers, config.check_samples, ctx.seed)
    ctx.record(StepRecord(
        name=PASS.name, config=config_to_dict(config), wall_s=time.perf_counter() - started,
        input_bytes=model.size_bytes, output_bytes=sum(p.stat().st_size for p in (out_path, *binaries)),
        metrics={"compile_s": round(compile_s, 3), "context_binaries": {p.name: p.stat().st_size for p in binaries},
                 "reload_check": check},
    ))
    return artifact


def context_files(artifact: OnnxArtifact) -> list[Path]:
    """The EPContext model and the binaries beside it that it names."""
    return [artifact.path, *sorted(p for p in artifact.path.parent.iterdir() if p != artifact.path)]


def _reload_check(qdq: Path, compiled: Path, model: OnnxArtifact, providers: dict, samples: int, seed: int) -> dict:
    """The compiled model, loaded fresh, against the QDQ model on the same backend: they must agree."""
    qdq_session = create_session(qdq, [QNN], provider_options=providers, cpu_fallback=False)
    ctx_session = create_session(compiled, [QNN], provider_options=providers, cpu_fallback=False)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(samples):
        feed = {s.name: example_array(s, rng) for s in model.inputs}
        for a, b in zip(run_session(qdq_session, feed), run_session(ctx_session, feed)):
            worst = max(worst, float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0)
    if worst > 0.0:
        raise QuantizationError(f"the compiled QNN context model differs from the QDQ model by {worst:g} on the same backend",
                                fix="report this with the model: the context binary must reproduce the QDQ model")
    return {"samples": samples, "max_abs_diff": worst, "inputs": "seeded synthetic"}


PASS = PassInfo(QnnContextConfig, compile_qnn_context, name="qnn_context", label="compiling the QNN context binary", kind="onnx")
