"""Weight sharing: k-means from a linear start, K values per layer; the packed fp32 file computes
exactly what the shared model computes, really shrinks, and ORT folds it back; export and the
prune command run it; digits keeps its accuracy at 16 clusters."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgeport.artifacts import OnnxArtifact
from edgeport.errors import UsageError
from edgeport.passes import PassContext
from edgeport.passes.int8_eval import session_for
from edgeport.passes.weight_sharing import PackSharedWeightsConfig, WeightShareConfig, kmeans_1d, pack_shared_weights

DIGITS = "examples.digits.model:trained_digits_cnn"


def test_kmeans_starts_linear_keeps_the_extremes_and_beats_its_start():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 0.05, 5000), [0.9, -0.8]]).astype(np.float32)  # two rare large weights
    centroids, assignment = kmeans_1d(values, 16, 30)
    assert len(centroids) == 16 and np.all(np.diff(centroids) > 0)
    rounded = centroids[assignment]
    assert abs(rounded[-2] - 0.9) < 0.05 and abs(rounded[-1] + 0.8) < 0.05  # linear init keeps a cluster for each outlier
    start = np.linspace(values.min(), values.max(), 16)
    start_error = np.square(values - start[np.abs(values[:, None] - start[None]).argmin(1)]).mean()
    assert np.square(values - rounded).mean() < 0.5 * start_error


def test_clusters_out_of_range_are_refused():
    with pytest.raises(UsageError, match="clusters"):
        WeightShareConfig(clusters=1)
    with pytest.raises(UsageError, match="clusters"):
        WeightShareConfig(clusters=300)


def _shared_resnet_block(tmp_path):
    """A conv-BN-ReLU-conv-linear net whose weights are shared, exported and optimized (BN folded)."""
    import torch
    from torch import nn

    from edgeport.artifacts import TorchArtifact
    from edgeport.passes.export_onnx import OnnxExportConfig, export_onnx
    from edgeport.passes.optimize import GraphOptimizeConfig, optimize_graph
    from edgeport.passes.weight_sharing import share_weights
    from edgeport.specs import parse_input_specs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 40)).eval()
    with torch.no_grad():  # BatchNorm with real per-channel scales: folding makes each output channel's values differ
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
    ctx = PassContext(work_dir=tmp_path)
    artifact = TorchArtifact(model, tuple(parse_input_specs(["x:batchx3x16x16"])), "test")
    shared = share_weights(artifact, WeightShareConfig(clusters=16, min_weights=512), ctx=ctx)
    metrics = ctx.records[-1].metrics
    exported = optimize_graph(export_onnx(shared, OnnxExportConfig(), ctx=ctx), GraphOptimizeConfig(), ctx=ctx)
    return shared, exported, ctx, metrics


def test_each_shared_layer_holds_k_values_and_the_packed_file_computes_them_exactly(tmp_path):
    shared, exported, ctx, metrics = _shared_resnet_block(tmp_path)
    assert metrics["layers"] == 3 and metrics["index_bits"] == 4  # both convs and the linear layer (2560 weights)
    for layer in (shared.module[0], shared.module[3], shared.module[7]):
        assert len(np.unique(layer.weight.detach().numpy())) <= 16
    packed = pack_shared_weights(exported, PackSharedWeightsConfig(), ctx=ctx)
    pack = ctx.records[-1].metrics
    # the first conv (27 weights per channel) is shared but not packed: 16 codebook values per channel cost what 4-bit indices save
    assert pack["weights_packed"] == 2 and pack["index_bits"] == [4]
    assert packed.size_bytes < 0.4 * exported.size_bytes  # 4-bit indices for 32-bit floats, plus codebooks and the graph
    assert pack["zipped_bytes_after"] < pack["zipped_bytes_before"]
    assert pack["runtime_weight_bytes_after_folding"] >= 4 * (3 * 32 * 9 + 32 * 64 * 9 + 64 * 40)  # ORT holds float weights again
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    np.testing.assert_array_equal(session_for(str(packed.path)).run(None, x)[0], session_for(str(exported.path)).run(None, x)[0])
    from edgeport.runtimes.graph_cost import graph_cost
    from edgeport.specs import TensorSpec

    shapes = [TensorSpec("x", (1, 3, 16, 16), "float32")]
    costs = [graph_cost(str(p), shapes) for p in (packed.path, exported.path)]  # validation's estimate: the lookups fold at load
    assert [(c.total("macs"), c.total("weight_bytes"), len(c.nodes)) for c in costs] == [(costs[1].total("macs"), costs[1].total("weight_bytes"), len(costs[1].nodes))] * 2
    graph = onnx.load(str(packed.path)).graph
    assert {n.op_type for n in graph.node} >= {"GatherElements", "BitShift"}
    assert not any(t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 1024 for t in graph.initializer
                   if not t.name.endswith("/codebook"))


def test_an_unshared_model_is_left_as_it_is(tmp_path):
    import edgeport

    edgeport.export(DIGITS, quantize=False, out_dir=tmp_path / "fp32", inputs=["image:batchx1x8x8"])
    source = OnnxArtifact.from_file(tmp_path / "fp32" / "model.onnx")
    ctx = PassContext(work_dir=tmp_path / "pack")
    assert pack_shared_weights(source, PackSharedWeightsConfig(), ctx=ctx) is source  # export runs it on every fp32 model
    assert ctx.records[-1].metrics["weights_packed"] == 0 and not ctx.records[-1].notes


def _accuracy(path, images, labels) -> float:
    return float((session_for(str(path)).run(None, {"image": images})[0].argmax(1) == labels).mean())


def test_prune_share_then_export_ships_packed_fp32_within_half_a_point_on_digits(tmp_path):
    """The documented flow: prune writes model.pt2, export takes it and packs the fp32 file."""
    from edgeport.cli import cli

    result = CliRunner().invoke(cli, ["prune", DIGITS, "--method", "share", "--clusters", "16", "--input", "image:batchx1x8x8",
                                      "-o", str(tmp_path / "shared"), "--json"])
    assert result.exit_code == 0, result.output
    step = next(s for s in json.loads(result.output)["steps"] if s["name"] == "share_weights")
    assert step["metrics"]["layers"] >= 2
    runner = CliRunner()
    for source, out in ((DIGITS, "plain"), (str(tmp_path / "shared" / "model.pt2"), "export")):
        exported = runner.invoke(cli, ["export", source, "--input", "image:batchx1x8x8", "--precision", "fp32", "-o", str(tmp_path / out), "--json"])
        assert exported.exit_code == 0, exported.output
    with np.load("examples/digits/test.npz") as test:
        images, labels = test["image"], test["labels"]
    assert not (tmp_path / "plain" / "model.fp32.onnx").exists()  # nothing shared, nothing packed: one file
    model, reference = tmp_path / "export" / "model.onnx", tmp_path / "export" / "model.fp32.onnx"
    report = json.loads((tmp_path / "export" / "report.json").read_text())
    assert next(s for s in report["steps"] if s["name"] == "pack_shared_weights")["metrics"]["weights_packed"] >= 2
    assert model.stat().st_size < 0.5 * reference.stat().st_size
    assert abs(_accuracy(model, images, labels) - _accuracy(tmp_path / "plain" / "model.onnx", images, labels)) <= 0.005
    assert _accuracy(model, images, labels) == _accuracy(reference, images, labels)  # packing changes no number


def test_a_share_step_in_export_packs_and_int8_says_it_did_not(tmp_path):
    import edgeport
    from edgeport.passes.weight_sharing import WeightShareConfig as Share

    shipped = edgeport.export(DIGITS, inputs=["image:batchx1x8x8"], precision="fp32", torch_steps=[Share(clusters=16)], out_dir=tmp_path / "fp32")
    names = [s["name"] for s in shipped.report["steps"]]
    assert names.index("share_weights") < names.index("export") < names.index("pack_shared_weights")
    int8 = edgeport.export(DIGITS, inputs=["image:batchx1x8x8"], calib="examples/digits/calib.npz", search=False,
                           torch_steps=[Share(clusters=16)], out_dir=tmp_path / "int8")
    assert "pack_shared_weights" not in [s["name"] for s in int8.report["steps"]]
    assert any("pack_shared_weights not run" in w for w in int8.report["warnings"])


def test_a_transposed_conv_is_packed_along_its_output_channels(tmp_path):
    """ConvTranspose keeps output channels on axis 1: a per-output-channel scale (folded BatchNorm)
    leaves K values per channel there, and none of the input rows."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shared = rng.choice(rng.standard_normal(16).astype(np.float32), size=(32, 24, 3, 3))
    weight = shared * rng.uniform(0.5, 2.0, size=(1, 24, 1, 1)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(weight, "w")])
    path = tmp_path / "up.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    ctx = PassContext(work_dir=tmp_path / "pack")
    packed = pack_shared_weights(OnnxArtifact.from_file(path), PackSharedWeightsConfig(), ctx=ctx)
    assert ctx.records[-1].metrics["weights_packed"] == 1
    x = {"x": rng.standard_normal((1, 32, 5, 5)).astype(np.float32)}
    np.testing.assert_array_equal(session_for(str(packed.path)).run(None, x)[0], session_for(str(path)).run(None, x)[0])


def test_fine_tuning_trains_the_shared_values_and_keeps_them_shared(tmp_path):
    """At 4 clusters digits loses accuracy; distillation that trains only the shared values wins it
    back, where a plain recovery distillation would train the weights apart again."""
    import edgeport
    from edgeport.passes.distill import DistillConfig

    common = dict(method="share", method_options={"clusters": 4}, inputs=["image:batchx1x8x8"], eval_data="examples/digits/test.npz")
    plain = edgeport.prune(DIGITS, out_dir=tmp_path / "plain", **common)
    tuned = edgeport.prune(DIGITS, out_dir=tmp_path / "tuned", data="examples/digits/train.npz", recover=DistillConfig(epochs=5, batch_size=48), **common)
    before, after = (r.report["comparison"]["result"]["accuracy"] for r in (plain, tuned))
    assert after > before + 0.005, (before, after)
    shared = [p for n, p in tuned.model.named_parameters() if n.endswith("weight") and p.numel() >= 1024]
    assert shared and all(len(np.unique(p.detach().numpy())) <= 4 for p in shared)
    assert [s["name"] for s in tuned.report["steps"]].count("distill") == 1  # inside the share step, not after it
    distilled = next(s for s in tuned.report["steps"] if s["name"] == "distill")
    assert (distilled["config"]["epochs"], distilled["config"]["batch_size"]) == (5, 48)  # prune's recovery settings, not defaults


def test_fine_tuning_without_a_teacher_or_data_is_refused(tmp_path):
    from edgeport.artifacts import TorchArtifact
    from edgeport.passes.weight_sharing import share_weights
    from edgeport.specs import parse_input_specs
    from examples.digits.model import trained_digits_cnn

    artifact = TorchArtifact(trained_digits_cnn(), tuple(parse_input_specs(["image:batchx1x8x8"])), "test")
    with pytest.raises(UsageError, match="fine-tuning shared weights"):
        share_weights(artifact, WeightShareConfig(fine_tune_epochs=2), ctx=PassContext(work_dir=tmp_path))
