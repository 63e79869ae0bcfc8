"""GPTQ weight rounding: it keeps ORT's int8 levels exactly, lowers the layers' output error
against rounding to nearest on correlated inputs (dense, grouped, strided and padded convs, and a
MatMul), and the int8 search tries it and reports it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeport.passes.bias_correction import _quantized_weights
from edgeport.passes.int8_eval import session_for
from edgeport.passes.weight_rounding import round_weights
from tests.passes.test_quantize_search import _export


def _correlated_images(count: int, seed: int) -> np.ndarray:
    """12x10 images whose 8 channels mix 2 smooth latent maps: inputs a layer sees as strongly
    correlated, where rounding each weight to nearest lets the errors of neighbouring weights add up."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((count, 2, 12, 10)).cumsum(axis=2).cumsum(axis=3) / 6.0
    mix = np.random.default_rng(99).standard_normal((8, 2))
    return (np.einsum("cl,nlhw->nchw", mix, latent) + 0.05 * rng.standard_normal((count, 8, 12, 10))).astype(np.float32)


def _correlated_signals(count: int, seed: int) -> np.ndarray:
    """1-D signals of length 40, 8 channels mixing 2 smooth latent signals."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((count, 2, 40)).cumsum(axis=2) / 4.0
    mix = np.random.default_rng(98).standard_normal((8, 2))
    return (np.einsum("cl,nlt->nct", mix, latent) + 0.05 * rng.standard_normal((count, 8, 40))).astype(np.float32)


def _conv_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(8, 16, (3, 5), padding=(1, 2)), nn.ReLU(),  # dense, a kernel and padding that differ by axis
        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=4), nn.ReLU(),  # grouped, strided
        nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16), nn.ReLU(),  # depthwise, dilated
        nn.Conv2d(16, 8, 1),
    ).eval()


def _correlated_rgb(count: int, seed: int) -> np.ndarray:
    """3-channel images, so the first conv's K (3 x 3 x 3 = 27) is odd: its last input pairs with MLAS's padding."""
    return _correlated_images(count, seed)[:, :3]


def _rgb_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()


def _conv1d_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(8, 16, 5, padding=2), nn.ReLU(), nn.Conv1d(16, 16, 3, stride=2, padding=1, groups=4), nn.ReLU(),
                         nn.Conv1d(16, 8, 1)).eval()


CONV_CASES = {  # net, input spec, data, number of Convs
    "2d": (_conv_net, "image:batchx8x12x10", _correlated_images, 4),
    "1d": (_conv1d_net, "image:batchx8x40", _correlated_signals, 3),
    "rgb": (_rgb_net, "image:batchx3x12x10", _correlated_rgb, 2),
}


def _matmul_net():
    import torch
    from torch import nn

    class TokenMixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Parameter(torch.randn(24, 16) / 5)

        def forward(self, tokens):
            return torch.relu(tokens @ self.proj)

    torch.manual_seed(0)
    return TokenMixer().eval()


def _gemm_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 16), nn.ReLU()).eval()  # a Gemm with transB: the weight is (N, K)


def _qdq(path, feeds, out, per_channel=True, pair_bounded=False):
    """ORT's QDQ model of ``path``; ``pair_bounded``: as edgeport makes it under reduce_range."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    from edgeport.passes.pair_bounded_weights import bound_weight_pairs

    class Reader:
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=pair_bounded)
    quantized = onnx.load(str(out))
    if pair_bounded:
        assert bound_weight_pairs(quantized, onnx.load(str(path)))
        onnx.save(quantized, str(out))
    return quantized


def _layer_errors(source, weights_by_name, feeds):
    """Mean squared error of every weighted node's output, source with ``weights_by_name`` vs
    source as it is, on ``feeds`` (every node's input stays float, so each layer is judged alone)."""
    from edgeport.passes.int8_eval import run_exposing

    layers = [n for n in source.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    changed = onnx.ModelProto()
    changed.CopyFrom(source)
    for tensor in changed.graph.initializer:
        if tensor.name in weights_by_name:
            tensor.CopyFrom(numpy_helper.from_array(weights_by_name[tensor.name].astype(np.float32), tensor.name))
    errors = {}
    for layer in layers:
        # one layer changed at a time, so its error is not mixed with its neighbours'
        alone = onnx.ModelProto()
        alone.CopyFrom(source)
        for tensor in alone.graph.initializer:
            if tensor.name == layer.input[1]:
                tensor.CopyFrom(next(t for t in changed.graph.initializer if t.name == layer.input[1]))
        reference = run_exposing(source, [layer.output[0]], feeds)[layer.output[0]]
        moved = run_exposing(alone, [layer.output[0]], feeds)[layer.output[0]]
        errors[layer.name] = float(np.mean([np.mean((a - b) ** 2) for a, b in zip(reference, moved)]))
    return errors


@pytest.mark.parametrize("case", sorted(CONV_CASES))
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("pair_bounded", [False, True], ids=["8-bit", "pair-bounded"])
def test_gptq_keeps_ort_levels_and_lowers_every_conv_output_error(tmp_path, per_channel, case, pair_bounded):
    from edgeport.passes.pair_bounded_weights import reduction_order, weight_rows

    net, spec, data, convs = CONV_CASES[case]
    artifact = _export(net(), tmp_path, [spec])
    feeds = [{"image": data(1, i)} for i in range(32)]
    source = onnx.load(str(artifact.path))
    qdq = _qdq(artifact.path, feeds, tmp_path / "qdq.onnx", per_channel, pair_bounded)
    rounding = round_weights(source, qdq, feeds, pair_bounded=pair_bounded)
    assert len(rounding.layers) == convs  # dense, grouped, depthwise and 1x1: every Conv

    # ORT quantizing the rounded weights again lands on exactly those values: same scales, same levels
    onnx.save(rounding.model, str(tmp_path / "rounded.onnx"))
    requantized = _qdq(tmp_path / "rounded.onnx", feeds, tmp_path / "again.onnx", per_channel, pair_bounded)
    again = _quantized_weights(requantized)
    if pair_bounded:  # GPTQ's own levels keep every pair MLAS adds in 16 bits within the bound, one pair on it
        scales = {t.name.removesuffix("_scale"): numpy_helper.to_array(t) for t in qdq.graph.initializer if t.name.endswith("_scale")}
        gptq = {t.name: numpy_helper.to_array(t) for t in rounding.model.graph.initializer}
        for node in (n for n in source.graph.node if n.op_type == "Conv" and reduction_order(n, gptq[n.input[1]]) is not None):
            weight = gptq[node.input[1]]
            step = scales[node.input[1]].reshape(-1, *[1] * (weight.ndim - 1)) if per_channel else scales[node.input[1]]
            order = reduction_order(node, weight)
            rows = np.abs(np.round(weight_rows(node, weight / step)[0][:, order]))
            rows = np.concatenate([rows, np.zeros((rows.shape[0], rows.shape[1] % 2))], axis=1)  # the packing's padding
            pair_sums = rows[:, 0::2] + rows[:, 1::2]
            assert pair_sums.max() <= 127, node.name
            assert (pair_sums.max(axis=1) == 127).all() if per_channel else pair_sums.max() == 127, node.name
    rounded = {t.name: numpy_helper.to_array(t) for t in rounding.model.graph.initializer}
    nearest = _quantized_weights(qdq)
    weights = [n.input[1] for n in source.graph.node if n.op_type == "Conv"]
    for name in weights:
        np.testing.assert_allclose(again[name], rounded[name], rtol=0, atol=1e-6)
        assert not np.allclose(rounded[name], nearest[name])  # GPTQ moved some weights off the nearest level

    # judged on other samples than those it rounded on
    held_out = [{"image": data(1, 100 + i)} for i in range(8)]
    gptq = _layer_errors(source, {n: rounded[n] for n in weights}, held_out)
    to_nearest = _layer_errors(source, {n: nearest[n] for n in weights}, held_out)
    for layer, error in gptq.items():  # none worse (a dilated depthwise conv on a 6x5 map has little to gain)
        assert error < 1.02 * to_nearest[layer], (layer, error, to_nearest[layer])
    assert sum(gptq.values()) < 0.8 * sum(to_nearest.values())


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_the_columns_gptq_weighs_are_what_each_conv_multiplies(tmp_path, case):
    """im2col (groups, strides, dilation, padding that differs by axis, 1-D) times the weight's rows
    reproduces ONNX Runtime's Conv output: the second moments are those of the real inputs."""
    from edgeport.passes.int8_eval import run_exposing
    from edgeport.passes.weight_rounding import _columns, _rows_view

    net, spec, data, _ = CONV_CASES[case]
    artifact = _export(net(), tmp_path, [spec])
    model = onnx.load(str(artifact.path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    feed = {"image": data(2, 0)}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    values = {**{"image": [feed["image"]]}, **run_exposing(model, sorted({c.output[0] for c in convs} | {c.input[0] for c in convs}), [feed])}
    for conv in convs:
        x, y = values[conv.input[0]][0], values[conv.output[0]][0]
        rows, _ = _rows_view(conv, weights[conv.input[1]])
        columns = _columns(conv, x, weights[conv.input[1]])
        product = np.concatenate([rows[g] @ columns[g] for g in range(len(rows))])  # (outputs, N * positions)
        expected = y - weights[conv.input[2]].reshape([1, -1] + [1] * (y.ndim - 2))
        expected = expected.reshape(y.shape[0], y.shape[1], -1).transpose(1, 0, 2).reshape(y.shape[1], -1)
        np.testing.assert_allclose(product, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def _tokens(count: int, seed: int, length: int | None = 10) -> np.ndarray:
    """Tokens whose 24 features come from 3 factors: strongly correlated (no length: one row each)."""
    basis = np.random.default_rng(0).standard_normal((3, 24))
    r = np.random.default_rng(seed)
    shape = (count, length) if length else (count,)
    return (r.standard_normal((*shape, 3)) @ basis + 0.05 * r.standard_normal((*shape, 24))).astype(np.float32)


@pytest.mark.parametrize("op_type", ["MatMul", "Gemm"])
def test_gptq_rounds_a_matmul_or_gemm_weight_along_its_output_columns(tmp_path, op_type):
    net, spec, length = (_matmul_net, "tokens:batchxseqx24", 10) if op_type == "MatMul" else (_gemm_net, "tokens:batchx24", None)
    artifact = _export(net(), tmp_path, [spec])
    feeds = [{"tokens": _tokens(1, i, length)} for i in range(32)]
    source = onnx.load(str(artifact.path))
    qdq = _qdq(artifact.path, feeds, tmp_path / "qdq.onnx")
    rounding = round_weights(source, qdq, feeds)
    weight = next(n.input[1] for n in source.graph.node if n.op_type == op_type)
    assert len(rounding.layers) == 1
    rounded = {t.name: numpy_helper.to_array(t) for t in rounding.model.graph.initializer}[weight]
    nearest = _quantized_weights(qdq)[weight]
    held_out = [{"tokens": _tokens(1, 100 + i, length)} for i in range(8)]
    (gptq,) = _layer_errors(source, {weight: rounded}, held_out).values()
    (to_nearest,) = _layer_errors(source, {weight: nearest}, held_out).values()
    assert gptq < 0.8 * to_nearest
    # ORT's int8 model of the rounded weights has exactly them: the scales ran along the outputs
    onnx.save(rounding.model, str(tmp_path / "rounded.onnx"))
    again = _qdq(tmp_path / "rounded.onnx", feeds, tmp_path / "again.onnx")
    np.testing.assert_allclose(_quantized_weights(again)[weight], rounded, rtol=0, atol=1e-6)
    session_for(again).run(None, held_out[0])


def test_the_int8_search_asked_for_gptq_keeps_it_where_it_scores_better(tmp_path):
    from tests.conftest import npz_file
    from tests.passes.test_quantize_search import _search

    from edgeport.passes import StaticInt8Config
    from edgeport.passes.fidelity import FidelityTarget
    from edgeport.passes.quantize_search import AccuracyAwareInt8Config

    artifact = _export(_matmul_net(), tmp_path, ["tokens:batchxseqx24"])
    calib = npz_file(tmp_path, "calib.npz", tokens=_tokens(32, 1))
    evaluation = npz_file(tmp_path, "eval.npz", tokens=_tokens(32, 2))
    # pair-bounded weights (reduce_range, as on x86 without VNNI) make weight rounding the larger error; a target all-int8
    # misses, so the refinements are tried; no fallback, to judge them alone
    config = AccuracyAwareInt8Config(quant=StaticInt8Config(reduce_range=True), target=FidelityTarget(min_sqnr_db=60.0), max_fallback=0.0,
                                     search_budget_s=60, calibration_methods=("minmax",), equalization=False, weight_rounding=True)
    result, metrics = _search(artifact, tmp_path, config, calib, evaluation)
    rounding = metrics["improvements"]["weight_rounding"]
    assert rounding["layers"] == 1 and rounding["kept"]
    assert rounding["after"]["values"]["sqnr_db"] > rounding["before"]["values"]["sqnr_db"] + 1.0
    # the artifact carries GPTQ's weights: its int8 levels are those the search scored
    written = _quantized_weights(onnx.load(str(result.path)))
    source = onnx.load(str(artifact.path))
    nearest = {t.name: numpy_helper.to_array(t) for t in source.graph.initializer}
    weight = next(n.input[1] for n in source.graph.node if n.op_type == "MatMul")
    level = np.abs(nearest[weight]).max(axis=0) / 64  # 7-bit levels per output column: at least twice the bounded ones
    # some weights sit more than half a level from their float value: not rounded to nearest
    assert np.any(np.abs(written[weight] - nearest[weight]) > 0.51 * level)
