"""The accuracy search's lever on an NPU target: where int8 costs too much, a group gets 16-bit
activations (QNN's W8A16) instead of going back to float, because a float node on QNN's HTP
is a node on the CPU.

``WideActivationModel`` stands where the search uses a ``QdqModel``: ``with_float(groups)`` returns
the model with those groups' activations in 16 bits, quantized again by ORT with QNN's rules from
the same calibrated ranges (ORT adds the conversions where 8 and 16 bits meet).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import onnx

from edgeport.runtimes.ep_plugins import QNN
from edgeport.passes.qdq_graph import QdqModel

_KEEP = 8  # quantized variants held in memory: the search re-tries recent mixes


class WideActivationModel:
    def __init__(self, qdq: onnx.ModelProto, source: onnx.ModelProto, source_path: Path, ranges: Path, method: str,
                 op_types: list[str], quant: Any, exclude: tuple[str, ...], work: Path):
        self.qdq, self.source = qdq, source
        self.quantized = QdqModel(qdq, source).quantized
        self._args = (source_path, ranges, method, op_types, quant, exclude)
        self.target_options = dict(quant.target_options)  # the QNN target's provider options (htp_arch, soc_model)
        self._work = work
        self._variants: OrderedDict[frozenset[str], onnx.ModelProto] = OrderedDict()
        self.required: frozenset[str] = frozenset()  # 16-bit in every variant: QNN refuses them at 8 bits
        # set: trials run on QNN's HTP with these provider options (the NPU's own arithmetic), else ORT's CPU emulation
        self.npu_options: dict[str, str] | None = None
        self.uncompilable = 0  # trials whose mix QNN could not compile
        self._start_session: Any = None

    def session(self, wide: set[str] | frozenset[str]) -> Any:
        """A session on ``with_float(wide)`` for a search trial: on QNN's HTP where ``npu_options`` is
        set, else on ORT's CPU kernels. A mix QNN cannot compile gets the start's session, so it
        scores no better than the start and no step keeps it."""
        from edgeport.passes.int8_eval import session_for

        model = self.with_float(wide)
        if self.npu_options is None:
            return session_for(model)
        session = npu_session(model, self.npu_options)
        if session is None:  # QNN cannot compile this mix: it scores as the start does, so no step keeps it
            self.uncompilable += 1
            if self._start_session is None:
                self._start_session = npu_session(self.with_float(set()), self.npu_options)
            session = self._start_session
        return session

    def float_at_runtime(self, wide: set[str] | frozenset[str]) -> set[str]:
        """QdqModel's interface: widening a group to 16 bits widens nothing else."""
        return set(wide)

    def with_float(self, wide: set[str] | frozenset[str]) -> onnx.ModelProto:
        """The model with ``wide`` groups' activations in 16 bits (the name keeps QdqModel's interface)."""
        from edgeport.passes.quantize_static import quantize_from_ranges

        key = (frozenset(wide) | self.required) & frozenset(self.quantized)
        if not key:
            return self.qdq
        if key in self._variants:
            self._variants.move_to_end(key)
            return self._variants[key]
        source_path, ranges, method, op_types, quant, exclude = self._args
        out = self._work / "w8a16-variant.onnx"
        quantize_from_ranges(source_path, out, ranges, method, op_types, quant, False, exclude, wide_nodes=key)
        model = onnx.load(str(out))
        self._variants[key] = model
        if len(self._variants) > _KEEP:
            self._variants.popitem(last=False)
        return model




def qnn_installed() -> bool:
    import onnxruntime as ort

    from edgeport.runtimes import ep_plugins

    return QNN in ep_plugins.available_providers(ort)


def npu_session(model: onnx.ModelProto | str, options: dict[str, str]) -> Any:
    """A session running ``model`` whole on QNN's HTP, or None where QNN does not take all of it."""
    return _on_npu(model, options)[0]


def qnn_compile_error(model: onnx.ModelProto, options: dict[str, str]) -> str | None:
    """Why QNN cannot compile ``model`` whole for the target (None: it can): HTP's compiler refuses
    some 8/16-bit mixes that its op checks accept (QNN_COMMON_ERROR_MEM_ALLOC at graph finalize)."""
    return _on_npu(model, options)[1]


def _on_npu(model: onnx.ModelProto | str, options: dict[str, str]) -> tuple[Any, str | None]:
    """(a session running ``model`` whole on QNN's HTP, None) or (None, why QNN cannot)."""
    import onnxruntime as ort

    from edgeport.errors import first_line
    from edgeport.runtimes import ep_plugins

    session_options = ort.SessionOptions()
    session_options.log_severity_level = 4
    session_options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    source = model if isinstance(model, str) else model.SerializeToString()
    try:
        return ep_plugins.create_session(ort, source, session_options, [QNN], {QNN: options}), None
    except Exception as exc:
        return None, first_line(exc)


def compilable_mix(model: WideActivationModel, wide: set[str], op_of: dict[str, str], options: dict[str, str]) -> tuple[set[str], dict[str, Any]]:
    """``wide``, or the largest part of it QNN compiles: 16-bit taken back to 8 one op type at a
    time, then cumulatively. Returns the mix and what was done, for the report."""
    error = qnn_compile_error(model.with_float(wide), options)
    if error is None:
        return wide, {"compiles": True}
    types = sorted({op_of.get(g, "?") for g in wide})
    for op_type in types:  # one op type whose 16-bit form the compiler rejects
        trial = {g for g in wide if op_of.get(g) != op_type}
        if qnn_compile_error(model.with_float(trial), options) is None:
            return trial, {"compiles": True, "narrowed_to_8_bits": [op_type], "error": error}
    current, narrowed = set(wide), []
    for op_type in types:
        current = {g for g in current if op_of.get(g) != op_type}
        narrowed.append(op_type)
        if qnn_compile_error(model.with_float(current), options) is None:
            return current, {"compiles": True, "narrowed_to_8_bits": narrowed, "error": error}
    return set(), {"compiles": qnn_compile_error(model.with_float(set()), options) is None, "narrowed_to_8_bits": types, "error": error}


def widen_for_coverage(model: WideActivationModel, options: dict[str, str]) -> dict[str, Any]:
    """Nodes QNN refuses at 8 bits but takes with 16-bit activations become 16-bit in every variant
    (``model.required``). Returns what was found, for the report; nothing when QNN is not installed here."""
    import onnxruntime as ort

    from edgeport.runtimes import ep_plugins

    if not qnn_installed():
        return {"checked": False, "why": f"{QNN} is not installed here (pip install 'edgeport[qnn]'): 8-bit refusals not checked"}

    def refused(candidate: onnx.ModelProto) -> dict[str, dict[str, str]]:
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return {r["node"]: r for r in ep_plugins.refusals(ort, candidate.SerializeToString(), session_options, [QNN], {QNN: options})}

    at_8 = refused(model.qdq)
    groups = set(at_8) & set(model.quantized)
    if not groups:
        return {"checked": True, "widened": [], "refused_at_8_bits": len(at_8)}
    at_16 = refused(model.with_float(groups))
    taken = frozenset(groups - set(at_16))
    model.required = taken
    return {"checked": True, "refused_at_8_bits": len(at_8),
            "widened": [{"node": n, "op_type": at_8[n]["op_type"], "reason_at_8_bits": at_8[n]["reason"]} for n in sorted(taken)],
            "still_refused_at_16_bits": sorted(groups - taken)}


def wide_activation_share(model: onnx.ModelProto) -> dict[str, Any]:
    """How many of the quantized activations are 16-bit: QuantizeLinear nodes by their zero point's type."""
    constants = {t.name: t.data_type for t in model.graph.initializer}
    wide = total = 0
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        total += 1
        wide += constants.get(node.input[2]) in (onnx.TensorProto.UINT16, onnx.TensorProto.INT16)
    return {"activations_16bit": wide, "activations_quantized": total, "share": round(wide / total, 4) if total else 0.0}


def npu_trial(model: WideActivationModel, split: Any, scorer: Any, samples: int) -> tuple[Any, float]:
    """The all-int8 model scored on QNN's HTP (at most ``samples`` of ``split``), and what a
    search trial on the whole split would take there (compile plus every sample), in seconds. None
    where QNN is not installed or does not take the whole model."""
    if not qnn_installed():
        return None, 0.0
    started = time.perf_counter()
    session = npu_session(model.with_float(set()), model.target_options)
    if session is None:
        return None, 0.0
    compiled = time.perf_counter()
    sample = split.subset(list(range(min(len(split), samples)))) if split.carry is None else split
    score = scorer.score(session, sample)
    per_sample = (time.perf_counter() - compiled) / max(len(sample), 1)
    return score, (compiled - started) + per_sample * len(split)


def npu_verdict_session(path: str, target_options: tuple[tuple[str, str], ...], notes: list[str]) -> Any:
    """A session on QNN's HTP for the final verdict, or None (QNN not installed, or it does not take
    the whole model: validation then names each refused node)."""
    if not qnn_installed():
        notes.append("QNN is not installed here: the int8 verdict is ORT's CPU emulation of the QDQ model, not the NPU's arithmetic "
                      "(pip install 'edgeport[qnn]')")
        return None
    session = npu_session(path, dict(target_options))
    if session is None:
        notes.append("QNN does not take the whole int8 model: the int8 verdict is ORT's CPU emulation of it")
    return session


def start_on_npu(model: WideActivationModel, search: Any, scorer: Any, samples: int, trial_limit_s: float,
                 improvements: dict[str, Any]) -> Any:
    """Ready ``model`` for a search on the NPU: what QNN refuses at 8 bits but takes at 16 is 16-bit
    from the start; trials run on the simulator where one takes at most ``trial_limit_s`` (ORT's CPU
    kernels emulate HTP's arithmetic, and pessimistically: HTP keeps more precision inside Softmax
    and LayerNorm). Returns the all-int8 score on QNN's HTP, or None where QNN cannot run it."""
    improvements["widened_for_coverage"] = widen_for_coverage(model, model.target_options)
    start, trial_s = npu_trial(model, search, scorer, samples)
    quick = start is not None and trial_s <= trial_limit_s
    improvements["trials_scored_on"] = (
        "QNN's HTP (the simulator on this host)" if quick else
        f"ORT's CPU kernels: one trial on QNN's HTP simulator would take {trial_s:.0f} s here" if start is not None else
        "ORT's CPU kernels: QNN is not installed here, or does not take the all-int8 model")
    if quick:
        model.npu_options = dict(model.target_options)
    return start
