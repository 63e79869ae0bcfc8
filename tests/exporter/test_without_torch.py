"""edgeport must work on an .onnx model where torch cannot be imported (edge devices)."""

import json
import subprocess
import sys
import textwrap

from tests.conftest import digits_paths

BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is not installed on this device")
    sys.meta_path.insert(0, _NoTorch())
    from edgeport.cli import main
    sys.argv = ["edgeport"] + sys.argv[1:]
    main()
    """
)


def test_export_of_onnx_model_runs_without_torch(tmp_path, digits_onnx):
    out = tmp_path / "out"
    args = ["export", str(digits_onnx), "--calib", str(digits_paths()["calib"]), "--eval", str(digits_paths()["test"]), "-o", str(out), "--json"]
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [s["name"] for s in report["steps"]] == ["optimize", "quantize_search"]
    assert "torch" not in report["versions"]
    assert report["summary"]["parity_vs_fp32"]["top1_agreement"] >= 0.99


def test_torch_model_without_torch_is_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, "export", "examples.digits.model:DigitsCNN", "--input", "image:1x1x8x8", "-o", str(tmp_path / "o"), "--no-quantize"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "torch" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_validate_runs_without_torch(tmp_path, digits_onnx):
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, "validate", str(digits_onnx), "--profile", "ci-x86-avx2", "--runs", "10", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "pass"
