"""Pruning: unstructured magnitude pruning (made permanent), and structured channel pruning that
physically removes channels and neurons, with torch-pruning's dependency graph handling residual
adds, depthwise and grouped convolutions and attention heads.

Every pruned model is checked by a forward pass, an ONNX export and an ONNX Runtime parity check
before it moves on: torch-pruning has been seen to produce an inconsistent model silently.
"""

from __future__ import annotations

import copy
import difflib
import io
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeport.artifacts import TorchArtifact
from edgeport.errors import ExportError, InternalError, UsageError, first_line
from edgeport.passes.context import PassContext
from edgeport.passes.torch_stats import count_macs, count_params
from edgeport.passes.trace_sizes import traceable_sizes
from edgeport.specs import example_array
from edgeport.passes.registry import PassInfo


def _check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise UsageError(f"pruning ratio {ratio} is out of range", fix="use a ratio strictly between 0 and 1, e.g. 0.5")


@dataclass(frozen=True)
class MagnitudePruneConfig:
    ratio: float = 0.5
    scope: str = "global"  # global: one threshold across layers; layer: the same ratio in each layer
    layers: tuple[str, ...] | None = None  # Conv/Linear module names; None: all of them

    def __post_init__(self) -> None:
        _check_ratio(self.ratio)
        if self.scope not in ("global", "layer"):
            raise UsageError(f"scope '{self.scope}' is unknown", fix="use global or layer")


@dataclass(frozen=True)
class ChannelPruneConfig:
    ratio: float = 0.5  # share of channels removed from each prunable layer
    round_to: int = 8  # channel counts stay multiples of this (SIMD widths)
    importance: str = "l2"  # l1 or l2 norm of each channel's weights
    ignore: tuple[str, ...] = ()  # module names kept whole; the output layer is always kept

    def __post_init__(self) -> None:
        _check_ratio(self.ratio)
        if self.round_to < 1:
            raise UsageError(f"round_to {self.round_to} is below 1", fix="use 1 (no rounding) or 8")
        if self.importance not in ("l1", "l2"):
            raise UsageError(f"importance '{self.importance}' is unknown", fix="use l1 or l2")


def magnitude_prune(model: TorchArtifact, config: MagnitudePruneConfig, *, ctx: PassContext) -> TorchArtifact:
    from torch import nn
    from torch.nn.utils import prune as torch_prune

    started = time.perf_counter()
    module = copy.deepcopy(model.module)
    targets = select_layers(module, config.layers, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    before = zipped_state_size(module)
    params = [(m, "weight") for _, m in targets]
    if config.scope == "global":
        torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=config.ratio)
    else:
        for m, name in params:
            torch_prune.l1_unstructured(m, name, amount=config.ratio)
    for m, name in params:
        torch_prune.remove(m, name)  # permanent: the zeros live in the weight tensor itself
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    total = sum(m.weight.numel() for m, _ in params)
    module.eval()
    parity = verify_pruned(module, model, ctx)
    ctx.record_pass(
        MAGNITUDE_PASS, config, started,
        metrics={"layers": len(params), "sparsity": round(zeros / total, 4), "compressed_bytes_before": before,
                 "compressed_bytes_after": zipped_state_size(module), "parity_onnx_vs_torch": parity},
        notes=["unstructured sparsity shrinks the compressed (zipped) size, not latency or raw size: dense runtimes still multiply the zeros"],
    )
    return TorchArtifact(module, model.inputs, model.source, lineage=(*model.lineage, "prune_magnitude"))


def channel_prune(model: TorchArtifact, config: ChannelPruneConfig, *, ctx: PassContext) -> TorchArtifact:
    import torch
    from torch import nn

    started = time.perf_counter()
    module = copy.deepcopy(model.module).eval()
    rng = np.random.default_rng(ctx.seed)
    sizes = traceable_sizes(model, rng)
    example = tuple(torch.from_numpy(example_array(s, rng, sizes)) for s in model.inputs)
    ignored = [m for _, m in select_layers(module, config.ignore, (nn.Module,))] if config.ignore else []
    ignored += _output_layers(module, example)
    ignored_names = [n for n, m in module.named_modules() if any(m is i for i in ignored)]
    macs_before, params_before = count_macs(module, model.inputs), count_params(module)
    try:
        _prune_in_place(module, example, config, ignored)
    except Exception as exc:
        raise InternalError(f"torch-pruning could not prune the model: {type(exc).__name__}: {first_line(exc)[:200]}", fix="add the failing layer to --ignore, or use magnitude pruning") from exc
    try:
        parity = verify_pruned(module, model, ctx)
    except InternalError as exc:
        culprit = _width_fixed_by_code(model, config, ignored_names, example, ctx)
        if culprit is None:
            raise
        raise UsageError(f"the pruned model failed its consistency check ({exc.problem[:160]}): the model's code fixes the width of '{culprit}'",
                         fix=f"keep that layer whole with --ignore {','.join((*(config.ignore or ()), culprit))}") from exc
    macs_after, params_after = count_macs(module, model.inputs), count_params(module)
    ctx.record_pass(
        CHANNELS_PASS, config, started,
        metrics={"params_before": params_before, "params_after": params_after, "macs_before": macs_before, "macs_after": macs_after,
                 "macs_ratio": round(macs_after / macs_before, 4) if macs_before else None, "parity_onnx_vs_torch": parity},
    )
    return TorchArtifact(module, model.inputs, model.source, lineage=(*model.lineage, "prune_channels"))


def _prune_in_place(module: Any, example: tuple, config: ChannelPruneConfig, ignored: list[Any]) -> None:
    """One channel-pruning run, the same for the real model and for the diagnosis trials."""
    import torch_pruning as tp
    from torch import nn

    heads = {m: m.num_heads for m in module.modules() if isinstance(m, nn.MultiheadAttention)}
    pruner = tp.pruner.MetaPruner(
        module, example, importance=tp.importance.MagnitudeImportance(p=2 if config.importance == "l2" else 1),
        pruning_ratio=config.ratio, ignored_layers=ignored,  # rounds with recovery between them: prune(steps=)
        round_to=config.round_to, num_heads=heads, prune_head_dims=False, prune_num_heads=bool(heads),
    )
    pruner.step()
    for m in heads:  # torch-pruning leaves MultiheadAttention's bookkeeping to us
        m.head_dim = m.embed_dim // m.num_heads
    module.eval()


def verify_pruned(module: Any, original: TorchArtifact, ctx: PassContext) -> dict[str, Any]:
    """Forward, ONNX export and ORT-vs-torch parity on the pruned model; raise if any step fails."""
    from edgeport.passes.export_onnx import OnnxExportConfig, export_onnx

    check_dir = ctx.work_dir / f"verify-{len(ctx.records)}"
    check_dir.mkdir(parents=True, exist_ok=True)
    check_ctx = PassContext(work_dir=check_dir, seed=ctx.seed)
    try:
        export_onnx(TorchArtifact(module, original.inputs, original.source), OnnxExportConfig(), ctx=check_ctx)
    except ExportError as exc:
        raise InternalError(f"the pruned model failed its consistency check: {exc.problem}", fix="report it; try another --ratio or magnitude pruning") from exc
    return check_ctx.records[-1].metrics["parity_vs_torch"]


def _output_layers(module: Any, example: tuple) -> list[Any]:
    """The last Conv/Linear before *each* output (every head of a multi-head model): their width is
    the model's output, so keep them. Found by walking each output's autograd graph back to the
    first layer outputs it meets."""
    import torch
    from torch import nn

    made_by: dict[Any, Any] = {}  # a layer output's grad_fn -> the layer

    def remember(layer: Any, _inputs: Any, output: Any) -> None:  # a hook that returns a value replaces the output
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            made_by.setdefault(output.grad_fn, layer)

    hooks = [m.register_forward_hook(remember) for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    frozen = [p for p in module.parameters() if not p.requires_grad]  # no grad, no graph to walk
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            outputs = module(*example)
    finally:
        for h in hooks:
            h.remove()
        for p in frozen:
            p.requires_grad_(False)
    found: list[Any] = []
    stack = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
    seen: set[Any] = set()  # the grad_fn objects themselves: they stay alive while outputs do, so no id is reused
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if fn in made_by:
            if made_by[fn] not in found:
                found.append(made_by[fn])
            continue  # an earlier layer's width does not reach this output directly
        stack.extend(next_fn for next_fn, _ in fn.next_functions if next_fn is not None)
    return found


def _tensors(value: Any) -> list[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _width_fixed_by_code(model: TorchArtifact, config: ChannelPruneConfig, kept: list[str], example: tuple, ctx: PassContext) -> str | None:
    """The layer whose width the model's own code hard-codes (a reshape to a fixed size): the last
    pruned layer, in execution order, whose keeping whole lets the pruned model pass its check."""
    import torch
    from torch import nn

    names = {m: n for n, m in model.module.named_modules()}
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda m, a, o: order.append(names[m])) for m in model.module.modules()
             if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    try:
        with torch.no_grad():
            model.module(*example)
    finally:
        for h in hooks:
            h.remove()
    for name in [n for n in reversed(dict.fromkeys(order)) if n not in kept][:8]:
        trial = copy.deepcopy(model.module).eval()
        layers = dict(trial.named_modules())
        try:
            _prune_in_place(trial, example, config, [layers[n] for n in (*kept, name)])
            verify_pruned(trial, model, ctx)
        except Exception:
            continue
        return name
    return None


def select_layers(module: Any, names: tuple[str, ...] | None, kinds: tuple) -> list[tuple[str, Any]]:
    named = dict(module.named_modules())
    if names is None:
        return [(n, m) for n, m in named.items() if isinstance(m, kinds) and n]
    chosen = []
    for name in names:
        if name not in named:
            near = difflib.get_close_matches(name, [n for n in named if n], n=1)
            raise UsageError(f"the model has no layer '{name}'", fix=f"did you mean '{near[0]}'?" if near else "list layers with print(model)")
        chosen.append((name, named[name]))
    return chosen


def zipped_state_size(module: Any) -> int:
    import torch

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return len(zlib.compress(buffer.getvalue(), 6))


MAGNITUDE_PASS = PassInfo(MagnitudePruneConfig, magnitude_prune, name="prune_magnitude", label="pruning weights", kind="torch",
                          step="prune:magnitude")
CHANNELS_PASS = PassInfo(ChannelPruneConfig, channel_prune, name="prune_channels", label="pruning channels", kind="torch",
                         step="prune:channels")
