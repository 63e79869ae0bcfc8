
from edgeport.runtimes.coverage import static_coverage
from edgeport.runtimes.estimate import estimate_latency_ms, rates_for
from edgeport.runtimes.graph_cost import graph_cost
from edgeport.specs import TensorSpec
from tests.conftest import make_linear_onnx


def _rates(peak_fp32: float, peak_int8: float, bandwidth: float):
    from edgeport.device_profiles.schema import Hardware

    return rates_for(Hardware("x86_64", 1, 1024, peak_fp32, peak_int8, bandwidth), None)


def test_matmul_macs_and_bytes(tmp_path):
    path = make_linear_onnx(tmp_path / "l.onnx", in_features=64, out_features=32)
    cost = graph_cost(str(path), [TensorSpec("x", (8, 64))]).to_dict()
    assert cost["macs_fp32"] == 8 * 64 * 32 and cost["macs_int8"] == 0
    assert cost["other_ops"] == 8 * 32  # the bias Add
    faster = estimate_latency_ms(graph_cost(str(path), [TensorSpec("x", (8, 64))]), _rates(1000, 4000, 100))
    slower = estimate_latency_ms(graph_cost(str(path), [TensorSpec("x", (8, 64))]), _rates(10, 40, 1))
    assert slower["latency_ms"] > faster["latency_ms"] > 0
    assert "error band" not in faster and faster["error_band"] is None  # spec-sheet peaks: no measured band


def test_quantized_convs_count_as_int8_and_move_int8_bytes(tmp_path, digits_onnx):
    from edgeport.data import open_data
    from edgeport.artifacts import OnnxArtifact
    from edgeport.passes import PassContext, StaticInt8Config, quantize_static_int8
    from tests.conftest import digits_paths

    ctx = PassContext(work_dir=tmp_path, calibration=open_data(digits_paths()["calib"], role="calibration"))
    int8 = quantize_static_int8(OnnxArtifact.from_file(digits_onnx), StaticInt8Config(), ctx=ctx)
    fp32_cost = graph_cost(str(digits_onnx), [TensorSpec("image", (1, 1, 8, 8))])
    int8_cost = graph_cost(str(int8.path), [TensorSpec("image", (1, 1, 8, 8))])
    assert fp32_cost.total("macs", "int8") == 0 and fp32_cost.total("macs", "fp32") > 2_000_000
    assert int8_cost.total("macs", "int8") == fp32_cost.total("macs", "fp32")  # the same work, on int8 kernels
    int8_by_name = {n.name: n for n in int8_cost.nodes}
    convs = [(f, int8_by_name[f.name]) for f in fp32_cost.nodes if f.op_type == "Conv"]
    # weights and activations at one byte, Q/DQ fused: each int8 conv moves about a quarter of the bytes
    assert convs and all(i.bytes_moved + i.weight_bytes < (f.bytes_moved + f.weight_bytes) / 3 for f, i in convs)
    # every Q/DQ fuses into a kernel but the Quantize of the graph's input: that one is real work
    assert [n.op_type for n in int8_cost.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")] == ["QuantizeLinear"]


def _if_model(path, conv_in_branch: bool = True):
    """A VAD-like graph: every convolution sits in an If branch, the other branch is one Identity."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [16, 16, 3], np.ones(16 * 16 * 3, np.float32).tolist())
    conv = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y_conv"], pads=[1, 1])], "then", [],
                             [helper.make_tensor_value_info("y_conv", TensorProto.FLOAT, [1, 16, 512])])
    skip = helper.make_graph([helper.make_node("Identity", ["x"], ["y_skip"])], "else", [],
                             [helper.make_tensor_value_info("y_skip", TensorProto.FLOAT, [1, 16, 512])])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=conv if conv_in_branch else skip, else_branch=skip)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 512]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 512])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_compute_inside_an_if_branch_is_counted(tmp_path):
    cost = graph_cost(str(_if_model(tmp_path / "if.onnx")), [TensorSpec("x", (1, 16, 512)), TensorSpec("flag", ())])
    assert cost.total("macs") == 16 * 512 * 16 * 3  # the costlier branch: the Conv
    assert any("costlier branch" in n for n in cost.notes)
    empty = graph_cost(str(_if_model(tmp_path / "skip.onnx", conv_in_branch=False)), [TensorSpec("x", (1, 16, 512)), TensorSpec("flag", ())])
    assert empty.total("macs") == 0


def test_a_loop_counts_its_body_per_trip_and_refuses_an_unknown_trip_count(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    def loop_model(path, trips: int | None):
        weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.eye(8, dtype=np.float32).ravel().tolist())
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("MatMul", ["h_in", "w"], ["h_out"])], "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, 8])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, 8])])
        inits = [weight, helper.make_tensor("cond", TensorProto.BOOL, [], [True])]
        inputs = [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 8])]
        if trips is not None:
            inits.append(helper.make_tensor("trips", TensorProto.INT64, [], [trips]))
        else:
            inputs.append(helper.make_tensor_value_info("trips", TensorProto.INT64, []))
        graph = helper.make_graph([helper.make_node("Loop", ["trips", "cond", "h"], ["y"], body=body)], "g", inputs,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return str(path)

    known = graph_cost(loop_model(tmp_path / "known.onnx", 5), [TensorSpec("h", (1, 8))])
    assert known.refused is None and known.total("macs") == 5 * 8 * 8
    unknown = graph_cost(loop_model(tmp_path / "unknown.onnx", None), [TensorSpec("h", (1, 8)), TensorSpec("trips", ())])
    assert unknown.refused and "known only at run time" in unknown.refused
    # a while loop's export: M = INT64_MAX, the condition decides
    endless = graph_cost(loop_model(tmp_path / "while.onnx", 2**63 - 1), [TensorSpec("h", (1, 8))])
    assert endless.refused and "known only at run time" in endless.refused
    assert "refused" in estimate_latency_ms(unknown, _rates(10, 40, 1))


def test_shapes_static_inference_misses_come_from_a_run_and_refuse_where_none_can_run(tmp_path):
    """A Reshape to a shape given as an input defeats static inference; a run on zeros learns it.
    A vendor op this runtime lacks (as an NPU-only graph has) leaves the MatMul unknown: refused."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    def model(path, first):
        weight = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.ones(64 * 64, np.float32).tolist())
        graph = helper.make_graph(
            [first, helper.make_node("MatMul", ["r", "w"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64]), helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.vendor", 1)]), str(path))
        return str(path)

    specs = [TensorSpec("x", (4, 64)), TensorSpec("shape", (2,), "int64")]
    learned = graph_cost(model(tmp_path / "reshape.onnx", helper.make_node("Reshape", ["x", "shape"], ["r"])), specs)
    assert learned.refused is None and learned.total("macs") == 4 * 64 * 64
    assert any("taken from one run" in n for n in learned.notes)
    vendor = graph_cost(model(tmp_path / "vendor.onnx", helper.make_node("Mystery", ["x", "shape"], ["r"], domain="com.vendor")), specs)
    assert vendor.refused and "100% of the weights" in vendor.refused


def test_conv_transpose_macs_count_the_group_once(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    # 8 input channels, 2 groups, 4 output channels per group, 3x3: each input element meets 4 x 9 weights
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 4, 3, 3], np.ones(8 * 4 * 9, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "ct.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    cost = graph_cost(str(path), [TensorSpec("x", (1, 8, 5, 5))])
    assert cost.total("macs") == 8 * 5 * 5 * 4 * 9 and cost.nodes[0].op_class == "conv"  # grouped, not depthwise


def test_static_coverage_for_mobile_providers(tmp_path):
    path = make_linear_onnx(tmp_path / "l.onnx")
    nnapi = static_coverage(str(path), "NnapiExecutionProvider")
    assert nnapi["nodes"] == 2 and nnapi["preferred_share"] == 1.0 and "dynamic dims" in nnapi["note"]
    assert static_coverage(str(path), "CoreMLExecutionProvider")["nodes"] == 2
    assert static_coverage(str(path), "TensorrtExecutionProvider") is None  # no static checker exists


def test_mobile_coverage_is_judged_at_the_shapes_validation_runs_at(tmp_path):
    path = make_linear_onnx(tmp_path / "l.onnx")
    fixed = static_coverage(str(path), "NnapiExecutionProvider", {"x": (1, 4)})
    assert fixed["input_shapes"] == {"x": [1, 4]} and fixed["note"] == "" and fixed["preferred_share"] == 1.0
    still_dynamic = static_coverage(str(path), "NnapiExecutionProvider")
    assert still_dynamic["input_shapes"] == {"x": ["batch", 4]} and "dynamic dims" in still_dynamic["note"]


def test_vnni_is_seen_on_an_intel_mac(monkeypatch):
    """CPU flags came only from /proc/cpuinfo, so an Intel Mac with AVX512-VNNI was taken for a
    saturating AVX2 host. Faked here: the host's own facts must never decide a test."""
    import subprocess
    import types

    from edgeport.runtimes import hostcpu

    answers = {"machdep.cpu.features": "FPU SSE SSE2 AVX1.0", "machdep.cpu.leaf7_features": "AVX2 AVX512F AVX512VNNI",
               "machdep.cpu.brand_string": "Intel(R) Xeon(R) W-3245 CPU @ 3.20GHz"}

    def sysctl(args, **_):
        assert args[:2] == ["sysctl", "-n"]
        return types.SimpleNamespace(stdout=answers[args[2]] + "\n", returncode=0)

    monkeypatch.setattr(hostcpu.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(hostcpu.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(hostcpu.platform, "processor", lambda: "i386")  # its first call runs uname -p
    monkeypatch.setattr(subprocess, "run", sysctl)
    hostcpu.host_cpu.cache_clear()
    try:
        cpu = hostcpu.host_cpu()
        assert cpu.has_vnni and "avx2" in cpu.flags and cpu.model_name.startswith("Intel(R) Xeon(R) W-3245")
    finally:
        hostcpu.host_cpu.cache_clear()


def test_vnni_is_seen_on_windows(monkeypatch):
    """Windows has no /proc/cpuinfo and no sysctl: features come from numpy's CPUID probe. Faked:
    a VNNI Xeon reported as numpy spells it."""
    from edgeport.runtimes import hostcpu

    reported = {"SSE": True, "AVX2": True, "AVX512F": True, "AVX512VNNI": True, "NEON": False}
    real = hostcpu._numpy_flags
    monkeypatch.setattr(hostcpu.platform, "system", lambda: "Windows")
    monkeypatch.setattr(hostcpu.platform, "machine", lambda: "AMD64")
    monkeypatch.setattr(hostcpu, "_numpy_flags", lambda: real(reported))
    hostcpu.host_cpu.cache_clear()
    try:
        cpu = hostcpu.host_cpu()
        assert cpu.arch == "x86_64" and cpu.has_vnni
        assert "avx2" in cpu.flags and "neon" not in cpu.flags
        reported["AVX512VNNI"] = False
        hostcpu.host_cpu.cache_clear()
        assert not hostcpu.host_cpu().has_vnni
    finally:
        hostcpu.host_cpu.cache_clear()


def test_apple_silicon_features_come_from_numpy_and_its_brand_is_kept(monkeypatch):
    """No machdep.cpu.features on Apple silicon: sysctl fails for those keys, names the brand."""
    import subprocess
    import types

    from edgeport.runtimes import hostcpu

    def sysctl(args, **_):
        found = args[2] == "machdep.cpu.brand_string"
        return types.SimpleNamespace(stdout="Apple M2\n" if found else "", returncode=0 if found else 1)

    monkeypatch.setattr(hostcpu.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(hostcpu.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(hostcpu.platform, "processor", lambda: "arm")
    monkeypatch.setattr(subprocess, "run", sysctl)
    monkeypatch.setattr(hostcpu, "_numpy_flags", lambda: {"neon", "asimd", "asimddp"})
    hostcpu.host_cpu.cache_clear()
    try:
        cpu = hostcpu.host_cpu()
        assert cpu.model_name == "Apple M2" and cpu.has_feature("dotprod") and cpu.has_feature("neon")
    finally:
        hostcpu.host_cpu.cache_clear()


def test_nodes_the_accelerator_leaves_to_the_cpu_are_priced_at_the_cpu_peaks(tmp_path):
    """iPhone: the Neural Engine's 17 TOPS for what CoreML takes; a GRU, which CoreML does not
    take (ORT's own checker says so), runs on the two performance cores, at their peaks."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    import edgeport
    from edgeport.runtimes.estimate import cpu_rates_for, rates_for

    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 384, 64], np.ones(384 * 64, np.float32).tolist())
    r = helper.make_tensor("r", TensorProto.FLOAT, [1, 384, 128], np.ones(384 * 128, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("GRU", ["x", "w", "r"], ["y"], hidden_size=128)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [50, 1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, r])
    path = tmp_path / "gru.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    verdict = edgeport.validate(path, profile="iphone-coreml", runs=3).verdicts[0]
    estimate = verdict.details["estimate"]
    assert estimate["cpu_fallback_ops"] == ["GRU"] and estimate["cpu_fallback_ms"] > 0
    profile = edgeport.load_profile("iphone-coreml")
    cost = graph_cost(str(path), [TensorSpec("x", (50, 1, 64))])
    on_ane = estimate_latency_ms(cost, rates_for(profile.hardware, None))
    on_cpu = estimate_latency_ms(cost, rates_for(profile.hardware, None), cpu_rates_for(profile.hardware), frozenset({"GRU"}))
    assert estimate["latency_ms"] == on_cpu["latency_ms"] > 10 * on_ane["latency_ms"]  # 221 GFLOPS, not 17 TOPS
