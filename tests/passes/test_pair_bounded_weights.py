"""Pair-bounded 8-bit weights: what x86 without VNNI gets instead of 7-bit ones under reduce_range."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeport.artifacts import OnnxArtifact
from edgeport.data import open_data
from edgeport.passes.context import PassContext
from edgeport.passes.pair_bounded_weights import bound_weight_pairs, pair_bounded_scales
from edgeport.passes.quantize_static import StaticInt8Config, quantize_static_int8
from edgeport.runtimes.hostcpu import host_cpu


def _qdq_conv(levels: np.ndarray, input_type: int = TensorProto.UINT8, group: int = 1) -> onnx.ModelProto:
    """x -> Q/DQ on the full 8-bit grid -> Conv with int8 ``levels`` (scale 1/127) -> Q/DQ: fused by
    ORT into its u8*s8 (or s8*s8) kernel, unfused it runs in float."""
    out_channels, channels, kernel = levels.shape[0], levels.shape[1] * group, levels.shape[2]
    zero = np.array(0, np.uint8 if input_type == TensorProto.UINT8 else np.int8)
    scale = 1 / 255 if input_type == TensorProto.UINT8 else 1 / 127
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], kernel_shape=[kernel, kernel], group=group),
             helper.make_node("QuantizeLinear", ["c", "sy", "zx"], ["cq"]), helper.make_node("DequantizeLinear", ["cq", "sy", "zx"], ["y"])]
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "sx"), numpy_helper.from_array(zero, "zx"),
             numpy_helper.from_array(np.array(4 * scale, np.float32), "sy"),
             numpy_helper.from_array(levels.astype(np.int8), "wq"), numpy_helper.from_array(np.full(out_channels, 1 / 127, np.float32), "sw"),
             numpy_helper.from_array(np.zeros(out_channels, np.int8), "zw")]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fused_and_emulated(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unfused = ort.SessionOptions()
    unfused.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString()
    return (ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0],
            ort.InferenceSession(data, unfused, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])


def _levels_at(positions: list[tuple[int, int, int]], channels: int = 4, kernel: int = 3) -> np.ndarray:
    levels = np.zeros((8, channels, kernel, kernel), np.int8)
    for c, row, column in positions:
        levels[:, c, row, column] = 127
    return levels


saturating_host = pytest.mark.skipif(not (host_cpu().arch == "x86_64" and not host_cpu().has_vnni),
                                     reason="only x86 without VNNI runs the u8*s8 kernel that saturates")


@saturating_host
@pytest.mark.parametrize("input_type", [TensorProto.UINT8, TensorProto.INT8], ids=["u8", "s8"])
def test_the_kernel_saturates_exactly_the_pairs_the_layout_names(input_type):
    """The fact the pair bound rests on: two 127 levels saturate where they are neighbours along K
    as (kernel row, kernel column, channel) with the channel fastest, starting at an even index."""
    x = np.ones((1, 4, 6, 6), np.float32)
    for positions, paired in [([(0, 0, 0), (1, 0, 0)], True), ([(2, 1, 1), (3, 1, 1)], True), ([(1, 0, 0), (2, 0, 0)], False),
                              ([(0, 0, 0), (0, 0, 1)], False), ([(0, 0, 0), (2, 0, 0)], False)]:
        fused, emulated = _fused_and_emulated(_qdq_conv(_levels_at(positions), input_type), x)
        assert (np.abs(fused - emulated).max() > 0.25 * np.abs(emulated).max()) == paired, positions
    # three channels: the last channel of one kernel position pairs with the first of the next
    fused, emulated = _fused_and_emulated(_qdq_conv(_levels_at([(2, 0, 0), (0, 0, 1)], channels=3)), np.ones((1, 3, 6, 6), np.float32))
    assert np.abs(fused - emulated).max() > 0.25 * np.abs(emulated).max()
    # one input channel per group: two outputs per group run a GEMM over kernel positions, one output a depthwise kernel
    for outputs, saturates in ((8, True), (4, False)):
        levels = _levels_at([(0, 0, 0), (0, 0, 1)], channels=1)[:outputs]
        fused, emulated = _fused_and_emulated(_qdq_conv(levels, input_type, group=4), np.ones((1, 4, 6, 6), np.float32))
        assert (np.abs(fused - emulated).max() > 0.25 * np.abs(emulated).max()) == saturates, outputs


def test_pair_bounded_scales_keep_every_neighbouring_pair_within_128_levels():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(75, 16))  # (K, N); odd K: the last row pairs with zero
    weight[10, 3], weight[11, 3] = 5.0, -5.0  # a strong pair in column 3
    scale = pair_bounded_scales(weight)
    levels = np.abs(np.round(weight / scale))
    padded = np.concatenate([levels, np.zeros((1, 16))])
    assert (padded[0::2] + padded[1::2]).max() <= 128
    assert levels.max() > 100  # 8-bit levels, not 7-bit ones (at most 64)
    assert levels[:, 3].max() <= 64  # the column with a strong pair takes the step a pair sum allows


def _conv_matmul_model(path, rng):
    """Conv (3x3, 6 channels: pairs cross kernel positions) -> Flatten -> MatMul -> Gemm(transB), with biases."""
    conv = rng.normal(size=(8, 6, 3, 3)).astype(np.float32)
    matmul = rng.normal(size=(8 * 4 * 4, 12)).astype(np.float32) * 0.1
    gemm = rng.normal(size=(5, 12)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "mm_w"], ["m"], name="matmul"),
         helper.make_node("Gemm", ["m", "gemm_w", "gemm_b"], ["y"], name="gemm", transB=1)],
        "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(conv, "conv_w"), numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "conv_b"),
         numpy_helper.from_array(matmul, "mm_w"), numpy_helper.from_array(gemm, "gemm_w"),
         numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "gemm_b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _reduction_rows(name: str, levels: np.ndarray) -> np.ndarray:
    if name == "conv_w":
        return levels.transpose(2, 3, 1, 0).reshape(-1, levels.shape[0])
    return levels.T if name == "gemm_w" else levels


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_reduce_range_gives_conv_matmul_and_gemm_pair_bounded_8_bit_weights_that_run_as_emulated(tmp_path, per_channel):
    from tests.conftest import npz_file

    rng = np.random.default_rng(0)
    model = _conv_matmul_model(tmp_path / "net.onnx", rng)
    calib = npz_file(tmp_path, "calib.npz", x=rng.uniform(0.0, 1.0, (16, 6, 6, 6)).astype(np.float32))
    ctx = PassContext(work_dir=tmp_path / "q", calibration=open_data(calib, role="calibration"))
    artifact = quantize_static_int8(OnnxArtifact.from_file(model), StaticInt8Config(reduce_range=True, per_channel=per_channel), ctx=ctx)
    quantized = onnx.load(str(artifact.path))
    inits = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    for name in ("conv_w", "mm_w", "gemm_w"):
        rows = np.abs(_reduction_rows(name, inits[f"{name}_quantized"]).astype(np.int32))
        padded = np.concatenate([rows, np.zeros((rows.shape[0] % 2, rows.shape[1]), np.int32)])
        assert (padded[0::2] + padded[1::2]).max() <= 128, name
        assert rows.max() > 64, name  # more than reduce_range's 7 bits
    # every weight and bias dequantizes to its float value within half a step, the bias on input scale x weight scale
    floats = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model)).graph.initializer}
    input_scale = {"conv": "x_scale", "gemm": "m_scale"}
    for name, bias in (("conv_w", "conv_b"), ("gemm_w", "gemm_b")):
        w_scale = inits[f"{name}_scale"]
        axis_shape = (-1, 1, 1, 1) if name == "conv_w" and per_channel else (-1, 1) if per_channel else ()
        step = w_scale.reshape(axis_shape) if axis_shape else w_scale
        assert np.abs(inits[f"{name}_quantized"] * step - floats[name]).max() <= step.max() / 2 + 1e-6, name
        b_scale = inits[f"{bias}_quantized_scale"]
        np.testing.assert_allclose(b_scale, inits[input_scale[name.split("_")[0]]] * w_scale, rtol=1e-6)
        assert (np.abs(inits[f"{bias}_quantized"] * b_scale - floats[bias]) <= b_scale / 2 + 1e-7).all(), bias
    # no pair saturates, on any host: the fused int8 kernels compute what the unfused graph computes in float
    x = rng.uniform(0.0, 1.0, (4, 6, 6, 6)).astype(np.float32)
    fused, emulated = _fused_and_emulated(quantized, x)
    assert np.abs(fused - emulated).max() <= 0.02 * np.abs(emulated).max()
    if not per_channel:
        return
    # a QOperator file (QLinearConv, QLinearMatMul, QGemm: weights and biases in the nodes) gets the same levels
    ctx = PassContext(work_dir=tmp_path / "qop", calibration=open_data(calib, role="calibration"))
    qoperator = onnx.load(str(quantize_static_int8(OnnxArtifact.from_file(model), StaticInt8Config(reduce_range=True, format="qoperator"),
                                                   ctx=ctx).path))
    assert {"QLinearConv", "QLinearMatMul", "QGemm"} <= {n.op_type for n in qoperator.graph.node}
    levels = {t.name: numpy_helper.to_array(t) for t in qoperator.graph.initializer}
    for name in ("conv_w_quantized", "mm_w_quantized", "gemm_w_quantized", "conv_b_quantized", "gemm_b_quantized"):
        np.testing.assert_array_equal(levels[name], inits[name], err_msg=name)
    same = ort.InferenceSession(qoperator.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(same - fused).max() <= 0.02 * np.abs(fused).max()


def test_an_all_zero_channel_keeps_its_bias_and_a_tiny_one_a_scale_its_bias_fits(tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 6, 3, 3)).astype(np.float32)
    weight[1] = 0.0  # a channel pruning or folding left empty: its output is its bias
    weight[2] *= 1e-9  # a channel so small that its bias needs a larger scale than its weights give
    bias = np.array([0.1, 0.5, 3.0, -0.2], np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(source, str(tmp_path / "conv.onnx"))

    class Reader:
        feeds = iter([{"x": rng.uniform(0, 1, (1, 6, 5, 5)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(tmp_path / "conv.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8)
    qdq = onnx.load(str(tmp_path / "q.onnx"))
    assert bound_weight_pairs(qdq, source) == ["w"]
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    held = inits["b_quantized"] * inits["b_quantized_scale"]
    assert (np.abs(held - bias) <= inits["b_quantized_scale"] / 2 + 1e-9).all(), held  # every bias held, none clipped
    assert np.abs(inits["b_quantized"].astype(np.int64)).max() < 2**31 - 1
    x = rng.uniform(0, 1, (1, 6, 5, 5)).astype(np.float32)
    out = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(out[0, 1] - 0.5).max() <= inits["y_scale"] / 2 + 1e-6  # the empty channel's output is its bias, on the output's grid


def test_weights_it_cannot_rewrite_exactly_stay_as_they_are():
    """A weight two nodes share (each with a bias of its own scale) and an asymmetric one are left alone."""
    source_weight = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["w_quantized", "w_scale"], ["w_dq"], axis=1),
             helper.make_node("DequantizeLinear", ["v_quantized", "v_scale", "v_zero"], ["v_dq"], axis=1),
             helper.make_node("MatMul", ["x", "w_dq"], ["a"]), helper.make_node("MatMul", ["x", "w_dq"], ["b"]),
             helper.make_node("MatMul", ["x", "v_dq"], ["c"])]
    levels = np.round(source_weight / (np.abs(source_weight).max(axis=0) / 63)).astype(np.int8)
    inits = [numpy_helper.from_array(levels, "w_quantized"), numpy_helper.from_array(np.full(4, 0.1, np.float32), "w_scale"),
             numpy_helper.from_array(levels, "v_quantized"), numpy_helper.from_array(np.full(4, 0.1, np.float32), "v_scale"),
             numpy_helper.from_array(np.full(4, 3, np.int8), "v_zero")]
    qdq = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in "abc"], inits))
    source = helper.make_model(helper.make_graph([], "s", [], [], [numpy_helper.from_array(source_weight, "w"),
                                                                  numpy_helper.from_array(source_weight, "v")]))
    before = qdq.SerializeToString()
    assert bound_weight_pairs(qdq, source) == []
    assert qdq.SerializeToString() == before
