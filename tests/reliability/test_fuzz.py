"""Property-based fuzzing of everything a user hands the tool: input-spec strings, profile TOML
(mutations of the built-ins), .npz data, and ONNX bytes. Whatever the input, the result is a value
or a UsageError (one line, exit 2): never another exception, which the CLI would report as an
internal error. Bounded and derandomized, so `make test` runs the same cases in a few seconds."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeport.data import open_data
from edgeport.device_profiles import load_profile
from edgeport.errors import UsageError
from edgeport.model_loading import load_model
from edgeport.specs import parse_input_spec
from tests.conftest import make_linear_onnx

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
BUILTINS = sorted((Path(__file__).resolve().parents[2] / "device_profiles" / "builtin").glob("*.toml"))


def _value_or_usage_error(call):
    try:
        return call()
    except UsageError as exc:
        assert exc.exit_code == 2 and "\n" not in str(exc).strip(), str(exc)
        return None


_dims = st.one_of(st.integers(-3, 10_000_000_000).map(str), st.sampled_from(["batch", "", "x", "-1", "0", "1e3", "nan", "None", "?"]),
                  st.text(max_size=6))
_spec_text = st.one_of(
    st.text(max_size=40),
    st.builds(lambda name, dims, dtype: f"{name}:{'x'.join(dims)}{dtype}",
              st.text(max_size=8), st.lists(_dims, max_size=6),
              st.sampled_from(["", ":float32", ":int64", ":bool", ":float99", ":", "::", ":float16:extra"])),
)


@FUZZ
@given(_spec_text)
def test_input_spec_strings(text):
    spec = _value_or_usage_error(lambda: parse_input_spec(text))
    if spec is not None:
        assert spec.name and all(isinstance(d, str) or d > 0 for d in spec.shape)


@st.composite
def _mutated_profile(draw):
    lines = draw(st.sampled_from(BUILTINS)).read_text().splitlines()
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, max(len(lines) - 1, 0)))
        action = draw(st.sampled_from(["drop", "value", "duplicate", "truncate", "garbage"]))
        if not lines:
            break
        if action == "drop":
            lines.pop(index)
        elif action == "value" and "=" in lines[index]:
            key = lines[index].split("=", 1)[0]
            replacement = draw(st.sampled_from(['-1', '0', '1e309', '"text"', 'true', '[]', '[1, "a"]', '{}', 'nan', 'inf', '""']))
            lines[index] = f"{key}= {replacement}"
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "truncate":
            lines[index] = lines[index][: draw(st.integers(0, len(lines[index])))]
        else:
            lines.insert(index, draw(st.text(max_size=20)))
    return "\n".join(lines)


@FUZZ
@given(_mutated_profile())
def test_profile_toml_mutations(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("profile") / "p.toml"
    try:
        path.write_text(text)
    except UnicodeEncodeError:
        return  # not writable as UTF-8 text: no user can hand us this file either
    _value_or_usage_error(lambda: load_profile(path))


_dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.int8, np.uint8, np.bool_, np.complex64, "U3"])


@st.composite
def _arrays(draw):
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    dtype = draw(_dtypes)
    values = np.zeros(shape, dtype=dtype)
    if values.dtype.kind == "f" and values.size:
        flat = values.reshape(-1)
        for i in range(flat.size):
            flat[i] = draw(st.sampled_from([0.0, 1.0, -2.5, np.nan, np.inf, -np.inf, 1e30]))
    return values


@FUZZ
@given(st.dictionaries(st.sampled_from(["x", "y", "labels", "arr_0"]), _arrays(), max_size=3))
def test_npz_data(tmp_path_factory, arrays):
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, **arrays)
    spec = parse_input_spec("x:batchx4:float32")

    def read_all():
        source = open_data(path, role="calibration")
        return [b.inputs["x"].shape for b in source.batches((spec,), batch_size=3)]

    for shape in _value_or_usage_error(read_all) or []:
        assert shape[1:] == (4,)


@FUZZ
@given(st.data())
def test_onnx_bytes(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("onnx")
    valid = make_linear_onnx(folder / "valid.onnx").read_bytes()
    content = data.draw(st.one_of(
        st.binary(max_size=200),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),  # cut short
        st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(lambda p: valid[:p[0]] + bytes([p[1]]) + valid[p[0] + 1:]),  # one byte flipped
    ))
    path = folder / "model.onnx"
    path.write_bytes(content)
    _value_or_usage_error(lambda: load_model(str(path)))


def test_an_npz_that_is_a_zip_of_something_else(tmp_path):
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY garbage")
    with pytest.raises(UsageError):
        list(open_data(path, role="calibration").batches((parse_input_spec("x:batchx4:float32"),)))
