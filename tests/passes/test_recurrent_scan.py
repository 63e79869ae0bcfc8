"""GRU/LSTM cells into int8: the Scan rewrite is exact in float for every form it takes, its int8
step stays faithful, the search reaches 0% float MACs on a recurrent net, a revert gives the float
step back, and small cells (where ORT's fused kernel is faster) stay as they are, with the reason."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeport.artifacts import OnnxArtifact
from edgeport.data import open_data
from edgeport.passes import PassContext
from edgeport.passes.fidelity import FidelityTarget
from edgeport.passes.int8_eval import session_for
from edgeport.passes.int8_graph_facts import name_nodes
from edgeport.passes.qdq_graph import QdqModel
from edgeport.passes.quantize_search import AccuracyAwareInt8Config, quantize_accuracy_aware
from edgeport.passes.recurrent_int8 import is_int8_recurrence, quantize_recurrences, restore_cells
from edgeport.passes.recurrent_scan import unfold_recurrences
from edgeport.passes.sensitivity import node_mac_counts
from tests.conftest import npz_file


def _torch_rnn(kind: str, bidirectional: bool, layers: int = 1, hidden: int = 24) -> onnx.ModelProto:
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = getattr(torch.nn, kind)(16, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)

        def forward(self, x):
            y, _ = self.rnn(x)
            return y

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.onnx.export(Net().eval(), (torch.randn(2, 7, 16),), buffer, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch", 1: "time"}}, opset_version=17, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    name_nodes(model)
    return model


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return session_for(model).run(None, feed)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_scan_form_computes_what_the_cell_computes_at_any_batch_and_length(kind, bidirectional):
    source = _torch_rnn(kind, bidirectional, layers=2)
    model, scans, skipped = unfold_recurrences(source, min_step_macs=0)
    onnx.checker.check_model(model, full_check=True)
    assert not skipped and len(scans) == 2 * (2 if bidirectional else 1)
    assert not any(n.op_type in ("GRU", "LSTM") for n in model.graph.node)
    for batch, steps in ((1, 5), (3, 19)):  # neither is the export's 2 x 7
        x = np.random.default_rng(batch).standard_normal((batch, steps, 16)).astype(np.float32)
        np.testing.assert_allclose(_run(model, {"x": x})[0], _run(source, {"x": x})[0], atol=2e-6)


def _onnx_cell(op: str, linear_before_reset: int, initial_state: str, direction: str = "forward") -> onnx.ModelProto:
    """A cell as other converters write it: every output used; ``initial_state`` "none", "zeros"
    (an all-zero initializer) or "input" (a graph input)."""
    rng = np.random.default_rng(0)
    hidden, width, gates = 8, 6, {"GRU": 3, "LSTM": 4}[op]
    dirs = 2 if direction == "bidirectional" else 1
    inits = [numpy_helper.from_array(rng.standard_normal((dirs, gates * hidden, width)).astype(np.float32) * 0.5, "W"),
             numpy_helper.from_array(rng.standard_normal((dirs, gates * hidden, hidden)).astype(np.float32) * 0.5, "R"),
             numpy_helper.from_array(rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32) * 0.1, "B")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["time", "batch", width])]
    cell_inputs = ["x", "W", "R", "B", ""]
    states = ["h0", "c0"] if op == "LSTM" else ["h0"]
    if initial_state == "input":
        inputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, [dirs, "batch", hidden]) for s in states]
        cell_inputs += states
    elif initial_state == "zeros":  # a fixed batch of 3, as a converter that folded the state writes it
        inits += [numpy_helper.from_array(np.zeros((dirs, 3, hidden), np.float32), s) for s in states]
        cell_inputs += states
    outputs = ["y", "y_h"] + (["y_c"] if op == "LSTM" else [])
    attributes = {"hidden_size": hidden, "direction": direction}
    if op == "GRU":
        attributes["linear_before_reset"] = linear_before_reset
    node = helper.make_node(op, cell_inputs, outputs, name="cell", **attributes)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op,linear_before_reset,initial_state,direction", [
    ("GRU", 0, "none", "forward"), ("GRU", 0, "zeros", "reverse"), ("GRU", 1, "zeros", "bidirectional"),
    ("LSTM", 0, "zeros", "forward"), ("LSTM", 0, "none", "bidirectional"),
])
def test_every_output_survives_the_rewrite(op, linear_before_reset, initial_state, direction):
    source = _onnx_cell(op, linear_before_reset, initial_state, direction)
    model, scans, skipped = unfold_recurrences(source, min_step_macs=0)
    assert scans and not skipped
    feed = {"x": np.random.default_rng(1).standard_normal((9, 3, 6)).astype(np.float32)}
    for got, want in zip(_run(model, feed), _run(source, feed)):
        np.testing.assert_allclose(got, want, atol=2e-6)
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    assert quantize_recurrences(quantized, activation_type="int8", reduce_range=False) == len(scans)
    for got, want in zip(_run(quantized, feed), _run(source, feed)):  # every form's int8 step runs, and stays close
        assert np.abs(got - want).max() < 0.05


def test_a_state_given_from_outside_keeps_the_cell_float():
    """A decoder's initial state can come from a Linear layer, unbounded: the step's fixed (-1, 1)
    scale would clip it (a state of 4 sigma was off by 3.6 on the first step)."""
    model, scans, skipped = unfold_recurrences(_onnx_cell("GRU", 1, "input"), min_step_macs=0)
    assert not scans and "initial state" in skipped["cell"]


def test_cells_it_cannot_rewrite_exactly_are_left_and_named():
    source = _onnx_cell("GRU", 1, "none")
    source.graph.node[0].attribute.append(helper.make_attribute("clip", 3.0))
    model, scans, skipped = unfold_recurrences(source, min_step_macs=0)
    assert not scans and "clip" in skipped["cell"]
    assert [n.op_type for n in model.graph.node] == ["GRU"]
    small = unfold_recurrences(_onnx_cell("GRU", 1, "none", "bidirectional"))[2]["cell"]  # 3 x 8 x 8 per direction: the fused kernel wins
    assert "192 recurrent MACs per step" in small
    assert "excluded" in unfold_recurrences(_onnx_cell("GRU", 1, "none"), min_step_macs=0, keep=frozenset({"cell"}))[2]["cell"]


def test_the_int8_step_stays_within_rounding_of_the_float_step():
    source = _torch_rnn("GRU", False, hidden=64)
    model, _, _ = unfold_recurrences(source, min_step_macs=0)
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    assert quantize_recurrences(quantized, activation_type="uint8", reduce_range=True) == 1
    scan = next(n for n in quantized.graph.node if n.op_type == "Scan")
    assert is_int8_recurrence(scan)
    body = next(a.g for a in scan.attribute if a.name == "body")
    weights = [numpy_helper.to_array(t) for t in body.initializer if t.name.endswith("weight_quantized")]
    assert weights and all(w.dtype == np.int8 for w in weights)
    # under reduce_range no two neighbouring levels along K (the rows, as MLAS pairs them) pass 128, and more than 7 bits are used
    assert all((np.abs(w[0::2].astype(np.int32)) + np.abs(w[1::2].astype(np.int32))).max() <= 128 for w in weights)
    assert max(np.abs(w.astype(np.int32)).max() for w in weights) > 64
    assert not any(t.data_type == TensorProto.FLOAT and len(t.dims) == 2 for t in body.initializer)  # no float weight left
    x = np.random.default_rng(0).standard_normal((2, 40, 16)).astype(np.float32)
    want, got = _run(source, {"x": x})[0], _run(quantized, {"x": x})[0]
    cosine = float((want * got).sum() / np.linalg.norm(want) / np.linalg.norm(got))
    assert 0.999 < cosine < 1.0 - 1e-9  # int8 changed the numbers, and only by rounding


def _audio_gru(hidden: int):
    import torch
    from torch import nn

    class AudioGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.frontend = nn.Sequential(nn.Conv1d(10, hidden, 3, padding=1), nn.ReLU())
            self.gru = nn.GRU(hidden, hidden, batch_first=True)
            self.head = nn.Linear(hidden, 6)

        def forward(self, frames):
            x = self.frontend(frames.transpose(1, 2)).transpose(1, 2)
            out, _ = self.gru(x)
            return self.head(out.mean(1))

    torch.manual_seed(0)
    return AudioGRU().eval()


def test_the_search_puts_a_recurrent_net_in_int8_and_a_revert_gives_the_float_step_back(tmp_path):
    import edgeport

    edgeport.export(_audio_gru(32), inputs=["frames:batchxtimex10"], quantize=False, out_dir=tmp_path / "fp32")
    artifact = OnnxArtifact.from_file(tmp_path / "fp32" / "model.onnx")
    rng = np.random.default_rng(0)
    calib = npz_file(tmp_path, "calib.npz", frames=rng.standard_normal((32, 30, 10)).astype(np.float32))
    evaluation = npz_file(tmp_path, "eval.npz", frames=rng.standard_normal((32, 30, 10)).astype(np.float32))
    target = FidelityTarget(min_cosine=0.99, min_top1_agreement=None)

    def search(mode: str, name: str):
        ctx = PassContext(work_dir=tmp_path / name, calibration=open_data(calib, role="calibration"),
                          evaluation=open_data(evaluation, role="evaluation"))
        result = quantize_accuracy_aware(artifact, AccuracyAwareInt8Config(target=target, recurrent=mode), ctx=ctx)
        return result, ctx.records[-1]

    result, record = search("always", "always")
    metrics = record.metrics
    assert metrics["fidelity"]["met"] and metrics["float_mac_share"] == 0.0
    assert metrics["improvements"]["recurrent_cells"]["rewritten"] == ["/gru/GRU/recurrence"]
    int8 = onnx.load(str(result.path))
    scan = next(n for n in int8.graph.node if n.op_type == "Scan")
    assert is_int8_recurrence(scan)
    feed = {"frames": rng.standard_normal((2, 45, 10)).astype(np.float32)}  # a length calibration never saw
    np.testing.assert_allclose(_run(int8, feed)[0], _run(onnx.load(str(artifact.path)), feed)[0], atol=0.05)

    # the Scan is one group: reverting it puts the float step back, exactly
    source, _, _ = unfold_recurrences(onnx.load(str(artifact.path)), min_step_macs=0)
    qdq = QdqModel(int8, source)
    assert scan.name in qdq.quantized
    reverted = qdq.with_float({scan.name})
    assert not is_int8_recurrence(next(n for n in reverted.graph.node if n.op_type == "Scan"))
    # ...and what ships for a reverted cell is the original GRU, ORT's fused float kernel
    shipped, made = restore_cells(reverted, onnx.load(str(artifact.path)), {scan.name})
    assert "GRU" in {n.op_type for n in shipped.graph.node} and "Scan" not in {n.op_type for n in shipped.graph.node}
    assert scan.name in made and "/gru/GRU/input_projection" in made
    np.testing.assert_allclose(_run(shipped, feed)[0], _run(onnx.load(str(artifact.path)), feed)[0], atol=0.05)
    macs = node_mac_counts(source, feed)
    assert macs[scan.name] == 45 * 2 * 3 * 32 * 32  # steps x batch x the step's weights

    # auto: a 32-wide step is far below where int8 pays on ORT, so the GRU stays, counted as float
    _, auto_record = search("auto", "auto")
    auto = auto_record.metrics
    assert auto["improvements"]["recurrent_cells"]["rewritten"] == []
    assert "/gru/GRU" in auto["improvements"]["recurrent_cells"]["kept_float"]
    assert auto["float_mac_share"] > 0.5  # the GRU reads a Q/DQ'd input, yet ORT computes it in float
    assert any("computes only in float" in note for note in auto_record.notes)


def test_cells_stay_whole_for_other_execution_providers_and_for_excluded_types():
    """The int8 step is ORT's CPU contrib kernel: a CUDA or NNAPI target takes the cell whole."""
    from edgeport.passes import StaticInt8Config
    from edgeport.passes.recurrent_scan import prepared_recurrences

    source = _torch_rnn("GRU", False, hidden=264)  # 3 x 264 x 264 = 209k MACs per step: over auto's 200k
    model, info = prepared_recurrences(source, "auto", StaticInt8Config())
    assert info["rewritten"] == ["/rnn/GRU/recurrence"] and "Scan" in {n.op_type for n in model.graph.node}
    for quant, provider, reason in ((StaticInt8Config(), "CUDAExecutionProvider", "CUDAExecutionProvider"),
                                    (StaticInt8Config(exclude_op_types=("GRU",)), "CPUExecutionProvider", "excluded"),
                                    (StaticInt8Config(op_types=("Conv", "Gemm")), "CPUExecutionProvider", "excluded")):
        kept, info = prepared_recurrences(source, "always", quant, provider)
        assert kept is source and reason in info["rule"] and "rewritten" not in info
