"""Weight sharing (Deep Compression, Han et al. 2016: prune, share, quantize): each large Conv/Linear
weight is clustered by k-means into K shared values, initialised linearly over the weight's range
as Han et al. found best (it keeps the rare large weights, which density-based starts lose).

The torch pass only rounds weights to their cluster's value; the file shrinks when the finished
fp32 model is packed (``pack_shared_weights``): each shared weight becomes 4-bit (K <= 16) or 8-bit
indices plus a codebook per output channel, rebuilt at load by Cast -> GatherElements, which
ONNX Runtime constant-folds into the float weight (so memory at run time is the fp32 model's).
The codebook is per output channel so that BatchNorm folding, which scales each output channel,
keeps K values per channel.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeport.artifacts import OnnxArtifact, TorchArtifact, declared_opset
from edgeport.errors import UsageError
from edgeport.passes.context import PassContext
from edgeport.passes.prune import select_layers, verify_pruned, zipped_state_size
from edgeport.passes.registry import PassInfo

PACKABLE_READERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MAX_INLINE_BYTES = 1_500_000_000  # a packed file is written whole: ONNX's protobuf limit is 2 GB


@dataclass(frozen=True)
class WeightShareConfig:
    clusters: int = 16  # shared values per layer: 16 packs to 4-bit indices, up to 256 to 8-bit
    min_weights: int = 1024  # smaller layers stay as they are: their codebook and indices would save little
    iterations: int = 30  # Lloyd iterations of 1-D k-means
    layers: tuple[str, ...] | None = None  # Conv/Linear module names; None: all large enough
    # epochs of distillation (teacher and training data from the context) that train the shared
    # values themselves, as Han et al. fine-tune centroids: each value's gradient is the sum of its weights'
    fine_tune_epochs: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.clusters <= 256:
            raise UsageError(f"clusters {self.clusters} is not within [2, 256]", fix="use 16 (4-bit indices) or up to 256 (8-bit)")
        if self.min_weights < 1 or self.iterations < 1 or self.fine_tune_epochs < 0:
            raise UsageError("min_weights and iterations must be at least 1, fine_tune_epochs at least 0", fix="use the defaults (1024, 30, 0)")


@dataclass(frozen=True)
class PackSharedWeightsConfig:
    max_clusters: int = 256  # an initializer with at most this many values per output channel is packed...
    min_weights: int = 1024
    # ...when indices plus codebooks take at most this share of its float bytes: a small layer has
    # few values per channel whether shared or not, and its codebook would cost what it saves
    max_packed_ratio: float = 0.5


def kmeans_1d(values: np.ndarray, clusters: int, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (sorted) and each value's cluster: Lloyd's algorithm from a linear start."""
    flat = values.reshape(-1).astype(np.float64)
    low, high = float(flat.min()), float(flat.max())
    centroids = np.linspace(low, high, clusters) if high > low else np.full(1, low)
    for _ in range(iterations):
        assignment = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, flat)
        sums = np.bincount(assignment, weights=flat, minlength=len(centroids))
        counts = np.bincount(assignment, minlength=len(centroids))
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)  # an empty cluster keeps its value
        if np.allclose(updated, centroids, rtol=0, atol=1e-12):
            break
        centroids = np.sort(updated)
    assignment = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, flat)
    return centroids.astype(np.float32), assignment.reshape(values.shape)


def share_weights(model: TorchArtifact, config: WeightShareConfig, *, ctx: PassContext) -> TorchArtifact:
    import torch
    from torch import nn

    started = time.perf_counter()
    module = copy.deepcopy(model.module).eval()
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)
    chosen = [(n, m) for n, m in select_layers(module, config.layers, kinds) if m.weight.numel() >= config.min_weights]
    if not chosen:
        raise UsageError(f"no Conv/Linear layer has {config.min_weights} or more weights to share",
                         fix="lower min_weights, or name layers that have weights")
    before = zipped_state_size(module)
    originals = {name: layer.weight.detach().cpu().numpy().copy() for name, layer in chosen}
    clusters: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, layer in chosen:
        centroids, assignment = kmeans_1d(originals[name], config.clusters, config.iterations)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(centroids[assignment]).to(layer.weight.dtype))
        clusters[name] = (centroids, assignment)
    shared = sum(w.size for w in originals.values())
    total = sum(p.numel() for p in module.parameters())
    if config.fine_tune_epochs:
        module = _fine_tuned(module, clusters, config, model, ctx)
    final = dict(module.named_modules())
    signal = sum(float(np.square(w.astype(np.float64)).sum()) for w in originals.values())
    noise = sum(float(np.square((w - final[n].weight.detach().cpu().numpy()).astype(np.float64)).sum()) for n, w in originals.items())
    parity = verify_pruned(module, model, ctx)
    ctx.record_pass(
        PASS, config, started,
        metrics={"layers": len(chosen), "weights_shared": shared, "share_of_parameters": round(shared / max(total, 1), 4),
                 "index_bits": 4 if config.clusters <= 16 else 8,
                 "weight_sqnr_db": round(float(10 * np.log10(signal / noise)), 2) if noise > 0 else None,
                 "zipped_state_bytes_before": before, "zipped_state_bytes_after": zipped_state_size(module), "parity_onnx_vs_torch": parity},
        notes=[f"{len(chosen)} layers share {config.clusters} values each; export's fp32 file stores each as "
               f"{4 if config.clusters <= 16 else 8}-bit indices plus a codebook per output channel where that halves it"],
    )
    return TorchArtifact(module, model.inputs, model.source, lineage=(*model.lineage, "share_weights"))


def _fine_tuned(module: Any, clusters: dict[str, tuple[np.ndarray, np.ndarray]], config: WeightShareConfig, model: TorchArtifact,
                ctx: PassContext) -> Any:
    """``module`` after distillation in which each shared layer's weight is its centroids looked up
    (a parametrization): the centroids train, the assignment stays, so the weights stay shared."""
    import torch
    from torch import nn
    from torch.nn.utils import parametrize

    from edgeport.passes.distill import DistillConfig, distill

    if ctx.teacher is None or ctx.training is None:
        raise UsageError("fine-tuning shared weights distills from a teacher on training data, and none was given",
                         fix="give training data (--data, or train_data= / [data] training) or set fine_tune_epochs = 0")

    class SharedValues(nn.Module):
        def __init__(self, centroids: np.ndarray, assignment: np.ndarray) -> None:
            super().__init__()
            self.centroids = nn.Parameter(torch.from_numpy(centroids.copy()))
            self.register_buffer("assignment", torch.from_numpy(assignment.astype(np.int64)))

        def forward(self, original: torch.Tensor) -> torch.Tensor:  # the weight is what its cluster holds
            return self.centroids[self.assignment].to(original.dtype)

    layers = dict(module.named_modules())
    for name, (centroids, assignment) in clusters.items():
        parametrize.register_parametrization(layers[name], "weight", SharedValues(centroids, assignment))
    settings = dataclasses.replace(ctx.recovery or DistillConfig(seed=ctx.seed), epochs=config.fine_tune_epochs)
    tuned = distill(TorchArtifact(module, model.inputs, model.source), settings, teacher=ctx.teacher, data=ctx.training, ctx=ctx).module
    for name, layer in tuned.named_modules():
        if name in clusters:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return tuned.eval()


def pack_shared_weights(model: OnnxArtifact, config: PackSharedWeightsConfig, *, ctx: PassContext) -> OnnxArtifact:
    """The fp32 file with every shared weight stored as indices plus per-channel codebooks; the
    input itself when no weight is shared (export runs this on every fp32 model it ships)."""
    started = time.perf_counter()
    proto = onnx.load(str(model.path))
    opset = declared_opset(proto) or 0
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    plans = {t.name: plan for t in proto.graph.initializer if (plan := _packing_plan(t, readers.get(t.name, []), config)) is not None}
    skipped = None
    if plans and opset < 11:
        skipped = f"shared weights left unpacked: the model's opset {opset} lacks BitShift/GatherElements (11); export with --opset 11 or more"
    elif plans and model.size_bytes > MAX_INLINE_BYTES:
        skipped = "shared weights left unpacked: the model is over 1.5 GB, beyond what one ONNX file holds without a side file"
    if skipped or not plans:
        ctx.record_pass(
            PACK_PASS, config, started,
            metrics={"weights_packed": 0},
            source=model,
            result=model,
            notes=[skipped] if skipped else [],
        )
        return model
    kept: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    folded_bytes = 0
    for tensor in proto.graph.initializer:
        if tensor.name not in plans:
            kept.append(tensor)
            folded_bytes += numpy_helper.to_array(tensor).nbytes
            continue
        made_nodes, made_inits = _packed(tensor.name, *plans[tensor.name])
        nodes += made_nodes
        kept += made_inits
        folded_bytes += 4 * int(np.prod(tensor.dims))  # what ORT holds once it has folded the lookup
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    graph_nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend([*nodes, *graph_nodes])  # the weights are rebuilt before anything reads them
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    out_path = ctx.work_dir / "model.shared.onnx"
    onnx.save(proto, str(out_path))
    artifact = OnnxArtifact.from_file(out_path, lineage=(*model.lineage, "pack_shared_weights"))
    ctx.record_pass(
        PACK_PASS, config, started,
        metrics={"weights_packed": len(plans), "index_bits": sorted({plan[2] for plan in plans.values()}),
                 "bytes_before": model.size_bytes, "bytes_after": artifact.size_bytes,
                 "zipped_bytes_before": zipped_file_size(model.path), "zipped_bytes_after": zipped_file_size(out_path),
                 "runtime_weight_bytes_after_folding": folded_bytes},
        source=model,
        result=artifact,
        notes=[f"{len(plans)} shared weights stored as indices plus codebooks; ONNX Runtime rebuilds them at load, so memory at "
               f"run time is the fp32 model's ({folded_bytes:,} bytes of weights)"],
    )
    return artifact


def _packing_plan(tensor: onnx.TensorProto, readers: list[onnx.NodeProto], config: PackSharedWeightsConfig
                  ) -> tuple[np.ndarray, np.ndarray, int, tuple[int, ...], int] | None:
    """(codebook [C, K], indices [C, rest], bits, shape, channel axis) when ``tensor`` is a shared
    weight worth packing, else None."""
    if tensor.data_type != onnx.TensorProto.FLOAT or np.prod(tensor.dims) < config.min_weights or len(tensor.dims) < 2:
        return None
    if not readers or any(r.op_type not in PACKABLE_READERS or list(r.input).index(tensor.name) != 1 for r in readers):
        return None
    axes = {_output_axis(r, len(tensor.dims)) for r in readers}
    if len(axes) != 1:
        return None
    axis = axes.pop()
    weight = numpy_helper.to_array(tensor)
    rows = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    if len(np.unique(rows[0])) > config.max_clusters:  # the common case, unshared: one row tells
        return None
    uniques = [np.unique(row, return_inverse=True) for row in rows]
    width = max(len(values) for values, _ in uniques)
    if width > config.max_clusters:
        return None
    bits = 4 if width <= 16 else 8
    codebook = np.zeros((rows.shape[0], width), np.float32)
    for c, (values, _) in enumerate(uniques):
        codebook[c, : len(values)] = values
    if (weight.size * bits / 8 + codebook.nbytes) > config.max_packed_ratio * weight.nbytes:
        return None
    indices = np.stack([inverse.reshape(-1) for _, inverse in uniques]).astype(np.uint8)
    return codebook, indices, bits, weight.shape, axis


def _output_axis(reader: onnx.NodeProto, rank: int) -> int:
    """The axis of a weight that indexes output channels: a per-channel scale (folded BatchNorm) runs along it."""
    if reader.op_type == "ConvTranspose":
        return 1  # [C_in, C_out / group, k...]
    if reader.op_type == "MatMul" or (reader.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in reader.attribute)):
        return rank - 1  # [K, N]
    return 0


def _packed(name: str, codebook: np.ndarray, indices: np.ndarray, bits: int, shape: tuple[int, ...], axis: int
            ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes that rebuild ``name`` from its codebook and indices (all constants: ORT folds them)."""
    p = f"{name}__shared"
    inits = [numpy_helper.from_array(codebook, f"{p}/codebook")]
    nodes: list[onnx.NodeProto] = []
    count = indices.size
    flat_indices = f"{p}/indices"
    if bits == 4:  # two indices per byte: low nibble first
        flat = indices.reshape(-1)
        if count % 2:
            flat = np.concatenate([flat, np.zeros(1, np.uint8)])
        inits += [numpy_helper.from_array((flat[0::2] | (flat[1::2] << 4)).astype(np.uint8), f"{p}/packed"),
                  numpy_helper.from_array(np.array([4], np.uint8), f"{p}/four"),
                  numpy_helper.from_array(np.array([-1, 1], np.int64), f"{p}/column"),
                  numpy_helper.from_array(np.array([-1], np.int64), f"{p}/flat"),
                  numpy_helper.from_array(np.array([0], np.int64), f"{p}/zero"),
                  numpy_helper.from_array(np.array([count], np.int64), f"{p}/count")]
        nodes += [
            helper.make_node("BitShift", [f"{p}/packed", f"{p}/four"], [f"{p}/high"], direction="RIGHT", name=f"{p}/high"),
            helper.make_node("BitShift", [f"{p}/high", f"{p}/four"], [f"{p}/high_up"], direction="LEFT", name=f"{p}/high_up"),
            helper.make_node("Sub", [f"{p}/packed", f"{p}/high_up"], [f"{p}/low"], name=f"{p}/low"),
            helper.make_node("Reshape", [f"{p}/low", f"{p}/column"], [f"{p}/low_column"], name=f"{p}/low_column"),
            helper.make_node("Reshape", [f"{p}/high", f"{p}/column"], [f"{p}/high_column"], name=f"{p}/high_column"),
            helper.make_node("Concat", [f"{p}/low_column", f"{p}/high_column"], [f"{p}/pairs"], axis=1, name=f"{p}/pairs"),
            helper.make_node("Reshape", [f"{p}/pairs", f"{p}/flat"], [f"{p}/unpacked"], name=f"{p}/unpacked"),
            helper.make_node("Slice", [f"{p}/unpacked", f"{p}/zero", f"{p}/count"], [flat_indices], name=f"{p}/indices"),
        ]
    else:
        inits.append(numpy_helper.from_array(indices.reshape(-1), flat_indices))
    moved = (shape[axis], *shape[:axis], *shape[axis + 1:])  # channels first, as the codebooks are
    inits += [numpy_helper.from_array(np.array(indices.shape, np.int64), f"{p}/rows"),
              numpy_helper.from_array(np.array(moved, np.int64), f"{p}/shape")]
    nodes += [
        helper.make_node("Reshape", [flat_indices, f"{p}/rows"], [f"{p}/index_rows"], name=f"{p}/index_rows"),
        helper.make_node("Cast", [f"{p}/index_rows"], [f"{p}/index_rows_int"], to=onnx.TensorProto.INT32, name=f"{p}/cast"),
        helper.make_node("GatherElements", [f"{p}/codebook", f"{p}/index_rows_int"], [f"{p}/values"], axis=1, name=f"{p}/lookup"),
    ]
    if axis:  # move the channels back where the reader wants them
        perm = [*range(1, axis + 1), 0, *range(axis + 1, len(shape))]
        nodes += [helper.make_node("Reshape", [f"{p}/values", f"{p}/shape"], [f"{p}/channels_first"], name=f"{p}/reshape"),
                  helper.make_node("Transpose", [f"{p}/channels_first"], [name], perm=perm, name=f"{p}/transpose")]
    else:
        nodes.append(helper.make_node("Reshape", [f"{p}/values", f"{p}/shape"], [name], name=f"{p}/reshape"))
    return nodes, inits


def zipped_file_size(path: Any) -> int:
    """Bytes of the file compressed as a download or an app store would (zlib, level 9)."""
    return len(zlib.compress(Path(path).read_bytes(), 9))


PACK_PASS = PassInfo(PackSharedWeightsConfig, pack_shared_weights, name="pack_shared_weights",
                     label="packing shared weights into indices and codebooks", kind="onnx")
PASS = PassInfo(WeightShareConfig, share_weights, name="share_weights", label="sharing weights (k-means)", kind="torch",
                step="prune:share", finishing=PackSharedWeightsConfig())
