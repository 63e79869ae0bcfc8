"""The two artifact kinds that travel through a pipeline, and the record each step leaves behind."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgeport.errors import ModelLoadError, UsageError, first_line
from edgeport.specs import SUPPORTED_DTYPES, TensorSpec


@dataclass
class TorchArtifact:
    """An nn.Module in eval mode with the specs of its inputs.

    ``module`` is typed Any so this module never imports torch.
    """

    module: Any
    inputs: tuple[TensorSpec, ...]
    source: str
    lineage: tuple[str, ...] = ()
    program: Any = None  # the torch.export ExportedProgram when loaded from a .pt2 file


def declared_opset(model: onnx.ModelProto | str | Path) -> int | None:
    """The opset of the default ONNX domain a model (or a model file, read without its weights)
    imports; None when it imports none (a model of custom-domain ops only, like an EPContext one)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def default_opset(model: onnx.ModelProto | str | Path) -> int:
    """``declared_opset``, or 1 (ONNX's first) when the model declares none: what ONNX assumes."""
    opset = declared_opset(model)
    return 1 if opset is None else opset


@dataclass(frozen=True)
class OnnxArtifact:
    """An .onnx file (with any external data beside it) and its tensor specs."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    lineage: tuple[str, ...] = ()

    @classmethod
    def from_file(cls, path: str | Path, lineage: tuple[str, ...] = ()) -> "OnnxArtifact":
        path = Path(path)
        try:
            inputs, outputs = read_onnx_specs(path)
        except ModelLoadError:
            raise
        except Exception as exc:  # a damaged file can parse into fields of the wrong kind
            raise ModelLoadError(f"'{path}' is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:120]})",
                                 fix="re-export the model or check that the file was fully copied") from exc
        return cls(path, inputs, outputs, lineage)

    @property
    def is_ort_format(self) -> bool:
        """ONNX Runtime's mobile format (.ort): a flatbuffer, not readable by the onnx package."""
        return self.path.suffix == ".ort"

    def files(self) -> list[Path]:
        """The model file and every external data file it references."""
        return [self.path] if self.is_ort_format else [self.path, *external_data_files(self.path)]

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def onnx_view(self) -> Path | None:
        """The ONNX file with this artifact's graph: itself, or for an .ort file the .onnx beside it."""
        if not self.is_ort_format:
            return self.path
        sibling = self.path.with_suffix(".onnx")
        return sibling if sibling.is_file() else None

    def device_files(self) -> dict[str, Path]:
        """The model and its external data by the names they keep beside each other on a device."""
        files = self.files()
        for path in files[1:]:
            if path.parent != self.path.parent:
                raise UsageError(f"'{self.path}' keeps weights in a subfolder ('{path.relative_to(self.path.parent)}'), which --remote does not copy",
                                 fix="save the model with its external data beside it (onnx.save(..., location='model.onnx.data'))")
        return {path.name: path for path in files}

    def io_mismatch(self, other: "OnnxArtifact") -> str | None:
        """Why ``other`` cannot take this model's inputs and give comparable outputs, or None when it can:
        the same input names, ranks and dtypes, no fixed dim that differs, and as many outputs."""
        if [s.name for s in self.inputs] != [s.name for s in other.inputs] or len(self.outputs) != len(other.outputs):
            return (f"'{other.path}' takes {[s.name for s in other.inputs]} -> {len(other.outputs)} outputs, "
                    f"but '{self.path}' takes {[s.name for s in self.inputs]} -> {len(self.outputs)}")
        for mine, theirs in (*zip(self.inputs, other.inputs), *zip(self.outputs, other.outputs)):
            fixed_differ = any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(mine.shape, theirs.shape))
            if mine.rank != theirs.rank or fixed_differ or mine.dtype != theirs.dtype:
                return f"'{other.path}' has {theirs.describe()} where '{self.path}' has {mine.describe()}"
        return None

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for file in self.files():
            digest.update(file_sha256(file).encode())
        return digest.hexdigest()


@dataclass
class StepRecord:
    """What one pass did: its config, how long it took, sizes, and what it measured."""

    name: str
    config: dict[str, Any]
    wall_s: float = 0.0
    input_bytes: int | None = None
    output_bytes: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config,
            "wall_s": round(self.wall_s, 4),
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "metrics": self.metrics,
            "notes": self.notes,
            "cached": self.cached,
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def external_data_files(path: Path) -> list[Path]:
    """The side files holding the model's weights. A location that escapes the model's folder (an
    absolute path, '..', a symlink out) is refused: reading it would read any file (CVE-2024-27318)."""
    stat = path.stat()
    names = _external_locations(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    folder = path.parent.resolve()
    for name in names:
        target = (path.parent / name).resolve()
        if Path(name).is_absolute() or (target != folder and folder not in target.parents):
            raise ModelLoadError(f"ONNX model '{path}' keeps weights at '{name}', outside its own folder",
                                 fix="keep external data files beside the model; paths that leave its folder are refused")
    return [path.parent / name for name in names]


@functools.lru_cache(maxsize=64)
def _external_locations(path_text: str, _mtime_ns: int, _size: int) -> tuple[str, ...]:
    # keyed on the file's identity: a size or hash query would otherwise parse a large model each time
    names: set[str] = set()
    for tensor in _all_initializers(_load_proto(Path(path_text)).graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    names.add(entry.value)
    return tuple(sorted(names))


LARGE_MODEL_BYTES = 1_800_000_000  # protobuf cannot hold 2 GB: larger weights go to a side file


def save_artifact(model: onnx.ModelProto, dest: Path) -> list[Path]:
    """Save ``model`` as a shipped artifact: declaring only the opset domains its nodes use (other
    parsers reject unknown ones), its weights beside it when large. Returns the files written."""
    used = {n.domain or "" for n in _all_nodes(model.graph)} | {""}
    kept = [o for o in model.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    if sum(t.ByteSize() for t in _all_initializers(model.graph)) > LARGE_MODEL_BYTES:
        data = dest.with_name(f"{dest.name}.data")
        data.unlink(missing_ok=True)
        onnx.save(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
        return [dest, data]
    onnx.save(model, str(dest))
    return [dest]


def _all_graphs(graph: onnx.GraphProto):
    """The graph and every subgraph (If branches, Loop and Scan bodies) within it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs if attr.type == onnx.AttributeProto.GRAPHS else []
            for sub in subgraphs:
                yield from _all_graphs(sub)


def _all_nodes(graph: onnx.GraphProto):
    return (node for g in _all_graphs(graph) for node in g.node)


def _all_initializers(graph: onnx.GraphProto):
    return (tensor for g in _all_graphs(graph) for tensor in g.initializer)


def _load_proto(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelLoadError(f"ONNX model '{path}' does not exist", fix="check the path")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for corrupt files
        raise ModelLoadError(
            f"'{path}' is not a readable ONNX model ({type(exc).__name__}: {first_line(exc) if str(exc) else 'corrupt'})",
            fix="re-export the model or check that the file was fully copied",
        ) from exc
    if not model.graph.node or not model.graph.output:  # protobuf reads an empty or cut file as an empty model
        raise ModelLoadError(f"'{path}' is not a readable ONNX model (it holds no graph: {path.stat().st_size} bytes)",
                             fix="re-export the model or check that the file was fully copied")
    return model


def read_onnx_specs(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    if path.suffix == ".ort":
        return _ort_format_specs(path)
    model = _load_proto(path)
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_value_spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_value_spec(v) for v in model.graph.output)
    return inputs, outputs


def _value_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dims: list[int | str] = []
    for index, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(_safe_dim_name(dim.dim_param))
        else:
            dims.append(f"{_safe_dim_name(value.name)}_dim{index}")
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    except Exception:
        dtype = "float32"
    if dtype not in SUPPORTED_DTYPES:
        dtype = "float32"
    return TensorSpec(value.name, tuple(dims), dtype)


def _safe_dim_name(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in text)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"d_{cleaned}"


def _ort_format_specs(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Specs of an .ort file, read through an ONNX Runtime session (the onnx package cannot)."""
    import onnxruntime as ort

    if not path.is_file():
        raise ModelLoadError(f"ORT-format model '{path}' does not exist", fix="check the path")
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"'{path}' is not a loadable ORT-format model ({first_line(exc)[:200]})",
                             fix="re-create it with edgeport export --profile for an ORT-format target") from exc

    def spec(arg) -> TensorSpec:
        dtype = arg.type.replace("tensor(", "").rstrip(")")
        dtype = {"float": "float32", "double": "float64", "float16": "float16"}.get(dtype, dtype)
        dims = tuple(d if isinstance(d, int) and d > 0 else (_safe_dim_name(d) if isinstance(d, str) and d else f"{_safe_dim_name(arg.name)}_dim{i}")
                     for i, d in enumerate(arg.shape))
        return TensorSpec(arg.name, dims, dtype if dtype in SUPPORTED_DTYPES else "float32")

    return tuple(spec(a) for a in session.get_inputs()), tuple(spec(a) for a in session.get_outputs())
