import numpy as np
import onnx
import pytest

from edgeport.artifacts import OnnxArtifact
from edgeport.data import open_data
from edgeport.errors import QuantizationError, UsageError
from edgeport.passes import PassContext, StaticInt8Config, quantize_static_int8
from edgeport.passes.context import QuantTarget, config_from_dict, config_to_dict
from edgeport.passes.quant_defaults import choose_reduce_range
from tests.conftest import digits_paths


def _quantize(tmp_path, model_path, config=StaticInt8Config(), **ctx_args):
    ctx = PassContext(
        work_dir=tmp_path,
        calibration=open_data(digits_paths()["calib"], role="calibration"),
        evaluation=open_data(digits_paths()["test"], role="evaluation"),
        **ctx_args,
    )
    artifact = quantize_static_int8(OnnxArtifact.from_file(model_path), config, ctx=ctx)
    return artifact, ctx.records[-1]


def test_digits_int8_keeps_accuracy(tmp_path, digits_onnx):
    artifact, record = _quantize(tmp_path, digits_onnx)
    parity = record.metrics["parity_vs_fp32"]
    assert parity["samples"] == 500
    assert parity["top1_agreement"] >= 0.99
    assert parity["accuracy_drop"] <= 0.01
    assert artifact.size_bytes < 0.35 * OnnxArtifact.from_file(digits_onnx).size_bytes
    ops = {n.op_type for n in onnx.load(str(artifact.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_calibration_cache_is_reused(tmp_path, digits_onnx):
    first, record1 = _quantize(tmp_path / "a", digits_onnx)
    second, record2 = _quantize(tmp_path / "b", digits_onnx)
    assert record1.metrics["calibration_cache"] == "stored"
    assert record2.metrics["calibration_cache"] == "hit"
    assert first.sha256() == second.sha256()
    # Other settings must not read the cached ranges.
    _, record3 = _quantize(tmp_path / "c", digits_onnx, StaticInt8Config(calibration_method="percentile"))
    assert record3.metrics["calibration_cache"] == "stored"


def test_qoperator_format_and_exclusions(tmp_path, digits_onnx):
    names = [n.name for n in onnx.load(str(digits_onnx)).graph.node if n.op_type == "Gemm"]
    config = StaticInt8Config(format="qoperator", exclude_nodes=tuple(names))
    artifact, record = _quantize(tmp_path, digits_onnx, config)
    graph = onnx.load(str(artifact.path)).graph
    assert any(n.op_type == "QLinearConv" for n in graph.node)
    assert any(n.op_type == "Gemm" for n in graph.node)  # the excluded classifier stayed float
    assert record.metrics["parity_vs_fp32"]["top1_agreement"] >= 0.98


def test_unknown_node_exclusion_suggests_a_name(tmp_path, digits_onnx):
    with pytest.raises(UsageError, match="not in the model"):
        _quantize(tmp_path, digits_onnx, StaticInt8Config(exclude_nodes=("/no/such/Conv",)))


def test_needs_calibration_data(tmp_path, digits_onnx):
    with pytest.raises(QuantizationError, match="needs calibration data"):
        quantize_static_int8(OnnxArtifact.from_file(digits_onnx), StaticInt8Config(), ctx=PassContext(work_dir=tmp_path))


def test_reduce_range_follows_the_target(tmp_path, digits_onnx):
    _, record = _quantize(tmp_path, digits_onnx, quant_target=QuantTarget("x86_64", has_vnni=False, source="profile x"))
    assert record.metrics["reduce_range"] is True
    assert "without VNNI" in record.metrics["decisions"]["reduce_range"]
    assert choose_reduce_range(QuantTarget("arm64", False, "pi")).value is False
    assert choose_reduce_range(QuantTarget("x86_64", True, "server")).value is False


def test_histogram_method_falls_back_on_varying_shapes(tmp_path):
    from edgeport import export

    for i, length in enumerate([6, 6, 9, 9, 12]):
        np.save(tmp_path / f"{i}.npy", np.random.default_rng(i).standard_normal((length, 40)).astype(np.float32))
    result = export(
        "examples.models:gru_audio",
        inputs=["frames:batchxtimex40"],
        calib=tmp_path,
        quant_config=StaticInt8Config(calibration_method="entropy"),
        search=False,
        out_dir=tmp_path / "out",
    )
    step = result.report["steps"][-1]
    assert step["metrics"]["calibration_method"] == "minmax"
    assert any("used minmax instead" in n for n in step["notes"])
    assert step["metrics"]["op_types_quantized"] == ["Conv", "Gemm"]  # recurrent family rule


@pytest.mark.parametrize("field, value", [("format", "int4"), ("calibration_method", "kl"), ("percentile", 0.0), ("calibration_samples", 0)])
def test_config_validates_itself(field, value):
    with pytest.raises(UsageError):
        StaticInt8Config(**{field: value})


def test_configs_roundtrip_through_plain_values():
    from edgeport.passes import GraphOptimizeConfig, OnnxExportConfig

    for config in (StaticInt8Config(op_types=("Conv",), exclude_nodes=("a",)), OnnxExportConfig(opset=18), GraphOptimizeConfig()):
        assert config_from_dict(type(config), config_to_dict(config)) == config
    with pytest.raises(UsageError, match="did you mean 'per_channel'"):
        config_from_dict(StaticInt8Config, {"per_chanel": True})


def test_int8_larger_than_fp32_is_reported(tmp_path):
    from edgeport import export

    result = export("tests.exporter.bad_models:SharedWeightLoop", inputs=["x:batchx64"], calib="random:16", out_dir=tmp_path / "o")
    assert result.report["summary"]["size_ratio"] > 1
    assert any("larger than fp32" in w for w in result.report["warnings"])


def test_a_failed_symbolic_shape_inference_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """ORT's symbolic shape inference saves 'sym_shape_infer_temp.onnx' to the current directory
    when a node's shape cannot be inferred (here: a custom-domain op); it must land in the work folder."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeport.passes.quantize_static import preprocess_for_quantization

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
                               helper.make_node("Mystery", ["h"], ["y"], name="mystery", domain="com.example")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    work, user_folder = tmp_path / "work", tmp_path / "cwd"
    work.mkdir()
    user_folder.mkdir()
    onnx.save(model, str(work / "model.onnx"))
    monkeypatch.chdir(user_folder)
    notes: list[str] = []
    preprocess_for_quantization(work / "model.onnx", work, notes)
    assert any("symbolic shape inference failed" in n for n in notes)  # the path that used to litter
    assert list(user_folder.iterdir()) == []


def test_no_cache_does_not_reuse_cached_calibration_ranges(tmp_path):
    from edgeport import export
    from tests.conftest import digits_paths

    def calibration_cache(**kwargs):
        result = export("examples.digits.model:trained_digits_cnn", inputs=["image:batchx1x8x8"], calib=digits_paths()["calib"], search=False,
                        out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", **kwargs)
        return next(s for s in result.report["steps"] if s["name"] == "quantize_static")["metrics"]["calibration_cache"]

    assert calibration_cache() == "stored"
    assert calibration_cache(use_cache=False) == "off"  # it said "hit"


def test_a_truncated_calibration_cache_entry_is_recalibrated(tmp_path):
    from edgeport import export
    from tests.conftest import digits_paths

    def calibration_cache(name, config):
        result = export("examples.digits.model:trained_digits_cnn", inputs=["image:batchx1x8x8"], calib=digits_paths()["calib"], search=False,
                        out_dir=tmp_path / name, cache_dir=tmp_path / "cache", quant_config=config)
        return next(s for s in result.report["steps"] if s["name"] == "quantize_static")["metrics"]["calibration_cache"]

    assert calibration_cache("a", StaticInt8Config()) == "stored"
    for entry in (tmp_path / "cache" / "calibration").iterdir():
        entry.write_text(entry.read_text()[:40])  # cut short, as a killed writer on a filesystem without atomic rename would
    # another eval_samples misses the step cache but shares the range cache key, so the ranges are read
    assert calibration_cache("b", StaticInt8Config(eval_samples=999)) == "stored"


def test_int8_activations_are_symmetric_only_for_tensorrt(tmp_path):
    """ActivationSymmetric followed activation_type == 'int8': TensorRT's rule, applied to XNNPACK too."""
    from onnx import numpy_helper

    from edgeport import export, load_profile
    from edgeport.profile_defaults import quant_config_for
    from tests.conftest import digits_paths

    xnnpack, tensorrt = quant_config_for(load_profile("android-xnnpack")), quant_config_for(load_profile("jetson-orin-nano"))
    assert xnnpack.activation_type == tensorrt.activation_type == "int8"
    assert not xnnpack.activation_symmetric and tensorrt.activation_symmetric

    def activation_zero_points(config):
        export("examples.digits.model:trained_digits_cnn", inputs=["image:batchx1x8x8"], calib=digits_paths()["calib"], search=False,
               quant_config=config, out_dir=tmp_path / str(config.activation_symmetric))
        graph = onnx.load(str(tmp_path / str(config.activation_symmetric) / "model.onnx")).graph
        inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        return [int(inits[n.input[2]]) for n in graph.node if n.op_type == "QuantizeLinear" and inits[n.input[2]].ndim == 0]

    assert any(zp != 0 for zp in activation_zero_points(xnnpack))  # ReLU outputs use the whole int8 range
    assert all(zp == 0 for zp in activation_zero_points(tensorrt))


def test_mse_ranges_keep_the_bulk_fine_where_an_outlier_stretches_minmax(tmp_path):
    from tests.conftest import make_linear_onnx, npz_file

    # a wide input: mean-square-optimal clipping gives up a value only where it is one in ~a million
    model = make_linear_onnx(tmp_path / "linear.onnx", in_features=16384, out_features=8)
    rng = np.random.default_rng(1)
    calib = rng.standard_normal((64, 16384)).astype(np.float32)
    calib[5, 3] = 400.0  # one glitched reading: minmax spends the whole uint8 grid on it
    calib_path = npz_file(tmp_path, "calib.npz", x=calib)
    eval_path = npz_file(tmp_path, "eval.npz", x=rng.standard_normal((64, 16384)).astype(np.float32))

    def quantized(method):
        ctx = PassContext(work_dir=tmp_path / method, calibration=open_data(calib_path, role="calibration"),
                          evaluation=open_data(eval_path, role="evaluation"))
        artifact = quantize_static_int8(OnnxArtifact.from_file(model), StaticInt8Config(calibration_method=method), ctx=ctx)
        graph = onnx.load(str(artifact.path)).graph
        scale_name = next(n.input[1] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
        scale = next(float(onnx.numpy_helper.to_array(t)) for t in graph.initializer if t.name == scale_name)
        return ctx.records[-1].metrics["parity_vs_fp32"]["cosine_min"], scale

    (mse_cosine, mse_scale), (minmax_cosine, minmax_scale) = quantized("mse"), quantized("minmax")
    assert mse_scale < 0.5 * minmax_scale
    assert mse_cosine > minmax_cosine + 0.2


def test_mean_minmax_ranges_average_each_samples_extremes(tmp_path):
    from tests.conftest import make_linear_onnx, npz_file

    model = make_linear_onnx(tmp_path / "linear.onnx", in_features=64, out_features=8)
    rng = np.random.default_rng(2)
    calib = rng.standard_normal((8, 64)).astype(np.float32)
    calib[np.arange(8), np.arange(8)] = 10.0 * np.arange(1, 9)  # sample i peaks at 10 (i + 1): minmax takes 80, the mean 45
    calib_path = npz_file(tmp_path, "calib.npz", x=calib)
    eval_path = npz_file(tmp_path, "eval.npz", x=rng.standard_normal((8, 64)).astype(np.float32))

    def input_scale(method):
        ctx = PassContext(work_dir=tmp_path / method, calibration=open_data(calib_path, role="calibration"),
                          evaluation=open_data(eval_path, role="evaluation"))
        artifact = quantize_static_int8(OnnxArtifact.from_file(model), StaticInt8Config(calibration_method=method, use_cache=False), ctx=ctx)
        graph = onnx.load(str(artifact.path)).graph
        scale_name = next(n.input[1] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
        return next(float(onnx.numpy_helper.to_array(t)) for t in graph.initializer if t.name == scale_name)

    # the calibration batch holds 8 samples; the extremes are still taken one sample at a time
    assert input_scale("mean_minmax") == pytest.approx((calib.max(axis=1).mean() - calib.min(axis=1).mean()) / 255, rel=1e-5)
    assert input_scale("minmax") == pytest.approx((calib.max() - calib.min()) / 255, rel=1e-5)


def test_sample_extremes_skip_nan_as_minmax_does_and_keep_an_unbounded_mask():
    from edgeport.passes.calibration import SampleExtremes

    extremes = SampleExtremes()
    extremes.collect({"a": [np.array([1.0, np.nan, 3.0], np.float32), np.array([-1.0, 5.0], np.float32), np.full(2, np.nan, np.float32)],
                      "mask": [np.array([-np.inf, 0.0], np.float32)]})
    assert extremes.mean_range("a") == (0.0, 4.0)  # the all-NaN run is no sample; one NaN does not poison the range
    assert extremes.mean_range("mask") == (-np.inf, 0.0)  # the search must still see it unbounded


def test_least_square_error_range_cuts_a_long_tail_and_barely_touches_a_uniform_spread():
    from edgeport.passes.calibration import least_square_error_range

    bins, low, high = 2048, -10.0, 100.0
    centers = low + (np.arange(bins) + 0.5) * (high - low) / bins  # as the function reads the histogram
    bulk = np.exp(-0.5 * centers ** 2)  # N(0, 1), with one value in a million far out at 100
    bulk[-1] = 1e-6 * bulk.sum()
    cut_low, cut_high = least_square_error_range(bulk / bulk.sum(), low, high, grid=101)
    assert cut_high < 50 and cut_low < -2  # most of the tail goes, the bulk's negative half stays
    flat = np.ones(bins)
    flat_low, flat_high = least_square_error_range(flat / flat.sum(), low, high, grid=101)
    assert flat_high == high and flat_low <= 0.95 * low  # values everywhere: clipping saves next to nothing
    # 16-bit steps are fine enough to keep the tail; a symmetric grid spans one reach both ways
    assert least_square_error_range(bulk / bulk.sum(), low, high, grid=101, levels=65535)[1] == high
    sym_low, sym_high = least_square_error_range(bulk / bulk.sum(), low, high, grid=101, symmetric=True)
    assert sym_low == -sym_high and sym_high < 50


def test_range_histograms_take_samples_of_any_shape_and_keep_unbounded_ranges():
    from edgeport.passes.calibration import RangeHistograms

    histograms = RangeHistograms({"a": (0.5, 3.0), "mask": (-np.inf, 0.0)})
    histograms.collect({"a": [np.ones((1, 7)), np.full((2, 3, 5), 2.0), np.array([np.nan, 3.0])], "mask": [np.zeros(4)], "other": [np.ones(2)]})
    assert histograms.counts["a"].sum() == 7 + 30 + 1  # every sample, whatever its length; NaN not counted
    assert histograms.ranges["a"][0] == 0.0  # a range always holds 0, as the int8 grid does
    assert histograms.best_range("mask") == (-np.inf, 0.0)  # left to minmax: the search keeps such readers float
    assert "other" not in histograms.counts


def _depthwise_then_pointwise(path, channels=16):
    """x -> depthwise 3x3 Conv -> pointwise 1x1 Conv, with weights and inputs that fill the int8 grids:
    every pair of u8*s8 products is near 2 * 255 * 127, which a GEMM without VNNI saturates."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    depthwise = np.ones((channels, 1, 3, 3), np.float32) * rng.uniform(0.5, 1.0, (channels, 1, 1, 1)).astype(np.float32)
    pointwise = np.ones((channels, channels, 1, 1), np.float32) * rng.uniform(0.5, 1.0, (channels, 1, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "dw"], ["h"], name="depthwise", group=channels, pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["h", "pw"], ["y"], name="pointwise")],
        "dw_pw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels, 8, 8])],
        [numpy_helper.from_array(depthwise, "dw"), numpy_helper.from_array(pointwise, "pw")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _weight_levels(graph) -> dict[str, int]:
    """The largest |int8 level| of each quantized weight, by the float weight's name."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = [n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"]  # QDQ
    weights += [n.input[3] for n in graph.node if n.op_type == "QLinearConv"]  # QOperator
    return {name.removesuffix("_quantized"): int(np.abs(inits[name].astype(np.int32)).max())
            for name in weights if name in inits and inits[name].ndim == 4}


@pytest.mark.parametrize("layout", [{}, {"per_channel": False}, {"format": "qoperator"}], ids=["per-channel", "per-tensor", "qoperator"])
def test_depthwise_weights_keep_eight_bits_under_reduce_range_and_do_not_saturate(tmp_path, layout):
    import onnxruntime as ort

    from tests.conftest import npz_file

    model = _depthwise_then_pointwise(tmp_path / "dwpw.onnx")
    rng = np.random.default_rng(1)
    calib = npz_file(tmp_path, "calib.npz", x=rng.uniform(0.9, 1.0, (16, 16, 8, 8)).astype(np.float32))
    ctx = PassContext(work_dir=tmp_path / "q", calibration=open_data(calib, role="calibration"))
    artifact = quantize_static_int8(OnnxArtifact.from_file(model), StaticInt8Config(reduce_range=True, **layout), ctx=ctx)
    levels = _weight_levels(onnx.load(str(artifact.path)).graph)
    assert levels["dw"] == 127  # ORT's depthwise kernels widen to 16 bits: the eighth bit is kept
    assert levels["pw"] <= 64  # a GEMM's u8*s8 pairs could saturate: equal weights bound each level to half a pair's 128
    assert "depthwise Convs keep 8 bits" in ctx.records[-1].metrics["decisions"]["reduce_range"]
    if layout.get("format") == "qoperator":
        return  # the emulation below needs Q/DQ pairs ORT can leave unfused

    # ORT's fused int8 kernels compute what the Q/DQ graph says, run unfused in float (no saturation).
    # Only an x86 host without VNNI runs the kernels that could saturate; elsewhere this holds anyway.
    x = rng.uniform(0.9, 1.0, (4, 16, 8, 8)).astype(np.float32)
    unfused = ort.SessionOptions()
    unfused.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    fused_out = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    emulated = ort.InferenceSession(str(artifact.path), unfused, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(fused_out - emulated).max() <= 0.02 * np.abs(emulated).max()
