"""Low-rank factorization: Linear and 1x1 Conv layers replaced by two thinner ones from a
truncated SVD, at the smallest rank keeping ``energy`` of the spectrum, only where MACs drop."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

from edgeport.artifacts import TorchArtifact
from edgeport.errors import UsageError
from edgeport.passes.context import PassContext
from edgeport.passes.prune import select_layers, verify_pruned
from edgeport.passes.torch_stats import count_macs, count_params
from edgeport.passes.registry import PassInfo


@dataclass(frozen=True)
class LowRankConfig:
    energy: float = 0.9  # share of the squared singular values the kept rank must hold
    layers: tuple[str, ...] | None = None  # None: every Linear and 1x1 Conv
    min_macs_saving: float = 0.1  # factorize a layer only if it saves at least this share of its MACs

    def __post_init__(self) -> None:
        if not 0.0 < self.energy <= 1.0:
            raise UsageError(f"energy {self.energy} is not within (0, 1]", fix="use e.g. 0.9")
        if not 0.0 <= self.min_macs_saving < 1.0:
            raise UsageError(f"min_macs_saving {self.min_macs_saving} is not within [0, 1)", fix="use e.g. 0.1")


def low_rank(model: TorchArtifact, config: LowRankConfig, *, ctx: PassContext) -> TorchArtifact:
    import torch
    from torch import nn

    started = time.perf_counter()
    module = copy.deepcopy(model.module).eval()
    candidates = select_layers(module, config.layers, (nn.Linear, nn.Conv2d))
    replaced: list[dict[str, Any]] = []
    macs_before = count_macs(module, model.inputs)
    for name, layer in candidates:
        if isinstance(layer, nn.Conv2d) and (layer.kernel_size != (1, 1) or layer.groups != 1):
            continue
        weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)  # out x in
        out_features, in_features = weight.shape
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        energy = torch.cumsum(s**2, 0) / torch.sum(s**2)
        rank = int(torch.searchsorted(energy, torch.tensor(config.energy)).item()) + 1
        if rank * (in_features + out_features) > (1 - config.min_macs_saving) * in_features * out_features:
            continue  # no MACs saved: keep the layer whole
        first_w = (torch.diag(s[:rank]) @ vh[:rank]).contiguous()  # rank x in
        second_w = u[:, :rank].contiguous()  # out x rank
        if isinstance(layer, nn.Linear):
            first, second = nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features, bias=layer.bias is not None)
            first.weight.data, second.weight.data = first_w, second_w
        else:
            first = nn.Conv2d(in_features, rank, 1, stride=layer.stride, bias=False)
            second = nn.Conv2d(rank, out_features, 1, bias=layer.bias is not None)
            first.weight.data, second.weight.data = first_w[:, :, None, None], second_w[:, :, None, None]
        if layer.bias is not None:
            second.bias.data = layer.bias.detach().clone()
        _set_submodule(module, name, nn.Sequential(first, second))
        replaced.append({"layer": name, "rank": rank, "full_rank": min(in_features, out_features), "energy_kept": round(float(energy[rank - 1]), 4)})
    parity = verify_pruned(module, model, ctx) if replaced else None
    macs_after = count_macs(module, model.inputs)
    ctx.record_pass(
        PASS, config, started,
        metrics={"replaced": replaced, "macs_before": macs_before, "macs_after": macs_after,
                 "params_after": count_params(module), "parity_onnx_vs_torch": parity},
        notes=[] if replaced else ["no layer saves MACs at this energy: the model is unchanged"],
    )
    return TorchArtifact(module, model.inputs, model.source, lineage=(*model.lineage, "low_rank"))


def _set_submodule(root: Any, dotted: str, new: Any) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


PASS = PassInfo(LowRankConfig, low_rank, name="low_rank", label="factorizing layers", kind="torch", step="prune:lowrank")
