"""Reverting a node to float never takes the int8 Conv that feeds it to float as well: ORT runs a
Conv on its int8 kernel only with its output quantized, so the reverted reader takes that int8
output. Checked on the graph ORT itself builds (int8_kernel_nodes), not on the Q/DQ placement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeport.passes.int8_eval import session_for
from edgeport.passes.qdq_graph import QdqModel
from edgeport.runtimes.int8_kernels import int8_kernel_nodes


def _float_model() -> onnx.ModelProto:
    """conv_a -> Relu -> conv_b -> conv_c -> GlobalAveragePool."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, c, 3, 3)) * 0.2).astype(np.float32), f"w_{name}")
             for name, c in (("a", 3), ("b", 8), ("c", 8))]
    inits += [numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), f"b_{name}") for name in "abc"]
    nodes = [helper.make_node("Conv", ["x", "w_a", "b_a"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["a_relu"], name="relu_a"),
             helper.make_node("Conv", ["a_relu", "w_b", "b_b"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "w_c", "b_c"], ["c"], name="conv_c", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["y"], name="pool")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized(tmp_path: Path, opset: int = 17) -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray]:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    source = _float_model()
    onnx.save(source, str(tmp_path / "float.onnx"))
    samples = np.random.default_rng(1).standard_normal((8, 1, 3, 16, 16)).astype(np.float32)

    class Reader:
        def __init__(self) -> None:
            self.feeds = iter({"x": s} for s in samples)

        def get_next(self):
            return next(self.feeds, None)

    # opset 12 has no per-channel DequantizeLinear: weights per tensor, the file marked opset 12
    # edgeport's defaults: uint8 activations, int8 weights
    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=opset >= 13, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    qdq = onnx.load(str(tmp_path / "int8.onnx"))
    if opset < 13:
        for entry in qdq.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = opset
    return qdq, source, samples[0]


def test_all_int8_runs_every_conv_on_int8_kernels(tmp_path):
    qdq, source, _ = _quantized(tmp_path)
    assert int8_kernel_nodes(qdq) >= {"conv_a", "conv_b", "conv_c"}


@pytest.mark.parametrize("opset", [17, 12])  # per-channel weights, and per-tensor ones of an older file
def test_what_runs_in_float_is_what_the_search_counts(tmp_path, opset):
    qdq, source, feed = _quantized(tmp_path, opset)
    model = QdqModel(qdq, source)
    convs = {"conv_a", "conv_b", "conv_c"}
    # A reverted pool reads conv_c's int8 output; a reverted Conv reads float (a DequantizeLinear
    # before it would have ORT quantize its weights again), and the int8 Conv before it runs float
    # too: its output no longer feeds only its QuantizeLinear.
    for reverted, in_float in (({"pool"}, set()), ({"conv_b"}, {"conv_a", "conv_b"}), ({"conv_c"}, {"conv_b", "conv_c"}),
                               ({"conv_a"}, {"conv_a"}), ({"conv_a", "conv_b"}, {"conv_a", "conv_b"})):
        mix = model.with_float(reverted)
        assert convs - int8_kernel_nodes(mix) == in_float, reverted
        assert model.float_at_runtime(reverted) & convs == in_float, reverted
        session_for(mix).run(None, {"x": feed})  # and it runs


def test_a_reverted_conv_computes_in_float_with_its_float_weights(tmp_path):
    """ORT quantizes a Conv's float weights per tensor when a DequantizeLinear feeds it: a reverted
    Conv never reads one, so it runs in float with the weights it was trained with."""
    qdq, source, feed = _quantized(tmp_path)
    model = QdqModel(qdq, source)
    initializers = {t.name for t in source.graph.initializer}
    for reverted in ({"conv_b"}, {"conv_c"}, {"conv_b", "conv_c"}):
        mix = model.with_float(reverted)
        producers = {o: n for n in mix.graph.node for o in n.output}
        mix_init = {t.name: t for t in mix.graph.initializer}
        for name in reverted:
            conv = next(n for n in mix.graph.node if n.name == name)
            assert conv.input[1] in initializers and mix_init[conv.input[1]].data_type == TensorProto.FLOAT
            reader = producers.get(conv.input[0])
            assert reader is None or reader.op_type != "DequantizeLinear"
            assert name not in int8_kernel_nodes(mix)
        session_for(mix).run(None, {"x": feed})


def test_a_reverted_reader_of_an_int8_conv_reads_its_int8_output(tmp_path):
    qdq, source, feed = _quantized(tmp_path)
    model = QdqModel(qdq, source)
    reverted = model.with_float({"pool"})
    pool = next(n for n in reverted.graph.node if n.name == "pool")
    producers = {o: n for n in reverted.graph.node for o in n.output}
    assert producers[pool.input[0]].op_type == "DequantizeLinear"  # conv_c's int8 output, dequantized
    # what the pool then computes differs from all-int8 only by the pool's own output rounding
    all_int8 = session_for(qdq).run(None, {"x": feed})[0]
    with_float_pool = session_for(reverted).run(None, {"x": feed})[0]
    reference = session_for(source).run(None, {"x": feed})[0]
    assert np.abs(with_float_pool - reference).mean() <= np.abs(all_int8 - reference).mean() * 1.05


def test_the_search_counts_a_quantized_conv_ort_runs_in_float(tmp_path):
    """A Conv with Q/DQ on its inputs but none on its output runs in float: the guard names it."""
    from edgeport.passes.int8_graph_facts import kernel_mismatches

    qdq, source, _ = _quantized(tmp_path)
    graph = qdq.graph
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "c")
    dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    pool = next(n for n in graph.node if n.name == "pool")
    pool.input[0] = "c"  # the pool reads conv_c's float output: its Q/DQ pair goes
    graph.node.remove(q)
    graph.node.remove(dq)
    onnx.save(qdq, str(tmp_path / "mix.onnx"))
    op_of = {n.name: n.op_type for n in source.graph.node}
    assert kernel_mismatches(tmp_path / "mix.onnx", {"conv_a", "conv_b", "conv_c"}, set(), op_of, names_kept=True) == ({"conv_c"}, set())
    # and a node counted float that ORT runs on an int8 kernel is named the other way round
    assert kernel_mismatches(tmp_path / "mix.onnx", {"conv_a", "conv_c"}, {"conv_b"}, op_of, names_kept=True) == ({"conv_c"}, {"conv_b"})


def _quantize(source: onnx.ModelProto, tmp_path: Path, shape: tuple[int, ...]) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    onnx.save(source, str(tmp_path / "source.onnx"))
    samples = np.random.default_rng(2).standard_normal((8, *shape)).astype(np.float32)

    class Reader:
        def __init__(self) -> None:
            self.feeds = iter({"x": s} for s in samples)

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(tmp_path / "source.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]})  # as edgeport quantizes
    return onnx.load(str(tmp_path / "q.onnx"))


def test_a_gemm_before_an_activation_with_two_readers_stays_int8(tmp_path):
    """fc1 -> Relu -> {fc2, fc3}: reverting fc2, or both, leaves fc1 int8 on ORT 1.32 (a Gemm whose
    one reader reads its activation in float loses its kernel: the planted-outlier search test).
    The count says what ORT does."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)
             for name, shape in (("w1", (16, 32)), ("w2", (32, 8)), ("w3", (32, 8)))]
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2"], ["y2"], name="fc2"), helper.make_node("Gemm", ["r", "w3"], ["y3"], name="fc3"),
             helper.make_node("Add", ["y2", "y3"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = QdqModel(_quantize(source, tmp_path, (1, 16)), source)
    gemms = {"fc1", "fc2", "fc3"}
    assert gemms <= int8_kernel_nodes(model.with_float(set()))
    for reverted in ({"fc2"}, {"fc2", "fc3"}):
        ran_float = gemms - int8_kernel_nodes(model.with_float(reverted))
        assert ran_float == model.float_at_runtime(reverted) & gemms, reverted
    assert "fc1" not in model.float_at_runtime({"fc2", "fc3"}) | model.float_at_runtime({"fc2"})


def test_a_conv_whose_output_is_also_a_graph_output(tmp_path):
    """conv_a's output is a model output and conv_b's input: reverting conv_b reads conv_a's float
    output (never the DequantizeLinear that carries the output's name), and counts conv_a float."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, c, 3, 3)).astype(np.float32) * 0.3, f"w_{n}") for n, c in (("a", 3), ("b", 4))]
    nodes = [helper.make_node("Conv", ["x", "w_a"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w_b"], ["b"], name="conv_b", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4, 8, 8]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = QdqModel(_quantize(source, tmp_path, (1, 3, 8, 8)), source)
    mix = model.with_float({"conv_b"})
    producers = {o: n for n in mix.graph.node for o in n.output}
    conv_b = next(n for n in mix.graph.node if n.name == "conv_b")
    assert producers[conv_b.input[0]].op_type != "DequantizeLinear"
    assert {"conv_a", "conv_b"} - int8_kernel_nodes(mix) == model.float_at_runtime({"conv_b"}) == {"conv_a", "conv_b"}


def test_a_conv_and_relu_whose_output_is_a_graph_output(tmp_path):
    """ORT's quantizer drops the Relu after conv_a, whose output 'mid' is a model output and
    conv_b's input: every mix keeps 'mid' after its Relu, a reverted conv_b reads it in float (the
    Relu applied again), and the count matches what ORT runs."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, c, 3, 3)) * 0.2).astype(np.float32), f"w_{n}") for n, c in (("a", 3), ("b", 8))]
    nodes = [helper.make_node("Conv", ["x", "w_a"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["mid"], name="relu_a"),
             helper.make_node("Conv", ["mid", "w_b"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["b"], ["y"], name="pool")]
    graph = helper.make_graph(nodes, "n", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("mid", TensorProto.FLOAT, None), helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = QdqModel(_quantize(source, tmp_path, (1, 3, 8, 8)), source)
    feed = {"x": np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    reference = session_for(source).run(None, feed)
    for reverted in ({"conv_b"}, {"conv_a", "conv_b"}, {"conv_a"}):
        mix = model.with_float(reverted)
        assert {"conv_a", "conv_b"} - int8_kernel_nodes(mix) == model.float_at_runtime(reverted) & {"conv_a", "conv_b"}, reverted
        mid, y = session_for(mix).run(None, feed)
        assert mid.min() >= 0.0 and np.abs(mid - reference[0]).max() < 0.1 * np.abs(reference[0]).max(), reverted


def test_the_search_prices_a_quantized_op_ort_runs_in_float_from_the_start(tmp_path):
    """conv -> ConvTranspose -> conv, all quantized: the float-MAC share the search starts from is
    the one ORT's own graph runs (on ORT 1.32's CPU provider a QDQ ConvTranspose stays a float
    ConvTranspose on dequantized values), and a revert of it is priced as ORT runs that mix."""
    from edgeport.passes.search_candidates import Candidate, search_space
    from edgeport.passes.sensitivity import node_mac_counts
    from edgeport.passes.quantize_static import StaticInt8Config

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
             for name, shape in (("w_a", (8, 3, 3, 3)), ("w_t", (8, 8, 2, 2)), ("w_c", (8, 8, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w_a"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["a", "w_t"], ["t"], name="up", strides=[2, 2]),
             helper.make_node("Conv", ["t", "w_c"], ["y"], name="conv_c", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "unet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32])], inits)
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    qdq = _quantize(source, tmp_path, (1, 3, 16, 16))
    feed = {"x": np.zeros((1, 3, 16, 16), np.float32)}

    class Split:
        feeds = [feed]

    space = search_space(Candidate(source, source, qdq, tmp_path, "minmax", None, []), StaticInt8Config(), Split())
    assert "up" in space.groups
    macs = node_mac_counts(source, feed)
    ran_float = set(macs) - int8_kernel_nodes(qdq)
    assert space.share(set()) == pytest.approx(sum(macs[n] for n in ran_float) / sum(macs.values()))
    assert space.float_anyway == ran_float & {"up"}
    # reverted, it reads float (the Conv before it goes float too): counted as ORT runs that mix
    ran_float = set(macs) - int8_kernel_nodes(space.qdq.with_float({"up"}))
    assert space.share({"up"}) == pytest.approx(sum(macs[n] for n in ran_float) / sum(macs.values()))
