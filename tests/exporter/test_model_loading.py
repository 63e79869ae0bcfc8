import pytest
import torch

from edgeport.artifacts import OnnxArtifact, TorchArtifact
from edgeport.data import open_data
from edgeport.errors import ModelLoadError, UsageError
from edgeport.model_loading import load_model
from edgeport.specs import parse_input_spec
from tests.conftest import digits_paths, make_linear_onnx

SPEC = (parse_input_spec("image:batchx1x8x8"),)


def test_module_class_with_state_dict_weights():
    artifact = load_model("examples.digits.model:DigitsCNN", inputs=SPEC, weights=digits_paths()["weights"])
    assert isinstance(artifact, TorchArtifact) and not artifact.module.training
    reference = torch.load(digits_paths()["weights"], weights_only=True)
    assert torch.equal(artifact.module.classifier.weight, reference["classifier.weight"])


def test_inputs_inferred_from_data_in_forward_order():
    data = open_data(digits_paths()["calib"], role="calibration")
    artifact = load_model("examples.digits.model:DigitsCNN", example_data=data)
    assert artifact.inputs == SPEC


def test_weights_that_do_not_fit_name_the_keys():
    with pytest.raises(ModelLoadError, match=r"do not fit the model \('features.0.0.weight' is \(32, 1, 3, 3\) in the file but \(8, 1, 3, 3\)"):
        load_model("examples.digits.model:digits_student", inputs=SPEC, weights=digits_paths()["weights"])


def test_corrupt_weights(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04 garbage that is not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot be read as a state_dict"):
        load_model("examples.digits.model:DigitsCNN", inputs=SPEC, weights=bad)


@pytest.mark.parametrize(
    "target, message",
    [
        ("no_such_package.models:Net", "cannot be imported"),
        ("examples.digits.model:NoSuchNet", "has no attribute 'NoSuchNet'"),
        ("examples.digits.model", "neither an existing file"),
        ("missing/model.pt", "does not exist"),
    ],
)
def test_unloadable_targets(target, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(target, inputs=SPEC)


def test_torchscript_file(tmp_path, digits_model):
    path = tmp_path / "digits.ts"
    torch.jit.save(torch.jit.script(digits_model), path)
    artifact = load_model(path, inputs=SPEC)
    assert isinstance(artifact, TorchArtifact) and artifact.lineage == ("torchscript",)


def test_pt2_program_brings_its_input_specs(tmp_path, digits_model):
    path = tmp_path / "digits.pt2"
    torch.export.save(torch.export.export(digits_model, (torch.zeros(2, 1, 8, 8),)), path)
    artifact = load_model(path)
    assert artifact.program is not None
    assert [s.shape for s in artifact.inputs] == [(2, 1, 8, 8)]


def test_pickled_module_needs_explicit_trust(tmp_path, digits_model):
    path = tmp_path / "whole.pt"
    torch.save(digits_model, path)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(path, inputs=SPEC)
    assert isinstance(load_model(path, inputs=SPEC, trust_pickle=True), TorchArtifact)


def test_onnx_file_and_its_specs(tmp_path):
    path = make_linear_onnx(tmp_path / "linear.onnx")
    artifact = load_model(path)
    assert isinstance(artifact, OnnxArtifact)
    assert artifact.inputs[0].shape == ("batch", 4) and artifact.outputs[0].name == "y"
    with pytest.raises(UsageError, match="not an input of"):
        load_model(path, inputs=(parse_input_spec("image:1x4"),))


def test_corrupt_onnx_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        load_model(path)
