"""Static int8 quantization with real calibration data, wrapping ONNX Runtime's quantize_static.

edgeport runs the calibration itself, in chunks of a few batches so memory stays bounded even for
histogram methods, and stores the tensor ranges in a cache keyed by model, data and settings: a
re-run with the same inputs skips calibration. ORT then quantizes from those ranges.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import onnx

from edgeport.artifacts import OnnxArtifact
from edgeport.errors import DataError, QuantizationError, UsageError, first_line
from edgeport.passes.context import PassContext, QuantTarget
from edgeport.passes.pair_bounded_weights import bound_weight_pairs, bounds_pairs
from edgeport.passes.parity_check import parity_between
from edgeport.passes.pre_quant_fusion import fused_for_quantization
from edgeport.passes.qdq_graph import sort_topologically
from edgeport.passes.quant_defaults import choose_op_types, choose_reduce_range, eight_bit_under_reduce_range, reduce_range_decision
from edgeport.passes.recurrent_int8 import quantize_recurrences
from edgeport.runtimes.hostcpu import host_cpu
from edgeport.passes.calibration import METHODS, ONE_SHAPE_METHODS, calibrate, ort_method, quiet_ort
from edgeport.passes.registry import PassInfo

FORMATS = ("qdq", "qoperator")
TYPES = ("uint8", "int8")
ACTIVATION_TYPES = (*TYPES, "uint16")  # uint16: QNN HTP's 16-bit activations
# how the QDQ graph is laid out: ONNX Runtime's CPU kernels' way, or QNN's (get_qnn_qdq_config:
# every op quantized, output Q/DQ everywhere, symmetric signed weights, 16-bit where asked)
RULES = ("onnxruntime", "qnn")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StaticInt8Config:
    format: str = "qdq"
    activation_type: str = "uint8"
    # zero point 0 for activations: TensorRT's rule. XNNPACK and CPU int8 kernels take a zero point.
    activation_symmetric: bool = False
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool | None = None  # None: chosen from the target CPU (see quant_defaults)
    weight_symmetric: bool | None = None  # None: symmetric for signed weight types
    rules: str = "onnxruntime"
    # QNN only: the target's provider options (htp_arch, soc_model), for checks that QNN takes the result
    target_options: tuple[tuple[str, str], ...] = ()
    calibration_method: str = "minmax"
    percentile: float = 99.999
    op_types: tuple[str, ...] | None = None  # None: chosen from the model family
    exclude_op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    calibration_samples: int = 256
    calibration_batch_size: int = 8
    preprocess: bool = True
    use_cache: bool = True
    eval_samples: int = 1000

    def __post_init__(self) -> None:
        _one_of("format", self.format, FORMATS)
        _one_of("calibration_method", self.calibration_method, METHODS)
        _one_of("activation_type", self.activation_type, ACTIVATION_TYPES)
        _one_of("weight_type", self.weight_type, TYPES)
        _one_of("rules", self.rules, RULES)
        if self.activation_type == "uint16" and self.rules != "qnn":
            raise UsageError("uint16 activations are QNN's (W8A16)", fix="use uint8 or int8 activations, or a QNN profile")
        if self.rules == "qnn" and self.format != "qdq":
            raise UsageError(f"QNN takes QDQ models, not {self.format}", fix="drop --quant-format (QNN profiles quantize to qdq)")
        if not 0 < self.percentile <= 100:
            raise UsageError(f"percentile {self.percentile} is not within (0, 100]", fix="use e.g. 99.999")
        for name in ("calibration_samples", "calibration_batch_size", "eval_samples"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} {getattr(self, name)} is below 1", fix=f"set {name} to 1 or more")
        if self.format == "qoperator" and self.activation_type == "int8" and self.weight_type == "uint8":
            raise UsageError("int8 activations with uint8 weights are not supported by ONNX Runtime", fix="use uint8 activations with int8 weights")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{name} '{value}' is unknown", fix=f"use one of {', '.join(allowed)}")


def quantize_static_int8(model: OnnxArtifact, config: StaticInt8Config, *, ctx: PassContext) -> OnnxArtifact:
    _require_cacheable_ort()

    if ctx.calibration is None:
        raise QuantizationError(
            "static int8 quantization needs calibration data",
            fix="pass --calib DATA (real samples), --calib random to accept unrepresentative ranges, or --no-quantize",
        )
    started = time.perf_counter()
    notes: list[str] = []
    work = ctx.work_dir / "quantize"
    work.mkdir(parents=True, exist_ok=True)

    config = per_tensor_if_needed(config, model.path, notes)
    source_path = preprocess_for_quantization(model.path, work, notes) if config.preprocess else model.path
    check_exclusions(onnx.load(str(source_path), load_external_data=False), config)  # the user's names, before any rewrite
    if config.preprocess:
        source_path = fused_for_quantization(source_path, work, ctx.target_providers, config.exclude_nodes, notes)
    if config.rules == "qnn":
        from edgeport.passes.qnn_rules import prepared_for_qnn

        source_path = prepared_for_qnn(source_path, work, notes)
    proto = onnx.load(str(source_path), load_external_data=False)

    op_choice = choose_op_types(proto) if config.op_types is None and config.rules != "qnn" else None
    op_types = op_types_to_quantize(config, list(op_choice.value) if op_choice and op_choice.value else default_op_types(config, proto))
    reduce_range, range_rule = resolve_reduce_range(config.reduce_range, ctx, config.rules)

    # One pass over the data: validates it against the model, fingerprints it, and sees if shapes vary.
    specs = model.inputs
    scan = ctx.calibration.scan(specs, config.calibration_batch_size, config.calibration_samples)
    batches, shapes = scan.batches, scan.shapes
    if batches == 0:
        raise DataError(f"calibration data '{ctx.calibration.description}' yields no samples", fix="give at least one sample")

    method = config.calibration_method
    if method in ONE_SHAPE_METHODS and len(shapes) > 1:
        notes.append(f"{method} calibration needs one input shape but the data has {len(shapes)}; used minmax instead (pad samples to one shape to use {method})")
        method = "minmax"
    ranges_path, cache_hit = calibrate(source_path, specs, op_types, method, config, ctx, scan, work)
    out_path = ctx.work_dir / "model.int8.onnx"
    quantize_from_ranges(source_path, out_path, ranges_path, method, op_types, config, reduce_range, config.exclude_nodes)
    artifact = OnnxArtifact.from_file(out_path, lineage=(*model.lineage, "quantize_static"))
    if artifact.size_bytes > model.size_bytes:
        notes.append(
            f"the int8 model is larger than fp32 ({artifact.size_bytes / model.size_bytes:.0%}): constants shared by several nodes "
            "(e.g. an unrolled recurrent cell's biases) are quantized once per node; keep fp32 (--no-quantize) or exclude those op types"
        )
    reference_ctx = PassContext(work_dir=ctx.work_dir, seed=ctx.seed, calibration=ctx.calibration, evaluation=ctx.evaluation)
    parity = parity_between(model, artifact, reference_ctx, samples=config.eval_samples)
    decisions = {
        "op_types": op_choice.rule if op_choice else "given in the config" if config.op_types is not None else QNN_OP_RULE,
        "reduce_range": reduce_range_decision(range_rule, reduce_range, proto, op_types, config),
    }
    ctx.record_pass(
        PASS, config, started,
        metrics={
            "calibration_method": method,
            "calibration_batches": batches,
            "calibration_cache": "hit" if cache_hit else ("stored" if config.use_cache else "off"),
            "op_types_quantized": sorted(op_types),
            "reduce_range": reduce_range,
            "decisions": decisions,
            "size_ratio": round(artifact.size_bytes / model.size_bytes, 4),
            "parity_vs_fp32": parity,
        },
        source=model,
        result=artifact,
        notes=notes,
    )
    return artifact


QNN_OP_RULE = "every op type: QNN runs only quantized ops on its HTP (a float op there means the CPU)"


def default_op_types(config: StaticInt8Config, proto: onnx.ModelProto) -> list[str]:
    """Op types to quantize when the config names none and no family rule applies: for QNN every op
    type in the graph but Cast (get_qnn_qdq_config's rule), else every type ORT quantizes."""
    if config.rules == "qnn":
        return sorted({n.op_type for n in proto.graph.node} - {"Cast"})
    return all_quantizable_op_types()


def quantize_from_ranges(source_path: Path, out_path: Path, ranges_path: Path, method: str, op_types: list[str],
                         config: StaticInt8Config, reduce_range: bool, exclude_nodes: tuple[str, ...] | list[str],
                         wide_nodes: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """ORT's quantize_static from stored ranges: no calibration pass, so it can run many times.
    ``wide_nodes`` (QNN rules only) take 16-bit activations in and out: QNN's W8A16 for layers
    that 8 bits cost too much, converted to and from their neighbours' type where they meet.
    Returns the model written to ``out_path``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if config.rules == "qnn":
        from edgeport.passes.qnn_rules import quantize_for_qnn

        quantize_for_qnn(source_path, out_path, ranges_path, method, op_types, config, exclude_nodes, wide_nodes)
        return onnx.load(str(out_path))
    extra_options: dict[str, Any] = {"ActivationSymmetric": config.activation_symmetric}
    if config.format == "qdq":
        # A MatMul/Gemm output is quantized only where an int8 reader needs it (as NNCF places
        # quantizers): ORT runs DQ->MatMul->float as MatMulIntegerToFloat and Gemm as QGemm with a
        # float output, so rounding a float-bound output adds error and saves nothing.
        extra_options["OpTypesToExcludeOutputQuantization"] = [t for t in ("MatMul", "Gemm") if t in op_types]
    # the model is read only where reduce_range bounds weights
    full_range = eight_bit_under_reduce_range(onnx.load(str(source_path), load_external_data=False), reduce_range, op_types) if reduce_range else []
    if full_range:  # 8 bits where the kernel cannot saturate (ORT: per-channel overrides name the axis)
        override = {"reduce_range": False, **({"axis": 0} if config.per_channel else {})}
        extra_options["TensorQuantOverrides"] = {name: [dict(override)] for name in full_range}
    with quiet_ort():
        try:
            quantize_static(
                str(source_path),
                str(out_path),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ if config.format == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=op_types,
                per_channel=config.per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8 if config.activation_type == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8 if config.weight_type == "int8" else QuantType.QUInt8,
                nodes_to_exclude=list(exclude_nodes),
                calibrate_method=ort_method(method),
                extra_options=extra_options,
                calibration_cache_path=str(ranges_path),
            )
        except Exception as exc:
            raise QuantizationError(f"ONNX Runtime quantization failed: {first_line(exc)[:300]}", fix="exclude the failing op type or node (--exclude-op-types / --exclude-nodes)") from exc
    quantized = onnx.load(str(out_path))
    bounded = bound_weight_pairs(quantized, onnx.load(str(source_path)), set(full_range)) \
        if bounds_pairs(reduce_range, config) else []
    # ORT's quantizer never enters a Scan: the int8 search's recurrences get their int8 step here
    stepped = quantize_recurrences(quantized, activation_type=config.activation_type, reduce_range=reduce_range,
                                   exclude=set(exclude_nodes)) if "MatMul" in op_types else 0
    if sort_topologically(quantized) or stepped or bounded:  # sorted: an If moved above what its branches read
        onnx.save(quantized, str(out_path))
    return quantized


def _require_cacheable_ort() -> None:
    import inspect

    import onnxruntime
    from onnxruntime.quantization import quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise QuantizationError(
            f"onnxruntime {onnxruntime.__version__} cannot quantize from stored calibration ranges",
            fix="pip install 'onnxruntime>=1.32' (edgeport[torch] pins it)",
        )


def op_types_to_quantize(config: StaticInt8Config, default: list[str]) -> list[str]:
    """The config's op types (``default`` when it names none) less its excluded ones; never empty."""
    op_types = list(config.op_types) if config.op_types is not None else default
    op_types = [t for t in op_types if t not in set(config.exclude_op_types)]
    if not op_types:
        raise UsageError("every op type is excluded from quantization", fix="exclude fewer op types, or use --no-quantize")
    return op_types


def per_tensor_if_needed(config: Any, path: Path, notes: list[str]) -> Any:
    """``config`` (any config with ``per_channel``), per tensor when the file's opset cannot express per-channel int8."""
    from edgeport.passes.opset_upgrade import per_channel_allowed

    allowed, reason = per_channel_allowed(path)
    if config.per_channel and not allowed:
        notes.append(reason)
        return dataclasses.replace(config, per_channel=False)
    return config


def resolve_reduce_range(given: bool | None, ctx: PassContext, rules: str = "onnxruntime") -> tuple[bool, str]:
    """reduce_range as given, or chosen from the target CPU (the profile's, else this host's), with its rule."""
    if rules == "qnn":
        return False, "off: QNN's HTP kernels do not saturate as x86 u8*s8 ones do"
    if given is not None:
        return given, "given in the config"
    choice = choose_reduce_range(ctx.quant_target or host_quant_target())
    return choice.value, choice.rule


def host_quant_target() -> QuantTarget:
    cpu = host_cpu()
    return QuantTarget(arch=cpu.arch, has_vnni=cpu.has_vnni, source=f"this host ({cpu.model_name})")


def all_quantizable_op_types() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def preprocess_for_quantization(path: Path, work: Path, notes: list[str]) -> Path:
    """ORT's quant_pre_process (shape inference for quantization); symbolic inference fails on some
    transformer graphs, so retry without it before giving up on preprocessing altogether."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if _shapes_known(path):
        return path  # the optimize step inferred every shape already; quant_pre_process would add nothing
    out = (work / "preprocessed.onnx").absolute()
    for skip_symbolic in (False, True):
        try:
            # Symbolic shape inference saves 'sym_shape_infer_temp.onnx' and its data to the current
            # directory when it fails: run it in the work folder, never in the user's.
            with quiet_ort(), working_directory(work):
                quant_pre_process(str(Path(path).absolute()), str(out), skip_optimization=True, skip_symbolic_shape=skip_symbolic)
            if skip_symbolic:
                notes.append("symbolic shape inference failed in quant_pre_process; preprocessed without it")
            return out
        except Exception as exc:
            reason = first_line(exc)[:200]
    notes.append(f"quant_pre_process failed ({reason}); quantized the model as it is")
    return path


@contextlib.contextmanager
def working_directory(folder: Path) -> Iterator[None]:
    """Run a library call that writes to the current directory inside ``folder`` instead."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _shapes_known(path: Path) -> bool:
    """Every node output carries a shape (static or symbolic) in the file."""
    graph = onnx.load(str(path), load_external_data=False).graph
    typed = {v.name for v in (*graph.value_info, *graph.output) if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
    return all(o in typed for n in graph.node for o in n.output if o)


def check_exclusions(proto: onnx.ModelProto, config: StaticInt8Config) -> None:
    names = {n.name for n in proto.graph.node}
    for node in config.exclude_nodes:
        if node not in names:
            import difflib

            near = difflib.get_close_matches(node, sorted(names), n=1)
            raise UsageError(f"node '{node}' to exclude is not in the model", fix=f"did you mean '{near[0]}'?" if near else "list node names with a viewer such as Netron")


PASS = PassInfo(StaticInt8Config, quantize_static_int8, name="quantize_static", label="quantizing to int8", kind="onnx", cacheable=True, precision="int8")
