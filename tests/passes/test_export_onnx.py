import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgeport.artifacts import TorchArtifact
from edgeport.errors import ExportError, UsageError
from edgeport.passes import OnnxExportConfig, PassContext, export_onnx
from edgeport.specs import parse_input_spec


def _export(tmp_path, module, inputs, **config):
    ctx = PassContext(work_dir=tmp_path)
    specs = tuple(parse_input_spec(s) for s in inputs)
    artifact = export_onnx(TorchArtifact(module.eval(), specs, "test"), OnnxExportConfig(**config), ctx=ctx)
    return artifact, ctx.records[-1]


def test_cnn_exports_inline_with_dynamic_batch_and_parity(tmp_path, digits_model):
    artifact, record = _export(tmp_path, digits_model, ["image:batchx1x8x8"])
    assert record.metrics["exporter"] == "torchscript"
    assert record.metrics["parity_vs_torch"]["cosine_min"] > 0.9999
    assert artifact.files() == [artifact.path]  # weights inline, one file
    session = ort.InferenceSession(str(artifact.path))
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 1, 8, 8)).astype(np.float32)
        expected = digits_model(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(session.run(None, {"image": x})[0], expected, atol=1e-4)


def test_transformer_with_int64_tokens_keeps_dynamic_sequence(tmp_path):
    from examples.models import tiny_transformer

    model = tiny_transformer()
    artifact, record = _export(tmp_path, model, ["input_ids:batchxsequence:int64", "attention_mask:batchxsequence:int64"])
    # The TorchScript exporter freezes MultiheadAttention's reshapes; the probe catches it.
    assert record.metrics["exporter"] == "dynamo"
    assert any("frozen" in note for note in record.notes)
    session = ort.InferenceSession(str(artifact.path))
    ids = np.random.default_rng(0).integers(0, 1000, (3, 21))
    mask = np.ones_like(ids)
    mask[0, 15:] = 0
    expected = model(torch.from_numpy(ids), torch.from_numpy(mask)).detach().numpy()
    np.testing.assert_allclose(session.run(None, {"input_ids": ids, "attention_mask": mask})[0], expected, atol=1e-4)


def test_recurrent_net(tmp_path):
    from examples.models import gru_audio

    artifact, record = _export(tmp_path, gru_audio(), ["frames:batchxtimex40"])
    assert record.metrics["parity_vs_torch"]["cosine_min"] > 0.9999
    ops = {n.op_type for n in __import__("onnx").load(str(artifact.path)).graph.node}
    assert "GRU" in ops


class _Unexportable(torch.nn.Module):
    def forward(self, x):
        return torch.special.zeta(x, x)


def test_unexportable_op_is_named(tmp_path):
    with pytest.raises(ExportError, match="aten::special_zeta") as info:
        _export(tmp_path, _Unexportable(), ["x:batchx4"])
    assert "\n" not in str(info.value)
    assert not list(tmp_path.glob("*.onnx"))


def test_wrong_input_spec_fails_before_export(tmp_path, digits_model):
    with pytest.raises(ExportError, match="forward fails on inputs image:batchx3x8x8"):
        _export(tmp_path, digits_model, ["image:batchx3x8x8"])


@pytest.mark.parametrize("field, value", [("exporter", "onnxscript"), ("opset", 5), ("min_parity_cosine", 2.0)])
def test_config_validates_itself(field, value):
    with pytest.raises(UsageError):
        OnnxExportConfig(**{field: value})


class _RawAudioFrontend(torch.nn.Module):
    """Raw samples -> framed features, like wav2vec's first layer: needs at least 400 samples."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 8, kernel_size=400, stride=160)

    def forward(self, samples):
        return self.conv(samples.unsqueeze(1)).mean(-1)


def test_dynamic_dims_trace_at_sizes_the_model_accepts(tmp_path):
    model = _RawAudioFrontend().eval()
    artifact, record = _export(tmp_path, model, ["samples:batchxsamples"])
    assert record.metrics["parity_vs_torch"]["cosine_min"] > 0.9999
    session = ort.InferenceSession(str(artifact.path))
    x = np.random.default_rng(0).standard_normal((3, 16000)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"samples": x})[0], model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)
