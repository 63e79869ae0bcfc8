"""The pipeline's step cache: an ONNX-to-ONNX step whose input file, config, data, library
versions and edgeport sources are unchanged is taken from the cache instead of recomputed
(docs/ARCHITECTURE.md)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeport.artifacts import OnnxArtifact, StepRecord, file_sha256
from edgeport.passes import pass_info
from edgeport.runtimes.hostcpu import host_cpu
from edgeport.passes.context import PassContext, config_to_dict
from edgeport.passes.quantize_search import AccuracyAwareInt8Config
from edgeport.versions import code_fingerprint, runtime_versions

MAX_CACHE_BYTES = 2 * 2**30  # the oldest step entries go beyond this


def step_key(artifact: Any, config: Any, ctx: PassContext) -> str | None:
    """None when the step cannot be cached (a torch input, whose code is not hashable)."""
    if not isinstance(artifact, OnnxArtifact) or not pass_info(config).cacheable:
        return None
    if isinstance(config, AccuracyAwareInt8Config) and config.target.metric is not None:
        return None  # a user metric is Python code: its result cannot be keyed by a hash
    versions = runtime_versions()
    material = {
        "input": artifact.sha256(),
        "pass": type(config).__name__,
        "config": config_to_dict(config),
        "versions": {k: versions.get(k) for k in ("edgeport", "onnx", "onnxruntime", "onnxruntime-qnn")},
        "code": code_fingerprint(),
        # without a profile, int8 defaults (reduce_range) follow this host's CPU: another CPU is another entry
        "quant_target": repr(ctx.quant_target) if ctx.quant_target is not None else _host_facts(),
        "state_carry": ctx.state_carry.to_dict() if ctx.state_carry else None,  # carried evaluation is another verdict
        "seed": ctx.seed,
    }
    for role, source in (("calibration", ctx.calibration), ("evaluation", ctx.evaluation)):
        # every sample: two data sets that share their first samples must not share an entry
        material[role] = source.fingerprint(artifact.inputs, 8, None) if source is not None else None
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:40]


def _host_facts() -> str:
    cpu = host_cpu()
    return f"host {cpu.arch} {sorted(cpu.flags)}"


def load(key: str, artifact: OnnxArtifact, ctx: PassContext) -> OnnxArtifact | None:
    folder = ctx.cache_dir / "steps" / key
    meta_path = folder / "step.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        target = ctx.work_dir / f"cached-{key[:12]}-{meta['file']}"
        shutil.copyfile(folder / meta["file"], target)
        if file_sha256(target) != meta["sha256"]:
            raise ValueError("content differs from its hash")
        record = StepRecord(**{**meta["record"], "cached": True})
    except (OSError, ValueError, KeyError, TypeError):  # truncated, edited or from an older layout: recompute
        shutil.rmtree(folder, ignore_errors=True)
        return None
    try:
        os.utime(folder)  # recently used: pruned last
    except OSError:
        pass  # another run pruned it meanwhile: the copy in the work folder is whole
    ctx.record(record)
    return OnnxArtifact.from_file(target, lineage=(*artifact.lineage, record.name))


def store(key: str, result: OnnxArtifact, record: StepRecord, ctx: PassContext) -> None:
    """Written under a temporary name and renamed: readers see a whole entry or none."""
    if len(result.files()) != 1:
        return  # external data files: not worth copying around
    if record.metrics.get("stopped_by_clock"):
        return  # its result depends on the machine's speed, not only on its inputs
    root = ctx.cache_dir / "steps"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".step-", dir=root))
    try:
        shutil.copyfile(result.path, staging / result.path.name)
        meta = {"file": result.path.name, "sha256": file_sha256(staging / result.path.name), "record": record.to_dict()}
        (staging / "step.json").write_text(json.dumps(meta, default=str))
        os.replace(staging, root / key)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another run stored it first, or the disk is full: no harm
    prune(root)


def prune(root: Path, max_bytes: int = MAX_CACHE_BYTES) -> None:
    """Remove the least recently used entries until the step cache fits in ``max_bytes``."""
    entries = []
    for folder in root.iterdir():
        try:  # another run may be storing or pruning at the same time
            if folder.is_dir() and not folder.name.startswith("."):
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                entries.append((folder.stat().st_mtime, size, folder))
        except OSError:
            continue
    total = sum(size for _, size, _ in entries)
    for _, size, folder in sorted(entries):
        if total <= max_bytes:
            break
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
