"""Load a model given as module:attr, TorchScript, torch.export .pt2, pickled module, or .onnx.

Unpickling runs arbitrary code, so a fully pickled module loads only with trust_pickle=True;
state_dict weights always load with weights_only=True.
"""

from __future__ import annotations

import inspect
import zipfile
from pathlib import Path
from typing import Any

from edgeport.artifacts import OnnxArtifact, TorchArtifact
from edgeport.data import DataSource, import_object
from edgeport.errors import ModelLoadError, UsageError, first_line
from edgeport.specs import TensorSpec

TORCH_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript", ".pt2")


def load_model(
    target: str | Path | Any,
    *,
    inputs: tuple[TensorSpec, ...] | None = None,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    example_data: DataSource | None = None,
) -> TorchArtifact | OnnxArtifact:
    if not isinstance(target, (str, Path)):
        return _from_module(target, repr(type(target).__name__), inputs, weights, example_data)
    text = str(target)
    path = Path(text)
    if path.suffix == ".onnx":
        if weights is not None:
            raise UsageError("--weights does not apply to an .onnx model", fix="drop --weights; the ONNX file holds its weights")
        artifact = OnnxArtifact.from_file(path, lineage=("onnx",))
        artifact.files()  # refuses external data that points outside the model's folder, before anything reads it
        _check_onnx_inputs(artifact, inputs)
        return artifact
    if path.suffix in TORCH_FILE_SUFFIXES or path.exists():
        if not path.is_file():
            raise ModelLoadError(f"model file '{path}' does not exist", fix="check the path")
        return _from_file(path, inputs, weights, trust_pickle, example_data)
    if ":" in text:
        obj = import_object(text, what="model", error=ModelLoadError)
        return _from_module(obj, text, inputs, weights, example_data)
    raise ModelLoadError(
        f"model '{text}' is neither an existing file nor package.module:attr",
        fix="pass a .onnx/.pt2/TorchScript file, or e.g. mypkg.models:build_model",
    )


def _from_module(obj: Any, source: str, inputs, weights, example_data) -> TorchArtifact:
    import torch

    module = obj
    if not isinstance(obj, torch.nn.Module):
        if not callable(obj):
            raise ModelLoadError(f"model '{source}' is a {type(obj).__name__}, not an nn.Module or a factory", fix="point at an nn.Module instance, its class, or a zero-argument function returning one")
        try:
            module = obj()
        except TypeError as exc:
            raise ModelLoadError(f"model factory '{source}' needs arguments ({exc})", fix="point at a zero-argument function that builds the model") from exc
        if not isinstance(module, torch.nn.Module):
            raise ModelLoadError(f"model factory '{source}' returned {type(module).__name__}, not an nn.Module", fix="return the nn.Module from the factory")
    if weights is not None:
        _load_weights(module, Path(weights))
    module.eval()
    specs = inputs or _infer_inputs(module, example_data, source)
    return TorchArtifact(module, specs, source, lineage=("torch",))


def _load_weights(module: Any, path: Path) -> None:
    import torch

    if not path.is_file():
        raise ModelLoadError(f"weights file '{path}' does not exist", fix="check the --weights path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"weights file '{path}' cannot be read as a state_dict ({first_line(exc)[:200]})",
            fix="save it with torch.save(model.state_dict(), path); a corrupt or pickled-module file does not load here",
        ) from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"weights file '{path}' holds a {type(state).__name__}, not a state_dict", fix="save model.state_dict()")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights '{path}' do not fit the model ({_mismatch(module, state) or first_line(exc)[:200]})", fix="use the checkpoint saved from this model class") from exc


def _mismatch(module: Any, state: dict) -> str:
    """Name the first missing, unexpected or differently shaped parameter."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    parts = [f"missing {missing[:3]}"] if missing else []
    parts += [f"unexpected {unexpected[:3]}"] if unexpected else []
    for key in own:
        if key in state and hasattr(state[key], "shape") and tuple(state[key].shape) != tuple(own[key].shape):
            parts.append(f"'{key}' is {tuple(state[key].shape)} in the file but {tuple(own[key].shape)} in the model")
            break
    return ", ".join(parts)


def _from_file(path: Path, inputs, weights, trust_pickle: bool, example_data) -> TorchArtifact:
    import torch

    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise ModelLoadError(f"'{path}' is not a loadable torch.export program ({first_line(exc)[:200]})", fix="save it with torch.export.save(torch.export.export(model, args), path)") from exc
        specs = inputs or _program_inputs(program)
        return TorchArtifact(program.module(), specs, str(path), lineage=("torch.export",), program=program)
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(f"TorchScript file '{path}' cannot be loaded ({first_line(exc)[:200]})", fix="check the file is complete and was saved with torch.jit.save") from exc
        if weights is not None:
            _load_weights(module, Path(weights))
        module.eval()
        specs = inputs or _infer_inputs(module, example_data, str(path))
        return TorchArtifact(module, specs, str(path), lineage=("torchscript",))
    if not trust_pickle:
        raise ModelLoadError(
            f"'{path}' is a pickled model, and loading it runs arbitrary code",
            fix="pass --trust-pickle if you trust its author, or give package.module:attr with --weights STATE_DICT",
        )
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"model file '{path}' cannot be unpickled ({first_line(exc)[:200]})", fix="check the file is complete and its classes are importable") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"'{path}' holds a {type(module).__name__}, not an nn.Module", fix="for a state_dict, pass the model as package.module:attr with --weights")
    return _from_module(module, str(path), inputs, weights, example_data)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


def _program_inputs(program: Any) -> tuple[TensorSpec, ...]:
    specs = []
    user_inputs = list(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta.get("val")
        if value is None or not hasattr(value, "shape"):
            raise ModelLoadError(f"input '{node.name}' of the .pt2 program is not a tensor", fix="export a program whose inputs are tensors")
        dims = tuple(int(d) if str(d).lstrip("-").isdigit() else ("batch" if axis == 0 else f"dim_{d}") for axis, d in enumerate(value.shape))
        specs.append(TensorSpec(node.name, dims, str(value.dtype).replace("torch.", "")))
    return tuple(specs)


def _infer_inputs(module: Any, data: DataSource | None, source: str) -> tuple[TensorSpec, ...]:
    """Input specs from the first batch of example data, with axis 0 made the dynamic 'batch' dim."""
    if data is None:
        raise UsageError(
            f"the input shapes of '{source}' are unknown",
            fix="give --input NAME:SHAPE[:DTYPE] (e.g. image:batchx3x224x224) or calibration data to infer them from",
        )
    names = _forward_params(module)
    item = next(iter(data.items()), None)
    if item is None:
        raise UsageError(f"{data.role} data '{data.description}' is empty, so input shapes cannot be inferred", fix="give --input NAME:SHAPE")
    keys = list(item.arrays)
    if keys in ([""], ["arr_0"]) or all(k.startswith("#") for k in keys):
        keys = names[: len(keys)] if len(names) >= len(keys) else [f"input_{i}" for i in range(len(keys))]
        arrays = list(item.arrays.values())
    else:
        ordered = [n for n in names if n in item.arrays] + [k for k in keys if k not in names]
        arrays = [item.arrays[k] for k in ordered]
        keys = ordered
    specs = []
    for name, array in zip(keys, arrays):
        shape = tuple(int(d) for d in array.shape)
        if not shape:
            raise UsageError(f"{data.role} data for '{name}' is a scalar, so its shape says nothing", fix="give --input NAME:SHAPE")
        dtype = {"float64": "float32"}.get(str(array.dtype), str(array.dtype))
        specs.append(TensorSpec(name, ("batch", *shape[1:]), dtype))
    return tuple(specs)


def _forward_params(module: Any) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _check_onnx_inputs(artifact: OnnxArtifact, inputs: tuple[TensorSpec, ...] | None) -> None:
    if not inputs:
        return
    names = [s.name for s in artifact.inputs]
    for spec in inputs:
        if spec.name not in names:
            raise UsageError(f"--input '{spec.name}' is not an input of '{artifact.path}' (it has {names})", fix="use the model's input names, or drop --input for .onnx models")
