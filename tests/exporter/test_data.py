import numpy as np
import pytest

from edgeport.data import open_data
from edgeport.errors import DataError
from edgeport.specs import TensorSpec

IMAGE = (TensorSpec("image", ("batch", 1, 8, 8)),)


def test_npz_samples_are_batched_and_labels_follow(tmp_path):
    path = tmp_path / "d.npz"
    images = np.arange(10 * 64, dtype=np.float64).reshape(10, 1, 8, 8)
    np.savez_compressed(path, image=images, labels=np.arange(10))
    batches = list(open_data(path, role="calibration").batches(IMAGE, batch_size=4))
    assert [b.size for b in batches] == [4, 4, 2]
    assert batches[0].inputs["image"].dtype == np.float32  # cast to the model's dtype
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), np.arange(10))
    np.testing.assert_array_equal(np.concatenate([b.inputs["image"] for b in batches]), images.astype(np.float32))


def test_npz_is_streamed_in_row_blocks(tmp_path):
    # 1000 samples are read 64 rows at a time: the reader never holds the whole array.
    from edgeport import data as data_module

    path = tmp_path / "big.npz"
    np.savez(path, image=np.ones((1000, 1, 8, 8), np.float32))
    items = open_data(path, role="calibration").items()  # keep the generator: it owns the open archive
    blocks = list(data_module.array_rows(next(items).arrays["image"]))
    assert max(len(b) for b in blocks) == data_module._ROWS_PER_READ
    assert sum(len(b) for b in blocks) == 1000


def test_ready_made_batches_pass_unchanged(tmp_path):
    path = tmp_path / "b.npz"
    np.savez(path, image=np.zeros((3, 5, 1, 8, 8), np.float32))  # 3 batches of 5
    assert [b.size for b in open_data(path, role="calibration").batches(IMAGE, batch_size=2)] == [5, 5, 5]


def test_fixed_batch_dim_wins_over_requested_batch_size(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, image=np.zeros((5, 1, 8, 8), np.float32))
    fixed = (TensorSpec("image", (1, 1, 8, 8)),)
    assert [b.size for b in open_data(path, role="calibration").batches(fixed, batch_size=4)] == [1] * 5


def test_folder_of_samples_and_max_samples(tmp_path):
    for i in range(6):
        np.save(tmp_path / f"{i:03d}.npy", np.full((1, 8, 8), i, np.float32))
    batches = list(open_data(tmp_path, role="calibration").batches(IMAGE, batch_size=4, max_samples=5))
    assert sum(b.size for b in batches) == 5
    assert batches[0].inputs["image"][1, 0, 0, 0] == 1.0  # sorted file order


def test_varying_lengths_never_share_a_batch(tmp_path):
    specs = (TensorSpec("ids", ("batch", "sequence"), "int64"),)
    for i, length in enumerate([5, 5, 7, 7, 7]):
        np.save(tmp_path / f"{i}.npy", np.ones(length, np.int64))
    shapes = [b.inputs["ids"].shape for b in open_data(tmp_path, role="calibration").batches(specs, batch_size=8)]
    assert shapes == [(2, 5), (3, 7)]


def test_factory_source():
    source = open_data("tests.exporter.data_factories:two_input_samples", role="calibration")
    specs = (TensorSpec("a", ("batch", 3)), TensorSpec("b", ("batch",), "int64"))
    batches = list(source.batches(specs, batch_size=2))
    assert [b.size for b in batches] == [2, 2, 1]
    assert batches[0].inputs["b"].dtype == np.int64


def test_random_source_is_flagged():
    with pytest.warns(UserWarning, match="not represent"):
        source = open_data("random:5", role="calibration")
    assert source.warning and sum(b.size for b in source.batches(IMAGE, 2)) == 5


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"pixels": np.zeros((4, 1, 8, 8), np.float32), "other": np.zeros(4)}, "no array for input 'image'"),
        ({"image": np.zeros((4, 3, 8, 8), np.float32)}, "batches of shape (4, 3, 8, 8)"),
        ({"image": np.zeros((4, 8), np.float32)}, "has shape (4, 8)"),
        ({"image": np.zeros((4, 1, 8, 8), np.float32), "extra": np.zeros((4, 2))}, "'extra' that is not a model input"),
        ({"image": np.zeros((4, 1, 8, 8), np.float32), "labels": np.zeros(3)}, "fewer labels than samples"),
    ],
)
def test_mismatched_data_names_the_problem(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        list(open_data(path, role="calibration").batches(IMAGE, batch_size=4))
    assert "\n" not in str(info.value) and "Fix:" in str(info.value)


def test_float_data_for_int_input_is_rejected(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, ids=np.zeros((2, 4), np.float32))
    with pytest.raises(DataError, match="is float32 but the model takes int64"):
        list(open_data(path, role="evaluation").batches((TensorSpec("ids", ("batch", 4), "int64"),)))


@pytest.mark.parametrize("text", ["missing.npz", "not-a-thing", "nomodule_xyz.sub:attr"])
def test_unresolvable_data_argument(text):
    with pytest.raises(DataError):
        open_data(text, role="calibration")


def test_corrupt_npz(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="not a readable .npz"):
        open_data(path, role="calibration")


def test_a_one_shot_generator_is_refused_when_a_second_pass_reads_it(tmp_path):
    """Export reads calibration data more than once; a module-level generator used to give the
    later passes nothing, silently."""
    from click.testing import CliRunner

    from edgeport.cli import cli

    result = CliRunner().invoke(cli, ["export", "examples.digits.model:trained_digits_cnn", "--input", "image:batchx1x8x8",
                                      "--calib", "tests.exporter.data_factories:one_shot_generator", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "used up" in lines[0] and "function that returns a new generator" in lines[0]
