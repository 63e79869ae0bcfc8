"""The float model the int8 search starts from: ORT's preprocessing, fewer rounding points, names on
every node, QNN's fusions where the target is QNN, and GRU/LSTM cells rewritten for int8."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from edgeport.passes.context import PassContext
from edgeport.passes.int8_graph_facts import name_nodes
from edgeport.passes.pre_quant_fusion import fuse_for_quantization
from edgeport.passes.qnn_rules import prepare_for_qnn
from edgeport.passes.quantize_static import StaticInt8Config, check_exclusions, preprocess_for_quantization
from edgeport.passes.recurrent_scan import prepared_recurrences


@dataclass
class SearchSource:
    path: Path  # the model calibrated and quantized (saved in the work folder)
    model: onnx.ModelProto
    folded: onnx.ModelProto  # before the recurrent rewrite: a reverted cell goes back to its node from here
    recurrences: Any  # what the recurrent rewrite did (None on an NPU, which takes cells whole or not at all)


def search_source(path: Path, quant: StaticInt8Config, recurrent: str, on_npu: bool, ctx: PassContext, work: Path,
                  notes: list[str]) -> SearchSource:
    source_path = preprocess_for_quantization(path, work, notes) if quant.preprocess else path
    source = onnx.load(str(source_path))
    name_nodes(source)  # before fusing, so the names the search reports stay the names exclusions use
    if quant.preprocess:
        source, fusions = fuse_for_quantization(source, ctx.target_providers, frozenset(quant.exclude_nodes))
        notes.extend([fusions.note()] if fusions.note() else [])
    if on_npu:  # before calibration: the ranges must see the fused ops and the finite fills
        source = prepare_for_qnn(source, work, notes)
    name_nodes(source)
    folded, recurrences = source, None
    if not on_npu:  # ORT's CPU kernels
        source, recurrences = prepared_recurrences(source, recurrent, quant, ctx.target_provider)
    onnx.save(source, str(work / "source.onnx"))
    check_exclusions(source, quant)
    return SearchSource(work / "source.onnx", source, folded, recurrences)
