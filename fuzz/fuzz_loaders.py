"""Coverage-guided fuzzing (atheris, libFuzzer) of the loaders users feed: ONNX bytes, profile
TOML, .npz data and --input specs. A finding is any exception other than UsageError (the one-line,
exit-2 error): the CLI would report it as an internal error. `make fuzz` runs it; the README keeps
the last result.

    python fuzz/fuzz_loaders.py -max_total_time=300 fuzz/corpus
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["edgeport"]):
    from edgeport.data import open_data
    from edgeport.device_profiles import load_profile
    from edgeport.errors import UsageError
    from edgeport.model_loading import load_model
    from edgeport.specs import parse_input_spec

SPEC = parse_input_spec("x:batchx4:float32")
TARGETS = ("model.onnx", "profile.toml", "data.npz", "spec")


def one_input(data: bytes) -> None:
    if not data:
        return
    target, payload = TARGETS[data[0] % len(TARGETS)], data[1:]  # the first byte picks the loader
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / target
        try:
            if target == "spec":
                parse_input_spec(payload.decode("utf-8", "replace"))
                return
            path.write_bytes(payload)
            if target == "model.onnx":
                load_model(str(path))
            elif target == "profile.toml":
                load_profile(path)
            else:
                list(open_data(path, role="calibration").batches((SPEC,), batch_size=3))
        except UsageError:
            pass  # the documented answer to bad input


def write_seed_corpus(folder: Path) -> None:
    """One valid input per target, prefixed with the byte that selects it."""
    import io

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import make_linear_onnx

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = make_linear_onnx(Path(tmp) / "m.onnx").read_bytes()
    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    profile = (Path(__file__).resolve().parents[1] / "device_profiles" / "builtin" / "ci-x86-avx2.toml").read_bytes()
    for index, payload in enumerate((model, profile, buffer.getvalue(), b"image:batchx3x224x224:float32")):
        (folder / f"seed{index}").write_bytes(bytes([index]) + payload)


if __name__ == "__main__":
    corpus = Path(__file__).resolve().parent / "corpus"
    write_seed_corpus(corpus)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
