"""Every bad input we know of, with the exit code and the message fragment it must produce.

Each case builds its files under a folder and returns the command line. The rule for all of them:
exit 2 (bad usage or input), exactly one line on stderr that starts with "edgeport: error:" and
names the thing, and no traceback.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from tests.conftest import make_linear_onnx
from tests.onnx_corpus import point_external_data_at


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Path], list[str]]
    fragment: str  # the one-line message must contain this
    exit_code: int = 2
    one_line: bool = True  # profiles check names every wrong field, a line each


def _model(folder: Path) -> str:
    path = folder / "linear.onnx"
    if not path.exists():
        make_linear_onnx(path, 4, 3)
    return str(path)


def _npz(folder: Path, name: str = "calib.npz", **arrays) -> str:
    path = folder / name
    np.savez(path, **(arrays or {"x": np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)}))
    return str(path)


def _file(folder: Path, name: str, content: bytes) -> str:
    path = folder / name
    path.write_bytes(content)
    return str(path)


def _export(*extra: str, model: Callable[[Path], str] = _model, calib: bool = True) -> Callable[[Path], list[str]]:
    def argv(folder: Path) -> list[str]:
        args = ["export", model(folder), "-o", str(folder / "out"), "--quiet"]
        if calib:
            args += ["--calib", _npz(folder)]
        return args + [a.format(folder=folder) for a in extra]
    return argv


def _export_with_data(make: Callable[[Path], str], option: str = "--calib") -> Callable[[Path], list[str]]:
    calib = [] if option == "--calib" else ["--calib", "random:8"]
    return lambda folder: ["export", _model(folder), option, make(folder), *calib, "-o", str(folder / "out"), "--quiet"]


def _validate(*extra: str, model: Callable[[Path], str] = _model) -> Callable[[Path], list[str]]:
    return lambda folder: ["validate", model(folder), *[a.format(folder=folder) for a in extra], "--quiet"]


def _profile(folder: Path, text: str) -> str:
    path = folder / "profile.toml"
    base = (Path(__file__).resolve().parents[2] / "device_profiles" / "builtin" / "ci-x86-avx2.toml").read_text()
    path.write_text(text(base) if callable(text) else text)
    return str(path)


def _outside_data(folder: Path) -> str:
    path = Path(_model(folder))
    proto = onnx.load(str(path))
    onnx.save(proto, str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    point_external_data_at(path, "/etc/passwd")
    return str(path)


def _pickled(folder: Path) -> str:
    path = folder / "whole.pt"
    path.write_bytes(pickle.dumps({"not": "a module"}))
    return str(path)


def _folder(folder: Path, name: str) -> str:
    path = folder / name
    path.mkdir(exist_ok=True)
    return str(path)


def _foreign_report(folder: Path) -> str:
    (folder / "out").mkdir(exist_ok=True)
    (folder / "out" / "report.json").write_text("{}")
    return _model(folder)


def _existing_file(folder: Path) -> str:
    (folder / "out").write_text("not a folder")
    return _model(folder)


CASES: list[Case] = [
    # the model
    Case("missing onnx file", lambda f: ["export", str(f / "nope.onnx"), "--calib", _npz(f), "-o", str(f / "out")], "does not exist"),
    Case("corrupt onnx bytes", _export(model=lambda f: _file(f, "bad.onnx", b"\x0a\x03not onnx")), "not a readable ONNX model"),
    Case("empty onnx file", _export(model=lambda f: _file(f, "empty.onnx", b"")), "ONNX"),
    Case("truncated onnx file", _export(model=lambda f: _file(f, "cut.onnx", Path(_model(f)).read_bytes()[:60])), "ONNX"),
    Case("module that does not import", _export("--input", "x:batchx4", model=lambda f: "no_such_module_xyz:build"), "cannot be imported"),
    Case("attribute the module lacks", _export("--input", "x:batchx4", model=lambda f: "examples.models:no_such_model"), "has no attribute"),
    Case("pickled model without --trust-pickle", _export("--input", "x:batchx4", model=_pickled), "--trust-pickle"),
    Case("--weights with an onnx model", _export("--weights", "{folder}/w.pt"), "--weights does not apply"),
    Case("external data outside the model's folder", _export(model=_outside_data), "outside its own folder"),
    Case("--input name the onnx model lacks", _export("--input", "y:batchx4"), "is not an input"),
    # input specs
    Case("--input without a shape", _export("--input", "x", model=lambda f: "examples.digits.model:trained_digits_cnn"), "--input"),
    Case("--input dim that is not a number or name", _export("--input", "x:1x?x4", model=lambda f: "examples.digits.model:trained_digits_cnn"), "neither a number nor a name"),
    Case("--input dtype unknown", _export("--input", "x:1x4:float99", model=lambda f: "examples.digits.model:trained_digits_cnn"), "float99"),
    Case("torch model without --input", _export(model=lambda f: "examples.digits.model:trained_digits_cnn"), "--input"),
    # data
    Case("calibration file missing", _export_with_data(lambda f: str(f / "missing.npz")), "missing.npz"),
    Case("calibration npz of random bytes", _export_with_data(lambda f: _file(f, "bad.npz", b"PK\x03\x04 broken")), "not a readable .npz"),
    Case("calibration npz with no arrays", _export_with_data(lambda f: _empty_npz(f)), "holds no arrays"),
    Case("calibration keyed by another name", _export_with_data(lambda f: _npz(f, "k.npz", y=np.zeros((8, 4), np.float32))), "no array for input 'x'"),
    Case("calibration with an extra array", _export_with_data(lambda f: _npz(f, "e.npz", x=np.zeros((8, 4), np.float32), z=np.zeros(8))), "not a model input"),
    Case("calibration of the wrong rank", _export_with_data(lambda f: _npz(f, "r.npz", x=np.zeros((2, 2, 2, 4), np.float32))), "has shape"),
    Case("calibration of the wrong width", _export_with_data(lambda f: _npz(f, "w.npz", x=np.zeros((8, 5), np.float32))), "shape"),
    Case("calibration of strings", _export_with_data(lambda f: _npz(f, "s.npz", x=np.array([["a"] * 4] * 8))), "float32"),
    Case("calibration with object arrays", _export_with_data(lambda f: _object_npz(f)), "Python objects"),
    Case("empty calibration folder", _export_with_data(lambda f: _folder(f, "empty")), "has no .npy or .npz files"),
    Case("random:0", _export_with_data(lambda f: "random:0"), "random:N"),
    Case("random:abc", _export_with_data(lambda f: "random:abc"), "random:N"),
    Case("data factory module missing", _export_with_data(lambda f: "no_such_data_mod:make"), "cannot be imported"),
    Case("one-shot generator as data", lambda f: ["export", "examples.digits.model:trained_digits_cnn", "--input", "image:batchx1x8x8", "--calib",
                                                  "tests.exporter.data_factories:one_shot_generator", "-o", str(f / "out"), "--quiet"], "used up"),
    Case("one calibration sample for the search", _export_with_data(lambda f: _npz(f, "one.npz", x=np.zeros((1, 4), np.float32))), "at least 2"),
    Case("evaluation keyed by another name", _export_with_data(lambda f: _npz(f, "ev.npz", y=np.zeros((8, 4), np.float32)), "--eval"), "no array for input 'x'"),
    Case("calibration npz with an unknown zip compression", _export_with_data(lambda f: _npz_compression_99(f)), "compression method is not supported"),
    Case("calibration npz whose .npy header is damaged", _export_with_data(lambda f: _npz_bad_header(f)), "not a readable .npy"),
    Case("fewer labels than samples", _export_with_data(lambda f: _npz(f, "l.npz", x=np.zeros((8, 4), np.float32), labels=np.zeros(3, np.int64))), "labels"),
    # profiles
    Case("unknown profile name", _export("--profile", "no-such-device"), "no-such-device"),
    Case("profile TOML that does not parse", lambda f: ["export", _model(f), "--calib", _npz(f), "--profile", _profile(f, "[broken"), "-o", str(f / "out")], "profile"),
    Case("profile with an unknown field", lambda f: ["export", _model(f), "--calib", _npz(f), "-o", str(f / "out"),
                                                     "--profile", _profile(f, lambda base: base + "\n[extra]\nsurprise = 1\n")], "extra"),
    Case("profile with a negative budget", lambda f: ["export", _model(f), "--calib", _npz(f), "-o", str(f / "out"),
                                                      "--profile", _profile(f, lambda base: base.replace("latency_p95_ms = 50.0", "latency_p95_ms = -1.0"))], "latency_p95_ms"),
    Case("profile that is not UTF-8 text", lambda f: ["export", _model(f), "--calib", _npz(f), "-o", str(f / "out"),
                                                      "--profile", _file(f, "latin1.toml", "name = \"caf\xe9\"\n".encode("latin-1"))], "not UTF-8 text"),
    Case("profiles check on a broken file", lambda f: ["profiles", "check", _profile(f, "[hardware]\narch = 5\n")], "hardware.arch: must be str",
         one_line=False),
    # options
    Case("--search-budget that is neither", _export("--search-budget", "soon"), "not seconds or trials"),
    Case("--max-fallback above 1", _export("--max-fallback", "2"), "--max-fallback: must be within [0, 1]"),
    Case("--min-cosine with --no-search", _export("--min-cosine", "0.99", "--no-search"), "--no-search"),
    Case("--exclude-nodes naming no node", _export("--exclude-nodes", "matmull", "--no-search"), "'matmull' to exclude is not in the model"),
    Case("--metric module missing", _export("--metric", "no_such_metric_mod:fn", "--metric-min", "0"), "cannot be imported"),
    Case("int8 without calibration data", _export(calib=False), "needs calibration data"),
    Case("-o is an existing file", _export(model=_existing_file), "is an existing file"),
    Case("-o holds a file this command did not write", _export(model=_foreign_report), "--force"),
    Case("validate a missing model", _validate("--profile", "ci-x86-avx2", model=lambda f: str(f / "none.onnx")), "does not exist"),
    Case("validate with --runs 0", _validate("--profile", "ci-x86-avx2", "--runs", "0"), "below 1"),
    Case("validate with a bad --dim", _validate("--profile", "ci-x86-avx2", "--dim", "batch:3"), "NAME=N"),
    Case("validate against a reference of other inputs", lambda f: ["validate", _model(f), "--profile", "ci-x86-avx2", "--reference",
                                                                    str(make_linear_onnx(f / "wide.onnx", 6, 3)), "--quiet"], "has x:batchx6:float32 where"),
]


def _empty_npz(folder: Path) -> str:
    path = folder / "none.npz"
    np.savez(path)
    return str(path)


def _object_npz(folder: Path) -> str:
    path = folder / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}] * 8, dtype=object))
    return str(path)


def _npz_compression_99(folder: Path) -> str:
    """A zip whose member claims compression method 99, which zipfile cannot read (found by fuzzing)."""
    data = bytearray(Path(_npz(folder, "c.npz", x=np.zeros((8, 4), np.float32))).read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = data.find(signature)
        data[at + offset:at + offset + 2] = (99).to_bytes(2, "little")
    return _file(folder, "c99.npz", bytes(data))


def _npz_bad_header(folder: Path) -> str:
    """An .npy member whose header dict is cut mid-literal (numpy's parser raised TokenError; found by fuzzing)."""
    import zipfile

    path = folder / "header.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',\n")
    return str(path)
