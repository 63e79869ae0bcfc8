"""`edgeport profiles calibrate` measures this machine and writes a profile that loads, names its
source, and gives validate's estimate a measured error band. Values are this host's: only their
shape and consistency are asserted, never a speed."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper

from edgeport.cli import cli
from edgeport.device_profiles import load_profile
from edgeport.runtimes.graph_cost import OP_CLASSES


def test_calibrate_writes_a_measured_profile_that_validate_uses(tmp_path, fake_host):
    fake_host()  # the profile records this CPU; validation below must then see the same one
    out = tmp_path / "host.toml"
    result = CliRunner().invoke(cli, ["profiles", "calibrate", "-o", str(out), "--threads", "1", "--budgets-from", "ci-x86-avx2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "int8/fp32 speed" in result.output and "measured error on this device" in result.output
    profile = load_profile(out)
    m = profile.measured
    assert m.threads == 1 and profile.runtime.intra_op_threads == 1
    assert {f"{c}_fp32" for c in OP_CLASSES} <= set(m.gops) and all(v > 0 for v in m.gops.values())
    assert set(m.int8_speedup) == {"conv", "depthwise", "matmul", "elementwise"}
    assert m.estimate_error_models == 6 and 0 <= m.estimate_error_median <= m.estimate_error_max
    assert "measured by edgeport profiles calibrate on AMD EPYC 7551" in profile.sources["peak_gops_fp32"]
    assert profile.hardware.peak_gops_fp32 == max(m.gops["conv_fp32"], m.gops["matmul_fp32"])
    assert profile.budgets.latency_p95_ms == load_profile("ci-x86-avx2").budgets.latency_p95_ms
    assert not list(tmp_path.glob(".host.toml.*"))  # written under a temporary name, then renamed

    weight = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.ones(64 * 64, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])], [weight])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    validated = CliRunner().invoke(cli, ["validate", str(model), "--profile", str(out), "--runs", "5", "--json"])
    report = json.loads(validated.stdout)["profiles"][0]
    assert report["on_target"] and report["estimate"]["error_band"]["models"] == 6
    assert "rates measured on the device at 1 threads" in report["estimate"]["assumptions"]


def test_a_bad_thread_count_is_refused_with_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["profiles", "calibrate", "-o", str(tmp_path / "h.toml"), "--threads", "0"])
    assert result.exit_code == 2 and "--threads 0" in result.output
    assert not (tmp_path / "h.toml").exists()
