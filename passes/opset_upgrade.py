"""Bring an ONNX file from an older opset up to one int8 can be written in.

Converters from other frameworks (paddle2onnx, tf2onnx, old torch) often write opset 11-12, where
DequantizeLinear has no ``axis``: per-channel int8 cannot be expressed, and ORT's quantizer writes
a file that does not load. ``onnx.version_converter`` upgrades the graph; the upgrade is kept only
if it passes the checker and matches the original's outputs. When no upgrade holds, the model
stays as it is and quantization goes per tensor (see ``per_channel_allowed``), and the report
says which and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from edgeport.artifacts import OnnxArtifact, default_opset
from edgeport.errors import first_line
from edgeport.passes.context import PassContext
from edgeport.passes.parity_check import parity_between
from edgeport.passes.registry import PassInfo

PER_CHANNEL_OPSET = 13  # DequantizeLinear gained its axis attribute in opset 13
_LARGE_BYTES = 1_800_000_000  # beyond this, a model is saved with its weights in a side file


@dataclass(frozen=True)
class OpsetUpgradeConfig:
    """Upgrade models below ``min_opset`` to ``target_opset`` (else to ``min_opset``), keeping an
    upgrade only if every output keeps cosine >= ``min_cosine`` to the original's."""

    min_opset: int = PER_CHANNEL_OPSET
    target_opset: int = 17  # what edgeport's own torch exports use
    min_cosine: float = 0.99999
    min_sqnr_db: float = 60.0  # over every output: a converter adapter that changes numbers shows here
    parity_samples: int = 8


def per_channel_allowed(path: str | Path) -> tuple[bool, str | None]:
    """Whether per-channel int8 can be written for this file, and why not when it cannot."""
    opset = default_opset(path)
    if opset >= PER_CHANNEL_OPSET:
        return True, None
    return False, (f"quantized per tensor: the model is opset {opset}, and per-channel DequantizeLinear needs opset "
                   f"{PER_CHANNEL_OPSET} (the opset upgrade did not hold; see its step)")


def upgrade_opset(model: OnnxArtifact, config: OpsetUpgradeConfig, *, ctx: PassContext) -> OnnxArtifact:
    started = time.perf_counter()
    proto = onnx.load(str(model.path))
    before = default_opset(proto)
    if before >= config.min_opset:
        return model  # nothing to do, and nothing to record
    attempts: list[dict[str, object]] = []
    result = model
    for target in dict.fromkeys((config.target_opset, config.min_opset)):
        out_path = ctx.work_dir / f"model.opset{target}.onnx"
        try:
            converted = onnx.version_converter.convert_version(proto, target)
            converted.metadata_props.extend(m for m in proto.metadata_props if m.key not in {p.key for p in converted.metadata_props})
            _save(converted, out_path)
            onnx.checker.check_model(str(out_path), full_check=True)
            candidate = OnnxArtifact.from_file(out_path, lineage=(*model.lineage, f"opset{target}"))
            parity = parity_between(model, candidate, ctx, samples=config.parity_samples)
        except Exception as exc:  # the converter has no adapter for some op, or the result is invalid
            attempts.append({"opset": target, "ok": False, "reason": first_line(exc)[:300]})
            continue
        cosine, sqnr = parity.get("cosine_min"), parity.get("sqnr_db")
        # cosine covers the first output; SQNR sums over every output (None: identical outputs)
        ok = cosine is not None and cosine >= config.min_cosine and (sqnr is None or sqnr >= config.min_sqnr_db) \
            and not parity.get("non_finite_candidate") and not parity.get("non_finite_reference")
        attempts.append({"opset": target, "ok": ok, "parity_vs_original": parity,
                         **({} if ok else {"reason": f"outputs changed: cosine_min {cosine}, SQNR {sqnr} dB (needs {config.min_cosine}, "
                                                     f"{config.min_sqnr_db} dB), non-finite outputs {parity.get('non_finite_candidate')}"})})
        if ok:
            result = candidate
            break
    upgraded = result is not model
    notes = [f"upgraded from opset {before} to {default_opset(result.path)} "
             "with onnx.version_converter; outputs match the original"] if upgraded else \
            [f"opset {before} could not be upgraded ({attempts[-1].get('reason')}); int8 is quantized per tensor"]
    ctx.record_pass(
        PASS, config, started,
        metrics={"opset_before": before, "upgraded": upgraded, "attempts": attempts},
        source=model,
        result=result,
        notes=notes,
    )
    return result


def _save(model: onnx.ModelProto, path: Path) -> None:
    if model.ByteSize() > _LARGE_BYTES:
        onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
    else:
        onnx.save(model, str(path))


PASS = PassInfo(OpsetUpgradeConfig, upgrade_opset, name="upgrade_opset", label="upgrading the opset", kind="onnx")
