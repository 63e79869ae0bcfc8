"""Shared fixtures: small real models and data, and a private calibration cache per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # examples.* models are importable, as from the repo root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPORT_CACHE_DIR", str(tmp_path / "edgeport-cache"))


@pytest.fixture(autouse=True)
def _repo_root_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)


# The CI runner's shape (ci-x86-avx2): tests that need "this host is the target" fake it with this,
# so they mean the same on an arm64 or a VNNI machine.
CI_RUNNER_CPU = ("x86_64", frozenset({"sse4_2", "avx2", "fma"}), "AMD EPYC 7551 32-Core Processor", 2)


@pytest.fixture()
def fake_host(monkeypatch):
    """fake_host(HostCpu(...)) makes validation and int8 defaults see that CPU instead of this one."""
    from edgeport.runtimes import hostcpu

    def use(cpu=None) -> None:
        cpu = cpu or hostcpu.HostCpu(*CI_RUNNER_CPU)
        monkeypatch.setattr(hostcpu, "host_cpu", lambda: cpu)
        monkeypatch.setattr("edgeport.runtimes.measure.host_cpu", lambda: cpu)
        monkeypatch.setattr("edgeport.passes.quantize_static.host_cpu", lambda: cpu)
        monkeypatch.setattr("edgeport.profile_calibration.host_cpu", lambda: cpu)
    return use


@pytest.fixture(scope="session")
def digits_model():
    from examples.digits.model import trained_digits_cnn

    return trained_digits_cnn()


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory):
    """The trained digits CNN exported once to fp32 ONNX, for tests of ONNX-side code."""
    import edgeport

    out = tmp_path_factory.mktemp("digits-fp32")
    edgeport.export(
        "examples.digits.model:trained_digits_cnn",
        inputs=["image:batchx1x8x8"],
        quantize=False,
        out_dir=out,
    )
    return out / "model.onnx"


def digits_paths() -> dict[str, Path]:
    return {"weights": DIGITS / "digits_cnn.pt", "calib": DIGITS / "calib.npz", "test": DIGITS / "test.npz", "train": DIGITS / "train.npz"}


def make_linear_onnx(path: Path, in_features: int = 4, out_features: int = 3, batch: str | int = "batch") -> Path:
    """A two-node graph (MatMul + Add) built with onnx.helper, like ORT's own quantization tests."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((in_features, out_features)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(out_features).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"), helper.make_node("Add", ["h", "B"], ["y"], name="add")],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out_features])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def npz_file(folder: Path, name: str = "data.npz", **arrays) -> Path:
    """An .npz of the given arrays (keyed as given): test data that fits or misfits a model."""
    path = folder / name
    np.savez(path, **arrays)
    return path


def corrupt_onnx(folder: Path) -> Path:
    """A file named .onnx whose bytes are not a model."""
    path = folder / "corrupt.onnx"
    path.write_bytes(b"\x0a\x03not onnx")
    return path
