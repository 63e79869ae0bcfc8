
from edgeport.runtimes.coverage import static_coverage
from edgeport.runtimes.estimate import estimate_latency_ms, graph_cost
from edgeport.specs import TensorSpec
from tests.conftest import make_linear_onnx


def test_matmul_macs_and_bytes(tmp_path):
    path = make_linear_onnx(tmp_path / "l.onnx", in_features=64, out_features=32)
    cost = graph_cost(str(path), [TensorSpec("x", (8, 64))])
    assert cost.macs_fp32 == 8 * 64 * 32 and cost.macs_int8 == 0
    assert cost.other_ops == 8 * 32  # the bias Add
    assert cost.weight_bytes == (64 * 32 + 32) * 4
    faster = estimate_latency_ms(cost, 1000, 4000, 100)
    slower = estimate_latency_ms(cost, 10, 40, 1)
    assert slower["latency_ms"] > faster["latency_ms"] > 0


def test_quantized_convs_count_as_int8(tmp_path, digits_onnx):
    from edgeport.data import open_data
    from edgeport.artifacts import OnnxArtifact
    from edgeport.passes import PassContext, StaticInt8Config, quantize_static_int8
    from tests.conftest import digits_paths

    ctx = PassContext(work_dir=tmp_path, calibration=open_data(digits_paths()["calib"], role="calibration"))
    int8 = quantize_static_int8(OnnxArtifact.from_file(digits_onnx), StaticInt8Config(), ctx=ctx)
    fp32_cost = graph_cost(str(digits_onnx), [TensorSpec("image", (1, 1, 8, 8))])
    int8_cost = graph_cost(str(int8.path), [TensorSpec("image", (1, 1, 8, 8))])
    assert fp32_cost.macs_int8 == 0 and fp32_cost.macs_fp32 > 2_000_000
    assert int8_cost.macs_int8 == fp32_cost.macs_fp32  # the same work, on int8 kernels
    assert int8_cost.weight_bytes < fp32_cost.weight_bytes / 3


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

    def sysctl(args, **_):
        assert args[0] == "sysctl"
        return types.SimpleNamespace(stdout="FPU SSE SSE2 AVX1.0\nAVX2 AVX512F AVX512VNNI\nIntel(R) Xeon(R) W-3245 CPU @ 3.20GHz\n")

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
