"""--stateful: a streaming model's next state fed back from run to run, as it runs on the device."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

import edgeport
from edgeport.cli import cli
from edgeport.errors import UsageError
from edgeport.runtimes.session import create_session
from edgeport.runtimes.state_carry import StateCarry, carried_outputs
from tests.onnx_corpus import write_streaming_vad


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    return write_streaming_vad(tmp_path_factory.mktemp("vad"), feeds=12)


def _drifting_copy(model_path, out_path):
    """The same model, except that the state it returns is scaled by 1.5. Given the state its data
    holds, each run's probability is unchanged; only a carried state can show the difference."""
    model = onnx.load(str(model_path))
    concat = next(n for n in model.graph.node if n.name == "next_state")
    concat.output[0] = "state_raw"
    model.graph.initializer.append(numpy_helper.from_array(np.array(1.5, np.float32), "drift"))
    model.graph.node.append(helper.make_node("Mul", ["state_raw", "drift"], ["stateN"], name="drift"))
    onnx.save(model, str(out_path))
    return out_path


def _feeds(folder):
    return [dict(np.load(path)) for path in sorted(folder.glob("*.npz"))]


def test_the_carried_state_is_the_previous_runs_output(vad):
    model, data = vad
    session = create_session(model)
    feeds = _feeds(data)
    zeroed = [{**feed, "state": np.zeros_like(feed["state"])} for feed in feeds]  # the data gives no real state
    carried = carried_outputs(session, zeroed, StateCarry.parse(["state:stateN"]))
    # carrying from zeros rebuilds the stream the data was recorded from
    for run, feed in zip(carried, feeds):
        expected = session.run(None, feed)
        np.testing.assert_allclose(run[0], expected[0], rtol=1e-6)
    uncarried = carried_outputs(session, zeroed, None)
    assert not np.allclose(uncarried[5][0], carried[5][0])


def test_validate_carries_state_and_sees_drift_that_feed_by_feed_parity_hides(vad, tmp_path):
    model, data = vad
    candidate = _drifting_copy(model, tmp_path / "drift.onnx")
    plain = edgeport.validate(candidate, profile="ci-x86-avx2", reference=model, data=data, runs=3).verdicts[0].details["parity"]
    assert plain["outputs"]["output"]["cosine_min"] == 1.0  # each run given the recorded state: no difference
    carried = edgeport.validate(candidate, profile="ci-x86-avx2", reference=model, data=data, runs=3,
                                stateful=["state:stateN"]).verdicts[0].details["parity"]
    assert carried["outputs"]["output"]["max_abs_diff"] > 1e-3  # the drifting state reaches the probability
    assert carried["outputs"]["output"]["cosine_min"] < 0.999 and "across samples" in carried["outputs"]["output"]["cosine_basis"]
    assert carried["samples"] == 12
    assert "state carried (output stateN -> input state)" in carried["data"]


def test_stateful_names_are_checked_against_the_model(vad, tmp_path):
    model, data = vad
    result = CliRunner().invoke(cli, ["validate", str(model), "--profile", "ci-x86-avx2", "--reference", str(model), "--data", str(data),
                                      "--runs", "2", "--stateful", "state:next"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no output 'next'" in lines[0] and "stateN" in lines[0]
    with pytest.raises(UsageError, match="is not INPUT:OUTPUT"):
        StateCarry.parse(["state"])
    with pytest.raises(UsageError, match="twice"):
        StateCarry.parse(["state:stateN", "state:other"])


def test_export_judges_int8_on_a_carried_stream(vad, tmp_path):
    model, data = vad
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", str(model), "--calib", str(data), "--stateful", "state:stateN", "-o", str(out), "--quiet"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["state_carried"] == {"state": "stateN"}
    search = next(s for s in report["steps"] if s["name"] == "quantize_search")
    assert "state carried from feed to feed" in search["metrics"]["fidelity"]["data"]
    assert any("held apart as one stream" in note for note in search["notes"])
    assert json.loads((out / "manifest.json").read_text())["recipe"]["data"]["stateful"] == ["state:stateN"]


def test_stateful_without_anything_to_carry_through_is_refused(vad, tmp_path):
    model, data = vad
    result = CliRunner().invoke(cli, ["validate", str(model), "--profile", "ci-x86-avx2", "--data", str(data), "--runs", "2",
                                      "--stateful", "state:stateN"])
    assert result.exit_code == 2 and "needs a --reference model and --data" in result.stderr
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(data.glob("*.npz"))[:5]:
        (few / path.name).write_bytes(path.read_bytes())
    result = CliRunner().invoke(cli, ["export", str(model), "--calib", str(few), "--stateful", "state:stateN", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "too few to hold a carried stream apart" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_carried_ranking_subset_is_a_stream_of_its_own(vad):
    """The worst feeds of a carried stream are taken as the consecutive run that ends at the worst
    one, and the fp32 reference is run again on that run from its own first state."""
    from edgeport.passes.int8_eval import EvalSplit, add_reference, session_for

    model, data = vad
    carry = StateCarry.parse(["state:stateN"])
    feeds = [{**feed, "state": np.zeros_like(feed["state"])} for feed in _feeds(data)]
    split = EvalSplit(feeds, [None] * len(feeds), carry=carry)
    add_reference(split, session_for(str(model)))
    part = split.subset([9, 2, 5])
    assert [id(f) for f in part.feeds] == [id(f) for f in feeds[7:10]]
    expected = carried_outputs(session_for(str(model)), feeds[7:10], carry)
    for got, want in zip(part.reference, expected):
        np.testing.assert_allclose(got[1], want[1])
    assert not np.allclose(part.reference[0][1], split.reference[7][1])  # not the whole stream's state at feed 7


def test_a_carried_state_of_another_dtype_is_named(vad):
    model, data = vad
    session = create_session(model)
    carry = StateCarry.parse(["state:stateN"])
    first, second = _feeds(data)[:2]
    second = {**second, "state": second["state"].astype(np.float64)}  # the data's own state, in another dtype
    from edgeport.errors import DataError

    with pytest.raises(DataError, match=r"returned a state of float32\[2, 1, 16\], but input 'state' is given as float64"):
        carried_outputs(session, [first, second], carry)
