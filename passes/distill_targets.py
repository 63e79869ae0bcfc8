"""What a distilled student learns from: the teacher's outputs (run now, or stored offline in a
cache keyed by teacher and data) and FitNets-style feature hints with their learned adapters."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from edgeport.errors import UsageError
from edgeport.passes.context import PassContext


def first_output(out: Any) -> Any:
    if isinstance(out, dict):
        return next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def resolve_hints(hints: tuple[str, ...], teacher, student) -> list[tuple[str, str]]:
    import difflib

    pairs = []
    for pair in hints:
        t_name, s_name = pair.split(":")
        for name, module, role in ((t_name, teacher, "teacher"), (s_name, student, "student")):
            names = dict(module.named_modules())
            if name not in names:
                near = difflib.get_close_matches(name, [n for n in names if n], n=1)
                raise UsageError(f"{role} has no layer '{name}'", fix=f"did you mean '{near[0]}'?" if near else "list layers with print(model)")
        pairs.append((t_name, s_name))
    return pairs


def trainable_with_adapters(student, adapters, hint_pairs):
    """Student plus hint adapters as one module whose forward returns the output and the projected
    hint features, so DistributedDataParallel sees (and all-reduces) every trained parameter."""
    from torch import nn

    class Trainable(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = student
            self.adapters = adapters

        def forward(self, *batch):
            feats: dict[str, Any] = {}
            modules = dict(self.student.named_modules())
            hooks = [modules[s].register_forward_hook(lambda m, a, o, n=s: feats.__setitem__(n, o)) for _, s in hint_pairs]
            try:
                out = first_output(self.student(*batch))
            finally:
                for h in hooks:
                    h.remove()
            return out, {s: self.adapters[s.replace(".", "_")](feats[s]) for _, s in hint_pairs}

    return Trainable()


def run_teacher(teacher, inputs: dict[str, Any], hint_pairs, device: str = "cpu", batch_size: int = 256) -> tuple[dict[str, Any], int]:
    """The teacher's outputs (and hint features) on ``inputs``, held on the CPU. The teacher visits
    ``device`` only while it runs: it need not sit in GPU memory through training."""
    import torch

    names = [p[0] for p in hint_pairs]
    modules = dict(teacher.named_modules())
    outs: dict[str, list[Any]] = {"logits": [], **{f"hint:{n}": [] for n in names}}
    feats: dict[str, Any] = {}
    hooks = [modules[n].register_forward_hook(lambda m, a, o, n=n: feats.__setitem__(n, o)) for n in names]
    calls = 0
    n = next(iter(inputs.values())).shape[0]
    home = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    teacher.to(device)
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                batch = [v[start : start + batch_size].to(device) for v in inputs.values()]
                outs["logits"].append(first_output(teacher(*batch)).float().cpu())  # targets are held on the CPU, like the data
                calls += 1
                for name in names:
                    outs[f"hint:{name}"].append(feats[name].float().cpu())
    finally:
        for h in hooks:
            h.remove()
        teacher.to(home)
    return {k: torch.cat(v) for k, v in outs.items()}, calls


def teacher_targets(teacher_module, inputs, hint_pairs, config: Any, ctx: PassContext, teacher_key: str | None, device: str = "cpu"):
    """Online: run the teacher now. Offline: load its stored outputs, or compute and store them."""
    import torch

    if not config.offline:
        targets, calls = run_teacher(teacher_module, inputs, hint_pairs, device)
        return targets, calls, "computed (online)"
    key = teacher_key or teacher_digest(teacher_module)
    digest = hashlib.sha256()
    digest.update(key.encode())
    for name, tensor in inputs.items():
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    digest.update(repr(sorted(p[0] for p in hint_pairs)).encode())
    path = ctx.cache_dir / "teacher-outputs" / f"{digest.hexdigest()[:32]}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {k: torch.from_numpy(stored[k]) for k in stored.files}, 0, f"loaded from {path}"
    targets, calls = run_teacher(teacher_module, inputs, hint_pairs, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(temp, **{k: v.numpy() for k, v in targets.items()})
    os.replace(temp, path)
    return targets, calls, f"computed and stored in {path}"


def teacher_digest(module) -> str:
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def make_adapters(student, teacher, hint_pairs, probe_inputs, targets):
    """A learned 1x1 projection per hint when widths differ; spatial sizes are matched by pooling."""
    import torch
    from torch import nn

    adapters = nn.ModuleDict()
    if not hint_pairs:
        return adapters
    feats: dict[str, Any] = {}
    modules = dict(student.named_modules())
    hooks = [modules[s].register_forward_hook(lambda m, a, o, n=s: feats.__setitem__(n, o)) for _, s in hint_pairs]
    with torch.no_grad():
        student(*probe_inputs.values())
    for h in hooks:
        h.remove()
    for t_name, s_name in hint_pairs:
        s_feat, t_feat = feats[s_name], targets[f"hint:{t_name}"]
        key = s_name.replace(".", "_")
        if s_feat.shape[1] == t_feat.shape[1]:
            adapters[key] = nn.Identity()
        elif s_feat.ndim == 4:
            adapters[key] = nn.Conv2d(s_feat.shape[1], t_feat.shape[1], 1)
        else:
            adapters[key] = nn.Linear(s_feat.shape[-1], t_feat.shape[-1])
    return adapters
