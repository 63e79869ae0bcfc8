"""edgeport distill / prune end to end: outputs, the .pt2 handoff to export, torchrun, bad input."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import edgeport
from edgeport.cli import cli
from edgeport.passes import ChannelPruneConfig, DistillConfig
from tests.conftest import ROOT, digits_paths

P = digits_paths()
TEACHER = ["--teacher", "examples.digits.model:trained_digits_cnn", "--input", "image:batchx1x8x8"]


def _cli(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def test_distill_writes_a_program_that_export_takes(tmp_path):
    out = tmp_path / "student"
    result = _cli("distill", *TEACHER, "--student", "examples.digits.model:digits_student", "--data", P["train"],
                  "--eval", P["test"], "--epochs", "3", "--min-fidelity", "0.5", "-o", out)  # 3 epochs: a rough student, on purpose
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["model.pt2", "report.json"]
    report = json.loads((out / "report.json").read_text())
    ref, res = report["comparison"]["reference"], report["comparison"]["result"]
    assert res["macs"] <= ref["macs"] / 4 and res["params"] < ref["params"]
    assert res["onnx_latency_ms_p50_1thread"] > 0 and res["accuracy"] is not None and ref["accuracy"] >= 0.99
    # a 3-epoch student has a few low-margin samples: a looser cosine target than the default 0.99
    exported = _cli("export", out / "model.pt2", "--calib", P["calib"], "--eval", P["test"], "--min-cosine", "0.98", "-o", tmp_path / "onnx", "--quiet")
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "onnx" / "model.onnx").is_file()


def test_prune_channels_with_recovery(tmp_path):
    result = _cli("prune", "examples.digits.model:trained_digits_cnn", "--input", "image:batchx1x8x8", "--method", "channels",
                  "--ratio", "0.5", "--data", P["train"], "--recover-epochs", "3", "--eval", P["test"], "-o", tmp_path / "p", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["name"] for s in report["steps"]] == ["prune_channels", "distill"]
    assert report["ratios"]["macs"] < 0.35


def test_prune_magnitude_and_lowrank(tmp_path):
    for method, extra in (("magnitude", ["--ratio", "0.5"]), ("lowrank", ["--energy", "0.9"])):
        result = _cli("prune", "examples.digits.model:trained_digits_cnn", "--input", "image:batchx1x8x8", "--method", method, *extra,
                      "-o", tmp_path / method, "--quiet")
        assert result.exit_code == 0, result.output
        assert (tmp_path / method / "model.pt2").is_file()


def test_export_api_runs_torch_steps_ahead_of_export(tmp_path):
    result = edgeport.export(
        "examples.digits.model:trained_digits_cnn", inputs=["image:batchx1x8x8"], calib=P["calib"], eval=P["test"],
        torch_steps=[ChannelPruneConfig(ratio=0.5), DistillConfig(epochs=3)], train_data=P["train"], out_dir=tmp_path / "o",
    )
    names = [s["name"] for s in result.report["steps"]]
    assert names == ["prune_channels", "distill", "export", "optimize", "quantize_search"]


def test_torchrun_trains_with_two_processes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "edgeport.cli", "distill", *TEACHER,
         "--student", "examples.digits.model:digits_student", "--data", str(P["train"]), "--epochs", "2", "-o", str(out), "--quiet",
         "--min-fidelity", "0"],  # two epochs make a rough student: this test is about the processes, not its fidelity
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # no rank left a staging or checkpoint folder
    report = json.loads((out / "report.json").read_text())
    metrics = report["steps"][0]["metrics"]
    assert metrics["world_size"] == 2 and metrics["device"] == "cpu"  # torch here is the CPU build
    assert len(metrics["history"]) == 2


def _corrupt(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"PK\x03\x04 truncated checkpoint")
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda t: ["distill", *TEACHER, "--student", "tests.exporter.bad_models:seven_class_student", "--data", P["train"], "-o", t / "o"],
         "does not match the teacher's"),
        (lambda t: ["prune", "examples.digits.model:trained_digits_cnn", "--input", "image:batchx1x8x8", "--method", "channels", "--ratio", "1.2", "-o", t / "o"],
         "pruning ratio 1.2 is out of range"),
        (lambda t: ["prune", "examples.digits.model:trained_digits_cnn", "--input", "image:batchx1x8x8", "--method", "magnitude", "--ratio", "0.5",
                    "--layers", "features.42", "-o", t / "o"], "no layer 'features.42'"),
        (lambda t: ["prune", "examples.digits.model:DigitsCNN", "--weights", _corrupt(t), "--input", "image:batchx1x8x8", "--method", "magnitude",
                    "--ratio", "0.5", "-o", t / "o"], "cannot be read as a state_dict"),
        (lambda t: ["distill", *TEACHER, "--student", "examples.digits.model:digits_student", "--data", P["train"], "--hint", "features.1:nope",
                    "-o", t / "o"], "student has no layer 'nope'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    result = _cli(*args(tmp_path))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


def test_resume_from_the_cli_after_an_interrupted_run(tmp_path):
    """An interrupted distill leaves its checkpoint beside OUTDIR; --resume picks it up."""
    out = tmp_path / "student"
    args = ["distill", *TEACHER, "--student", "examples.digits.model:digits_student", "--data", P["train"], "--epochs", "3", "-o", out,
            "--min-fidelity", "0"]  # a 3-epoch student: this test is about resuming, not fidelity
    checkpoints = tmp_path / ".student.edgeport-checkpoints"
    checkpoints.mkdir()
    (checkpoints / "distill-0.pt").write_bytes(b"PK\x03\x04 a torn checkpoint")
    torn = _cli(*args, "--resume")
    assert torn.exit_code == 2 and "cannot be resumed from" in torn.stderr and not out.exists()
    (checkpoints / "distill-0.pt").unlink()
    assert _cli(*args).exit_code == 0
    assert not checkpoints.exists()  # a finished run cleans up after itself


def _student_weights(out) -> dict:
    import torch

    return {k: v.clone() for k, v in torch.export.load(str(out / "model.pt2")).module().state_dict().items()}


def test_a_distillation_killed_after_an_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL a running distill once its checkpoint holds epoch 2 or later (of 16, so a fast host
    still has epochs left to kill), resume it, and the student equals the one an uninterrupted run trains."""
    import signal
    import time

    import torch

    EPOCHS = 16

    args = [sys.executable, "-m", "edgeport.cli", "distill", *TEACHER, "--student", "examples.digits.model:digits_student", "--data", str(P["train"]),
            "--epochs", str(EPOCHS), "--patience", "0", "--min-fidelity", "0", "--quiet"]
    whole = subprocess.run([*args, "-o", str(tmp_path / "whole")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    checkpoint = tmp_path / ".killed.edgeport-checkpoints" / "distill-0.pt"
    process = subprocess.Popen([*args, "-o", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at, deadline = None, time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if checkpoint.is_file():
            try:
                epoch = torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"]
            except Exception:  # replaced while being read: look again
                epoch = 0
            if epoch >= 2:
                process.send_signal(signal.SIGKILL)
                killed_at = epoch
                break
        time.sleep(0.01)
    process.wait(timeout=60)
    assert killed_at is not None and killed_at < EPOCHS, "the run ended before it could be killed mid-way"
    assert not out.exists()  # nothing half-written where the result goes
    resumed = subprocess.run([*args, "-o", str(out), "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((out / "report.json").read_text())["steps"][0]["metrics"]
    assert metrics["resumed_after_epoch"] >= killed_at  # it went on from the checkpoint, not from the start
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, EPOCHS + 1))
    expected, got = _student_weights(tmp_path / "whole"), _student_weights(out)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_collapsed_student_with_sigmoid_outputs_is_never_reported_as_a_success(tmp_path):
    """CREPE's 360 sigmoid outputs got KL over softened 'class scores', and a student at 3036 cents
    exited 0 with 'accuracy -'. Independent probabilities now get BCE, and fidelity to the teacher
    is measured without labels: a student far from it exits 1, still written for inspection."""
    import json

    import numpy as np
    from click.testing import CliRunner

    from edgeport.cli import cli

    np.savez(tmp_path / "frames.npz", x=np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["distill", "--teacher", "tests.exporter.bad_models:SparseSigmoidTeacher",
                                      "--student", "tests.exporter.bad_models:SigmoidStudent", "--input", "x:batchx16",
                                      "--data", str(tmp_path / "frames.npz"), "--eval", str(tmp_path / "frames.npz"),
                                      "--epochs", "1", "--lr", "1e-9", "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "FAIL: the outputs collapsed" in result.stderr and (out / "model.pt2").is_file()
    report = json.loads((out / "report.json").read_text())
    step = next(s for s in report["steps"] if s["name"] == "distill")
    assert step["metrics"]["loss"] == "bce" and "independent probabilities" in step["metrics"]["loss_rule"]
    fidelity = report["fidelity_to_reference"]
    assert not fidelity["met"] and fidelity["cosine_mean"] < 0.9 and fidelity["top1_agreement"] is not None
    assert fidelity["data"].startswith("evaluation data")


def test_torchrun_with_a_sample_count_the_ranks_cannot_share_evenly_finishes(tmp_path):
    """129 samples over 2 ranks at batch 64 gave one rank 2 batches and the other 1: the extra
    all-reduce waited forever. Ranks now take equal shares (one sample is left out per epoch)."""
    import numpy as np

    data = np.load(P["train"])
    np.savez(tmp_path / "odd.npz", image=data["image"][:129], labels=data["labels"][:129])
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "edgeport.cli", "distill", *TEACHER,
         "--student", "examples.digits.model:digits_student", "--data", str(tmp_path / "odd.npz"), "--val-data", str(P["test"]),
         "--epochs", "1", "--batch-size", "64", "-o", str(out), "--quiet", "--min-fidelity", "0"],
        capture_output=True, text=True, timeout=180, cwd=ROOT, env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_each_rank_trains_on_its_own_gpu_and_the_backend_follows_the_device():
    """Under torchrun with CUDA present, nccl was chosen while every tensor stayed on the CPU, which
    nccl cannot reduce. The device now comes first and the backend follows it. (No GPU here: the
    decision is checked for both cases, and the CPU case runs for real in the torchrun tests.)"""
    from edgeport.errors import UsageError
    from edgeport.passes.distill_world import backend_for, training_device

    assert training_device("auto", 1, cuda_devices=2) == "cuda:1"
    assert training_device("auto", 1, cuda_devices=1) == "cuda:0"  # one GPU made visible per rank
    assert training_device("auto", 1, cuda_devices=0) == "cpu"
    assert training_device("cpu", 0, cuda_devices=2) == "cpu"
    assert backend_for(training_device("auto", 0, cuda_devices=2)) == "nccl"
    assert backend_for(training_device("auto", 0, cuda_devices=0)) == "gloo"
    with pytest.raises(UsageError, match="no CUDA device"):
        training_device("cuda", 0, cuda_devices=0)
    with pytest.raises(UsageError, match="no GPU of its own"):
        training_device("auto", 3, cuda_devices=2)
