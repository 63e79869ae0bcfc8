"""Folding a Conv's scale/shift and fusing spelled-out HardSwish before int8: same function, fewer
tensors rounded. Checked on real ORT sessions of graphs shaped as PaddlePaddle's converter writes them."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeport.artifacts import OnnxArtifact
from edgeport.data import open_data
from edgeport.passes import PassContext, StaticInt8Config, quantize_static_int8
from edgeport.passes.pre_quant_fusion import fuse_for_quantization
from tests.conftest import npz_file

RNG = np.random.default_rng(0)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def paddle_like_stem(opset: int = 17) -> onnx.ModelProto:
    """Conv -> Mul by a (1,) scalar -> Add per channel -> x*Clip(x+3,0,6)/6 -> Mul and Sub per channel
    -> grouped 1x1 Conv -> Mul by a (4,) constant, which broadcasts over the width (4 wide), not the
    channels: it must stay."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c1", "scale"], ["m1"], name="scale"),
        helper.make_node("Add", ["m1", "shift"], ["a1"], name="shift"),
        helper.make_node("Add", ["a1", "three"], ["h0"], name="hs_add"),
        helper.make_node("Clip", ["h0", "zero", "six"], ["h1"], name="hs_clip"),
        helper.make_node("Mul", ["a1", "h1"], ["h2"], name="hs_mul"),
        helper.make_node("Div", ["h2", "six"], ["h3"], name="hs_div"),
        helper.make_node("Mul", ["h3", "in_scale"], ["h4"], name="in_scale"),
        helper.make_node("Sub", ["h4", "in_shift"], ["h5"], name="in_shift"),
        helper.make_node("Conv", ["h5", "w2", "b2"], ["c2"], name="conv2", group=2),
        helper.make_node("Mul", ["c2", "per_width"], ["y"], name="per_width"),
    ]
    initializers = [
        _const("w1", RNG.normal(size=(8, 3, 3, 3))), _const("b1", RNG.normal(size=8)),
        _const("scale", [1.9]), _const("shift", RNG.normal(size=(8, 1, 1))),
        _const("three", 3.0), _const("zero", 0.0), _const("six", 6.0),
        _const("in_scale", RNG.uniform(0.5, 2.0, size=(1, 8, 1, 1))), _const("in_shift", RNG.normal(size=(8, 1, 1))),
        _const("w2", RNG.normal(size=(4, 4, 1, 1))), _const("b2", RNG.normal(size=4)),
        _const("per_width", [0.5, 1.0, 2.0, -1.0]),
    ]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 4, 4])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_scale_shift_fold_into_the_conv_and_hardswish_fuses_with_the_same_outputs():
    source = paddle_like_stem()
    fused, counts = fuse_for_quantization(source)
    onnx.checker.check_model(fused)
    assert (counts.folded_into_conv, counts.hardswish) == (4, 1)
    ops = collections.Counter(n.op_type for n in fused.graph.node)
    assert ops == {"Conv": 2, "HardSwish": 1, "Mul": 1}  # the width-wise Mul is not a per-channel scale
    assert {t.name for t in fused.graph.initializer}.isdisjoint({"scale", "shift", "in_scale", "three", "w1", "w2"})  # unused ones dropped
    x = RNG.normal(scale=2.0, size=(3, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(fused, x), _run(source, x), rtol=1e-4, atol=1e-4)


def test_targets_without_hardswish_keep_its_parts_and_still_fold():
    # one int8 file serves every profile of an export: a CPU target beside an NNAPI one is enough
    for providers in (("NnapiExecutionProvider",), ("CoreMLExecutionProvider",), ("CPUExecutionProvider", "NnapiExecutionProvider")):
        fused, counts = fuse_for_quantization(paddle_like_stem(), providers)
        assert (counts.folded_into_conv, counts.hardswish) == (5, 0)  # the Div by 6 folds into the unpadded Conv
        assert {"Add", "Clip", "Mul"} <= {n.op_type for n in fused.graph.node} and "HardSwish" not in {n.op_type for n in fused.graph.node}
    _, counts = fuse_for_quantization(paddle_like_stem(opset=13))  # HardSwish is opset 14
    assert (counts.folded_into_conv, counts.hardswish) == (5, 0)


def test_a_shift_stays_before_a_padded_conv():
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "shift"], ["s"], name="shift"),
         helper.make_node("Conv", ["s", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])],
        [_const("shift", [[[1.0]], [[-2.0]]]), _const("w", RNG.normal(size=(3, 2, 3, 3)))])
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fused, counts = fuse_for_quantization(source)
    assert counts.folded_into_conv == 0 and [n.op_type for n in fused.graph.node] == ["Add", "Conv"]


def test_excluded_nodes_are_left_alone():
    fused, counts = fuse_for_quantization(paddle_like_stem(), keep=frozenset({"shift", "hs_div"}))
    assert (counts.folded_into_conv, counts.hardswish) == (3, 0)  # scale and the Conv-side Mul/Sub
    assert {"shift", "hs_div"} <= {n.name for n in fused.graph.node}


def test_other_hardswish_spellings_fuse():
    def model(tail):
        graph = helper.make_graph(tail, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
                                  [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0), _const("sixth", 1 / 6)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    gate = [helper.make_node("Add", ["x", "three"], ["p"]), helper.make_node("Clip", ["p", "zero", "six"], ["g"])]
    spellings = {
        "x * (gate / 6)": [*gate, helper.make_node("Div", ["g", "six"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
        "(gate * x) * 1/6": [*gate, helper.make_node("Mul", ["g", "x"], ["m"]), helper.make_node("Mul", ["sixth", "m"], ["y"])],
        "x * hardsigmoid(x)": [helper.make_node("HardSigmoid", ["x"], ["s"], alpha=1 / 6, beta=0.5), helper.make_node("Mul", ["s", "x"], ["y"])],
    }
    x = np.linspace(-5, 5, 10, dtype=np.float32).reshape(2, 5)
    for spelling, nodes in spellings.items():
        source = model(nodes)
        fused, counts = fuse_for_quantization(source)
        assert [n.op_type for n in fused.graph.node] == ["HardSwish"], spelling
        np.testing.assert_allclose(_run(fused, x), _run(source, x), atol=1e-6, err_msg=spelling)
    plain_sigmoid = model([helper.make_node("HardSigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])])
    assert fuse_for_quantization(plain_sigmoid)[1].hardswish == 0  # alpha 0.2 is not HardSwish's gate


def test_static_int8_rounds_fewer_tensors_after_fusion(tmp_path):
    source = tmp_path / "stem.onnx"
    onnx.save(paddle_like_stem(), str(source))
    calib = npz_file(tmp_path, "calib.npz", x=RNG.normal(scale=2.0, size=(32, 3, 4, 4)).astype(np.float32))

    def quantized(preprocess: bool):
        ctx = PassContext(work_dir=tmp_path / f"work{preprocess}", calibration=open_data(calib, role="calibration"))
        artifact = quantize_static_int8(OnnxArtifact.from_file(source), StaticInt8Config(preprocess=preprocess), ctx=ctx)
        graph = onnx.load(str(artifact.path)).graph
        return sum(n.op_type == "QuantizeLinear" for n in graph.node), ctx.records[-1].notes

    fused_count, notes = quantized(True)
    plain_count, _ = quantized(False)
    assert fused_count < plain_count
    assert any("fused 1 HardSwish" in note and "folded 4" in note for note in notes)


def test_constants_listed_as_inputs_fold_only_where_the_ir_makes_them_constant():
    source = paddle_like_stem()  # every initializer also a graph input, as exporters of IR 3 wrote them
    source.graph.input.extend(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in source.graph.initializer)
    _, counts = fuse_for_quantization(source)
    assert counts.folded_into_conv == 0  # from IR 4 on they are defaults a caller may override
    source.ir_version = 3
    fused, counts = fuse_for_quantization(source)
    assert counts.folded_into_conv == 4
    # what was folded away leaves the inputs too, or it would become an input the caller must feed
    assert not {"scale", "shift", "in_scale"} & {i.name for i in fused.graph.input}
    assert "x" in {i.name for i in fused.graph.input}


def test_constants_that_broadcast_x_up_are_left_alone():
    # a per-channel Sub turns a 1-channel x into 3 channels: the Conv after it needs them
    graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "mean"], ["s"], name="mean"), helper.make_node("Conv", ["s", "w"], ["y"], name="conv")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [_const("mean", RNG.normal(size=(1, 3, 1, 1))), _const("w", RNG.normal(size=(2, 3, 1, 1)))])
    widening = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert fuse_for_quantization(widening)[1].folded_into_conv == 0
    # a six of shape (1, 1, 1) makes x * relu6(x + 3) / 6 of a rank-2 x rank 3; HardSwish would not
    nodes = [helper.make_node("Add", ["x", "three"], ["p"]), helper.make_node("Clip", ["p", "zero", "six"], ["g"]),
             helper.make_node("Mul", ["x", "g"], ["m"]), helper.make_node("Div", ["m", "six3"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5])],
                              [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0), _const("six3", np.full((1, 1, 1), 6.0))])
    assert fuse_for_quantization(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))[1].hardswish == 0
