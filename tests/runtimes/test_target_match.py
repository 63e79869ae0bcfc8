"""On-target is a claim every condition must prove; host facts are faked, never read from this machine."""

from __future__ import annotations

from pathlib import Path

import edgeport
from edgeport.device_profiles import load_profile
from edgeport.runtimes.hostcpu import HostCpu
from edgeport.runtimes.target_match import claim_target
from tests.conftest import CI_RUNNER_CPU

CPU_ONLY = ["CPUExecutionProvider"]
AVX2_RUNNER = HostCpu(*CI_RUNNER_CPU)
ICE_LAKE = HostCpu("x86_64", frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}), "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", 8)
# Linux arm64 spells NEON 'asimd' and dotprod 'asimddp' in /proc/cpuinfo
PI4 = HostCpu("arm64", frozenset({"fp", "asimd", "crc32"}), "Cortex-A72", 4)
PI5 = HostCpu("arm64", frozenset({"fp", "asimd", "asimddp", "crc32"}), "Cortex-A76", 4)


def test_an_avx2_host_is_not_the_vnni_server():
    claim = claim_target(load_profile("x86-server-vnni"), AVX2_RUNNER, CPU_ONLY)
    assert not claim.on_target
    assert any("avx512f, avx512_vnni" in f for f in claim.failed) and any("2 cores" in f for f in claim.failed)
    assert claim_target(load_profile("x86-server-vnni"), ICE_LAKE, CPU_ONLY).on_target


def test_an_arm64_host_without_dotprod_is_not_a_pi_5():
    claim = claim_target(load_profile("raspberry-pi-5"), PI4, CPU_ONLY)
    assert not claim.on_target and claim.failed == ("the CPU lacks dotprod",)
    assert claim_target(load_profile("raspberry-pi-5"), PI5, CPU_ONLY).on_target
    assert claim_target(load_profile("raspberry-pi-4"), PI4, CPU_ONLY).on_target


def test_architecture_providers_and_cpu_model_each_decide(tmp_path):
    assert "architecture x86_64" in claim_target(load_profile("raspberry-pi-4"), AVX2_RUNNER, CPU_ONLY).describe()
    assert "OpenVINOExecutionProvider not available" in claim_target(load_profile("openvino-cpu"), AVX2_RUNNER, CPU_ONLY).describe()
    text = (edgeport_profile_text("ci-x86-avx2")
            .replace("[hardware]\n", '[hardware]\ncpu_model_pattern = "Xeon"\n', 1))
    path = tmp_path / "xeon-only.toml"
    path.write_text(text)
    claim = claim_target(load_profile(path), AVX2_RUNNER, CPU_ONLY)
    assert not claim.on_target and "does not match the profile's 'Xeon'" in claim.failed[0]
    assert claim_target(load_profile(path), ICE_LAKE, CPU_ONLY).on_target


def edgeport_profile_text(name: str) -> str:
    return Path(load_profile(name).path).read_text()


def test_validate_reports_the_failed_condition_and_judges_latency_on_the_estimate(tmp_path, fake_host):
    """The same x86 machine, read as a host without FMA: the ci profile's measurement is a host one."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.eye(8, dtype=np.float32).ravel().tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [weight])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    fake_host(HostCpu("x86_64", frozenset({"avx2"}), "Old Haswell-less box", 2))
    verdict = edgeport.validate(model, profile="ci-x86-avx2", runs=5).verdicts[0]
    assert not verdict.on_target and verdict.details["target"]["failed"] == ["the CPU lacks fma"]
    assert verdict.details["measurement"]["kind"] == "host"
    latency = next(r for r in verdict.results if r.name == "latency_p95_ms")
    assert latency.basis.startswith("estimate for target")
    fake_host()
    verdict = edgeport.validate(model, profile="ci-x86-avx2", runs=5).verdicts[0]
    assert verdict.on_target and verdict.details["measurement"]["kind"] == "target"


def test_a_raspberry_pi_is_named_by_its_board_not_by_bcm2835():
    from edgeport.runtimes.hostcpu import parse_cpuinfo

    text = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n\n"
            "Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n")
    flags, name = parse_cpuinfo(text)
    assert name == "Raspberry Pi 4 Model B Rev 1.1" and {"asimd", "crc32"} <= flags
    x86 = "processor\t: 0\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7551 32-Core Processor\nflags\t\t: fpu avx2 fma\n"
    assert parse_cpuinfo(x86) == ({"fpu", "avx2", "fma"}, "AMD EPYC 7551 32-Core Processor")
