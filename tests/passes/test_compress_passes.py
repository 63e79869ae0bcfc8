"""Pruning, low-rank and distillation passes on real models."""

import pytest
import torch

from edgeport.artifacts import TorchArtifact
from edgeport.data import open_data
from edgeport.errors import UsageError
from edgeport.passes import (ChannelPruneConfig, DistillConfig, LowRankConfig, MagnitudePruneConfig, PassContext, channel_prune,
                             distill, low_rank, magnitude_prune)
from edgeport.specs import parse_input_spec
from tests.conftest import digits_paths

IMAGE = (parse_input_spec("image:batchx1x8x8"),)


def _artifact(module, specs=IMAGE):
    return TorchArtifact(module.eval(), specs, "test")


def test_magnitude_pruning_is_permanent_and_says_what_it_buys(tmp_path, digits_model):
    ctx = PassContext(work_dir=tmp_path)
    pruned = magnitude_prune(_artifact(digits_model), MagnitudePruneConfig(ratio=0.6), ctx=ctx).module
    assert not any(name.endswith("_mask") for name, _ in pruned.named_buffers())  # no masks left behind
    metrics = ctx.records[-1].metrics
    assert metrics["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert metrics["compressed_bytes_after"] < 0.8 * metrics["compressed_bytes_before"]
    assert "not latency" in ctx.records[-1].notes[0]
    assert digits_model.features[0][0].weight.count_nonzero() == digits_model.features[0][0].weight.numel()  # input untouched


def test_channel_pruning_shrinks_resnet_with_residuals(tmp_path):
    from examples.models import resnet18

    ctx = PassContext(work_dir=tmp_path)
    specs = (parse_input_spec("image:batchx3x64x64"),)
    pruned = channel_prune(_artifact(resnet18(), specs), ChannelPruneConfig(ratio=0.5), ctx=ctx).module
    metrics = ctx.records[-1].metrics
    assert metrics["macs_ratio"] < 0.35 and metrics["params_after"] < 0.35 * metrics["params_before"]
    assert all(m.out_channels % 8 == 0 for m in pruned.modules() if isinstance(m, torch.nn.Conv2d))
    assert pruned.fc.out_features == 1000  # the output layer keeps its width
    assert metrics["parity_onnx_vs_torch"]["cosine_min"] > 0.999  # checked through ONNX Runtime


def test_channel_pruning_handles_depthwise_convolutions(tmp_path):
    from examples.models import mobilenet_v2

    ctx = PassContext(work_dir=tmp_path)
    pruned = channel_prune(_artifact(mobilenet_v2(), (parse_input_spec("image:batchx3x64x64"),)), ChannelPruneConfig(ratio=0.5), ctx=ctx).module
    for m in pruned.modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels
    assert ctx.records[-1].metrics["macs_ratio"] < 0.5


def test_channel_pruning_of_attention_heads(tmp_path):
    from examples.models import tiny_transformer

    ctx = PassContext(work_dir=tmp_path)
    specs = (parse_input_spec("input_ids:batchxsequence:int64"), parse_input_spec("attention_mask:batchxsequence:int64"))
    pruned = channel_prune(_artifact(tiny_transformer(), specs), ChannelPruneConfig(ratio=0.5), ctx=ctx).module
    assert ctx.records[-1].metrics["macs_ratio"] <= 0.6
    ids = torch.ones(2, 11, dtype=torch.long)
    assert pruned(ids, ids).shape == (2, 64)  # still runs at another sequence length


def test_low_rank_only_where_macs_drop(tmp_path):
    torch.manual_seed(0)
    rank4 = torch.nn.Linear(256, 256)
    rank4.weight.data = torch.randn(256, 4) @ torch.randn(4, 256)
    model = torch.nn.Sequential(rank4, torch.nn.ReLU(), torch.nn.Linear(256, 10))
    ctx = PassContext(work_dir=tmp_path)
    out = low_rank(_artifact(model, (parse_input_spec("x:batchx256"),)), LowRankConfig(energy=0.999), ctx=ctx).module
    replaced = ctx.records[-1].metrics["replaced"]
    assert [r["layer"] for r in replaced] == ["0"] and replaced[0]["rank"] == 4
    x = torch.randn(3, 256)
    torch.testing.assert_close(out(x), model(x), atol=1e-3, rtol=1e-3)
    assert ctx.records[-1].metrics["macs_after"] < ctx.records[-1].metrics["macs_before"] / 10


@pytest.mark.parametrize("config", [lambda: MagnitudePruneConfig(ratio=1.5), lambda: ChannelPruneConfig(ratio=0.0), lambda: LowRankConfig(energy=0)])
def test_out_of_range_ratios(config):
    with pytest.raises(UsageError, match="out of range|not within"):
        config()


def test_unknown_layer_name_is_named(tmp_path, digits_model):
    with pytest.raises(UsageError, match="no layer 'features.9'"):
        magnitude_prune(_artifact(digits_model), MagnitudePruneConfig(layers=("features.9",)), ctx=PassContext(work_dir=tmp_path))


def _distill(tmp_path, student, config, **ctx_args):
    from examples.digits.model import trained_digits_cnn

    ctx = PassContext(work_dir=tmp_path, **ctx_args)
    out = distill(_artifact(student), config, teacher=_artifact(trained_digits_cnn()), data=open_data(digits_paths()["train"], role="training"), ctx=ctx)
    return out, ctx.records[-1].metrics


def test_distillation_with_feature_hints_and_adapter(tmp_path):
    from examples.digits.model import digits_student

    _, metrics = _distill(tmp_path, digits_student(), DistillConfig(epochs=3, hints=("features.1:features.1",)))
    assert metrics["epochs_run"] == 3 and metrics["hints"] == ["features.1:features.1"]
    assert metrics["history"][-1]["val_accuracy"] > 0.5


def test_student_with_other_output_shape_is_refused(tmp_path):
    from examples.digits.model import DigitsCNN

    student = DigitsCNN(width=8)
    student.classifier = torch.nn.Linear(32, 7)
    with pytest.raises(UsageError, match=r"output shape \(2, 7\) does not match the teacher's \(2, 10\)"):
        _distill(tmp_path, student, DistillConfig(epochs=1))


def test_unknown_hint_layer(tmp_path):
    from examples.digits.model import digits_student

    with pytest.raises(UsageError, match="student has no layer 'features.7'"):
        _distill(tmp_path, digits_student(), DistillConfig(epochs=1, hints=("features.1:features.7",)))


def test_offline_distillation_reuses_stored_teacher_outputs(tmp_path):
    from examples.digits.model import digits_student, trained_digits_cnn

    config = DistillConfig(epochs=1, offline=True)
    train = open_data(digits_paths()["train"], role="training")
    teacher = trained_digits_cnn()
    ctx = PassContext(work_dir=tmp_path / "a", cache_dir=tmp_path / "cache")
    distill(_artifact(digits_student()), config, teacher=_artifact(teacher), data=train, ctx=ctx)
    assert ctx.records[-1].metrics["teacher_calls"] > 0
    assert ctx.records[-1].metrics["teacher_outputs"].startswith("computed and stored")

    def forbidden(*args):
        raise AssertionError("the teacher ran although its outputs are stored")

    teacher.forward = forbidden  # same weights, so the same stored outputs; any call now fails
    ctx = PassContext(work_dir=tmp_path / "b", cache_dir=tmp_path / "cache")
    distill(_artifact(digits_student()), config, teacher=_artifact(teacher), data=train, ctx=ctx)
    assert ctx.records[-1].metrics["teacher_calls"] == 0
    assert ctx.records[-1].metrics["teacher_outputs"].startswith("loaded from")


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    from edgeport.passes.context import NullProgress
    from examples.digits.model import digits_student

    class InterruptAfterTwoEpochs(NullProgress):
        def __init__(self):
            self.epochs = 0

        def advance(self, count=1):
            self.epochs += count
            if self.epochs == 2:
                raise KeyboardInterrupt

    config = DistillConfig(epochs=4, patience=0)
    _, full = _distill(tmp_path / "full", digits_student(), config)
    with pytest.raises(KeyboardInterrupt):
        _distill(tmp_path / "cut", digits_student(), config, progress=InterruptAfterTwoEpochs())
    _, resumed = _distill(tmp_path / "cut", digits_student(), DistillConfig(epochs=4, patience=0, resume=True))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    for a, b in zip(full["history"], resumed["history"]):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)


class _AudioNet(torch.nn.Module):
    """Raw samples through a strided conv frontend: the forward needs at least 400 samples."""

    def __init__(self):
        super().__init__()
        self.frontend = torch.nn.Conv1d(1, 32, kernel_size=400, stride=160)
        self.body = torch.nn.Conv1d(32, 32, 3)
        self.head = torch.nn.Linear(32, 4)

    def forward(self, samples):
        return self.head(self.body(self.frontend(samples.unsqueeze(1))).mean(-1))


def test_pruning_and_mac_counting_use_sizes_the_model_accepts(tmp_path):
    ctx = PassContext(work_dir=tmp_path)
    specs = (parse_input_spec("samples:batchxsamples"),)
    pruned = channel_prune(_artifact(_AudioNet(), specs), ChannelPruneConfig(ratio=0.5), ctx=ctx).module
    assert pruned.frontend.out_channels == 16
    assert 0 < ctx.records[-1].metrics["macs_ratio"] < 0.6


def test_channel_pruning_keeps_every_head_of_a_multi_head_model(tmp_path):
    from tests.exporter.bad_models import TwoHeads

    ctx = PassContext(work_dir=tmp_path)
    pruned = channel_prune(_artifact(TwoHeads().eval(), (parse_input_spec("x:batchx16"),)), ChannelPruneConfig(ratio=0.5), ctx=ctx).module
    assert pruned.classes.out_features == 5 and pruned.boxes.out_features == 4  # only the last one run was kept before
    assert pruned.trunk.out_features < 64
    from edgeport.passes.prune import _output_layers

    frozen = TwoHeads().eval().requires_grad_(False)  # no grad: no autograd graph unless the walk makes one
    assert set(_output_layers(frozen, (torch.zeros(1, 16),))) == {frozen.classes, frozen.boxes}
    assert not any(p.requires_grad for p in frozen.parameters())


def test_a_width_fixed_by_the_models_code_is_named_with_the_ignore_that_avoids_it(tmp_path):
    from tests.exporter.bad_models import FixedWidthReshape

    torch.manual_seed(0)
    artifact = _artifact(FixedWidthReshape().eval(), (parse_input_spec("x:batchx1x32"),))
    with pytest.raises(UsageError) as caught:
        channel_prune(artifact, ChannelPruneConfig(ratio=0.5), ctx=PassContext(work_dir=tmp_path / "a"))
    assert "'conv2'" in str(caught.value) and "--ignore conv2" in str(caught.value)
    pruned = channel_prune(artifact, ChannelPruneConfig(ratio=0.5, ignore=("conv2",)), ctx=PassContext(work_dir=tmp_path / "b")).module
    assert pruned.conv1.out_channels < 16 and pruned.conv2.out_channels == 32
