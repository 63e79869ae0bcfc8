"""Calibration and evaluation data: .npz files, folders of .npy/.npz samples, or Python factories.

Every source yields *items*; an item's arrays are read against the model's input specs by rank:
rank - 1 is one sample, rank is a block of samples along axis 0, rank + 1 is a list of ready-made
batches. Samples are grouped into batches of the model's batch size; ready-made batches pass as
they are. Arrays are streamed: an .npz member is read a few rows at a time, never whole.

A model with an input that has no batch axis at 0 (a scalar sample rate, a recurrent state
[2, batch, 128]: streaming audio and keyword models) cannot be batched by stacking. Its items are
*complete feeds*, given exactly as the model takes them (rank), or a list of them (rank + 1),
and each passes on as it is, one feed per batch.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import tokenize
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from edgeport.errors import DataError
from edgeport.specs import TensorSpec, example_array

LABELS_KEY = "labels"
# What a damaged .npz raises from zipfile, zlib and numpy's header reader (NotImplementedError: an
# unknown compression method; RuntimeError: an encrypted member; both found by fuzzing).
# numpy parses an .npy header as Python literals: a damaged one raises tokenize's and ast's errors.
_UNREADABLE = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
               tokenize.TokenError, SyntaxError)
_ROWS_PER_READ = 64


@dataclass
class Batch:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    feeds: int | None = None  # set for complete feeds (one per batch), whose first axis is not a batch

    @property
    def size(self) -> int:
        if self.feeds is not None:
            return self.feeds
        return int(next(iter(self.inputs.values())).shape[0]) if self.inputs else 0


@dataclass
class Item:
    arrays: dict[str, Any]  # np.ndarray or a lazily read NpyRows
    labels: Any = None
    origin: str = ""


class DataSource:
    """Base: subclasses yield raw items; ``batches`` turns them into model-ready batches."""

    description = "data"
    role = "data"  # "calibration" or "evaluation", used in error messages
    warning: str | None = None  # said in the report, e.g. that synthetic data is not representative

    def items(self) -> Iterator[Item]:
        raise NotImplementedError

    def batches(
        self, specs: tuple[TensorSpec, ...], batch_size: int = 8, max_samples: int | None = None
    ) -> Iterator[Batch]:
        from edgeport.data_batches import batch_items  # batching reads the sources this module defines

        return batch_items(self, specs, batch_size, max_samples)

    def scan(self, specs: tuple[TensorSpec, ...], batch_size: int, max_samples: int | None) -> "DataScan":
        """One pass over exactly the batches a consumer will see: it validates them against the
        specs, hashes them (a stable key for caches), and counts batches, samples and shapes."""
        digest = hashlib.sha256()
        scan = DataScan("", 0, 0, set())
        for batch in self.batches(specs, batch_size, max_samples):
            for name in sorted(batch.inputs):
                array = np.ascontiguousarray(batch.inputs[name])
                digest.update(f"{name}{array.dtype}{array.shape}".encode())
                digest.update(array.tobytes())
            scan.batches += 1
            scan.samples += batch.size
            scan.shapes.add(tuple(sorted((n, a.shape) for n, a in batch.inputs.items())))
        scan.fingerprint = digest.hexdigest()
        return scan

    def fingerprint(self, specs: tuple[TensorSpec, ...], batch_size: int, max_samples: int | None) -> str:
        return self.scan(specs, batch_size, max_samples).fingerprint


@dataclass
class DataScan:
    fingerprint: str
    batches: int
    samples: int
    # the distinct sets of input shapes among the batches; a short last batch counts as another, because
    # ORT's histogram calibrators stack a chunk's outputs and fail on mixed batch sizes
    shapes: set[tuple]


class NpzSource(DataSource):
    def __init__(self, path: Path, role: str = "data"):
        self.path, self.role = path, role
        self.description = str(path)
        try:
            with zipfile.ZipFile(path) as archive:
                self.keys = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        except _UNREADABLE as exc:
            raise DataError(f"{role} data '{path}' is not a readable .npz file ({exc})", fix="write it with numpy.savez") from exc
        if not self.keys:
            raise DataError(f"{role} data '{path}' holds no arrays", fix="write arrays keyed by input name with numpy.savez")

    def items(self) -> Iterator[Item]:
        archive = zipfile.ZipFile(self.path)
        try:
            arrays = {k: NpyRows(archive, k, self.path) for k in self.keys if k != LABELS_KEY}
            labels = NpyRows(archive, LABELS_KEY, self.path) if LABELS_KEY in self.keys else None
            yield Item(arrays, labels, str(self.path))
        finally:
            archive.close()


class FolderSource(DataSource):
    def __init__(self, path: Path, role: str = "data"):
        self.path, self.role = path, role
        self.description = str(path)
        self.files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
        if not self.files:
            raise DataError(f"{role} data folder '{path}' has no .npy or .npz files", fix="save one sample per file with numpy.save")

    def items(self) -> Iterator[Item]:
        for file in self.files:
            try:
                loaded = np.load(file, allow_pickle=False)
            except Exception as exc:
                raise DataError(f"{self.role} sample '{file}' cannot be read ({exc})", fix="re-save it with numpy.save") from exc
            if isinstance(loaded, np.ndarray):
                yield Item({"": loaded}, None, str(file))
            else:
                with loaded:
                    arrays = {k: loaded[k] for k in loaded.files if k != LABELS_KEY}
                    labels = loaded[LABELS_KEY] if LABELS_KEY in loaded.files else None
                yield Item(arrays, labels, str(file))


class FactorySource(DataSource):
    """``package.module:attr``: a callable returning an iterable, or an iterable itself.

    Each element is a dict of arrays keyed by input name, a single array (one-input models),
    a tuple of arrays in input order, or ``(inputs, labels)``.
    """

    def __init__(self, target: str, role: str = "data"):
        self.target, self.role = target, role
        self.description = target
        self.obj = import_object(target, what=f"{role} data factory", error=DataError)
        self._one_shot: object | None = None

    def items(self) -> Iterator[Item]:
        produced = self.obj() if callable(self.obj) else self.obj
        if not isinstance(produced, Iterable):
            raise DataError(f"{self.role} data factory '{self.target}' returned {type(produced).__name__}, not an iterable", fix="return a list or generator of arrays or dicts")
        if iter(produced) is produced:  # a generator or iterator reads once; data is read several times (scan, calibrate, evaluate)
            if produced is self._one_shot:
                raise DataError(f"{self.role} data '{self.target}' is a generator that was used up by an earlier pass",
                                fix="point at a function that returns a new generator on each call, or at a list")
            self._one_shot = produced
        for index, element in enumerate(produced):
            labels = None
            if isinstance(element, tuple) and len(element) == 2 and isinstance(element[0], dict):
                element, labels = element
            if isinstance(element, dict):
                arrays = {k: _to_numpy(v) for k, v in element.items() if k != LABELS_KEY}
                labels = element.get(LABELS_KEY, labels)
            elif isinstance(element, (tuple, list)):
                arrays = {f"#{i}": _to_numpy(v) for i, v in enumerate(element)}
            else:
                arrays = {"": _to_numpy(element)}
            yield Item(arrays, None if labels is None else _to_numpy(labels), f"{self.target}[{index}]")


class RandomSource(DataSource):
    """Synthetic normal data. Only on explicit request: it is not representative for calibration."""

    def __init__(self, num_samples: int, seed: int, role: str = "data"):
        self.num_samples, self.seed, self.role = num_samples, seed, role
        self.description = f"random:{num_samples} (synthetic, not representative)"
        self.specs: tuple[TensorSpec, ...] = ()

    def batches(self, specs, batch_size=8, max_samples=None):
        self.specs = specs
        return super().batches(specs, batch_size, max_samples)

    def items(self) -> Iterator[Item]:
        rng = np.random.default_rng(self.seed)
        whole = takes_complete_feeds(self.specs)  # then every item is a complete feed at batch 1
        for _ in range(self.num_samples):
            yield Item({s.name: example_array(s, rng) if whole or not s.rank else example_array(s, rng)[0] for s in self.specs}, None, "random")


def open_data(text: str | Path | DataSource | None, *, role: str, seed: int = 0) -> DataSource | None:
    """Resolve a DATA argument: .npz path, folder, ``module:attr`` factory, or ``random[:N]``."""
    if text is None or isinstance(text, DataSource):
        if isinstance(text, DataSource) and text.role == "data":
            text.role = role  # a source opened for one role (calibration) keeps its name when reused for another
        return text
    text = str(text)
    if text == "random" or text.startswith("random:"):
        count = text.partition(":")[2] or "64"
        if not count.isdigit() or int(count) < 1:
            raise DataError(f"{role} data '{text}' is not random:N", fix="write random:64")
        source = RandomSource(int(count), seed, role)
        source.warning = f"{role} data is synthetic random noise: it does not represent real inputs, so int8 ranges and parity are not trustworthy"
        warnings.warn(source.warning, stacklevel=2)
        return source
    path = Path(text)
    if path.is_dir():
        return FolderSource(path, role)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataError(f"{role} data '{path}' does not exist", fix="check the path")
        return NpzSource(path, role)
    if ":" in text and not path.exists():
        return FactorySource(text, role)
    raise DataError(f"{role} data '{text}' is not an .npz file, a folder of samples or a module:attr factory", fix="pass e.g. data.npz, samples/, or mypkg.data:calibration_set")


def import_object(target: str, *, what: str, error: type[Exception]) -> Any:
    """Import ``package.module:attr`` (the current folder is importable, as for `python -m`)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise error(f"{what} '{target}' is not package.module:attr", fix="write e.g. mypkg.models:build_model")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise error(f"{what} module '{module_name}' cannot be imported ({exc})", fix="check the module path and that it is importable from the current folder") from exc
    except Exception as exc:
        raise error(f"{what} module '{module_name}' raised {type(exc).__name__} on import: {exc}", fix="fix the module so it imports cleanly") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{what} '{target}': module '{module_name}' has no attribute '{attr}'", fix="check the name after the colon")
        obj = getattr(obj, part)
    return obj


class NpyRows:
    """Rows of one .npy member of an .npz, read a few at a time (compressed members stream too)."""

    def __init__(self, archive: zipfile.ZipFile, key: str, path: Path):
        self.archive, self.key, self.path = archive, key, path
        try:
            with archive.open(f"{key}.npy") as handle:
                shape, fortran, dtype = _read_header(handle)
        except _UNREADABLE as exc:
            raise DataError(f"array '{key}' in '{path}' is not a readable .npy member ({str(exc)[:120]})", fix="re-save the file with numpy.savez") from exc
        if dtype.hasobject:
            raise DataError(f"array '{key}' in '{path}' holds Python objects", fix="save numeric arrays only")
        self.shape, self.fortran, self.dtype = tuple(shape), fortran, dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def rows(self) -> Iterator[np.ndarray]:
        """Yield blocks of consecutive rows along axis 0; a corrupt member is a DataError."""
        try:
            yield from self._rows()
        except _UNREADABLE as exc:
            raise DataError(f"array '{self.key}' in '{self.path}' cannot be read ({str(exc)[:120]})", fix="re-save the file with numpy.savez") from exc

    def _rows(self) -> Iterator[np.ndarray]:
        if self.fortran or not self.shape:
            with self.archive.open(f"{self.key}.npy") as handle:
                yield np.lib.format.read_array(handle, allow_pickle=False)
            return
        row_shape = self.shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        remaining = self.shape[0]
        with self.archive.open(f"{self.key}.npy") as handle:
            _read_header(handle)
            while remaining:
                count = min(_ROWS_PER_READ, remaining)
                raw = handle.read(count * row_bytes)
                if len(raw) != count * row_bytes:
                    raise DataError(f"array '{self.key}' in '{self.path}' is truncated", fix="re-save the file")
                yield np.frombuffer(raw, dtype=self.dtype).reshape((count, *row_shape))
                remaining -= count


def _read_header(handle) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    return np.lib.format.read_array_header_2_0(handle)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def array_rows(array: Any) -> Iterator[np.ndarray]:
    if isinstance(array, NpyRows):
        yield from array.rows()
    else:
        yield np.asarray(array)


def takes_complete_feeds(specs: tuple[TensorSpec, ...]) -> bool:
    """True when some input has no batch axis at 0: a scalar, or a tensor whose axis 0 is not the
    batch dim the other inputs share (a state [2, batch, 128])."""
    batch_names = {s.shape[0] for s in specs if s.rank and isinstance(s.shape[0], str)}
    batch = next(iter(batch_names)) if len(batch_names) == 1 else None
    return any(s.rank == 0 or (batch is not None and s.shape[0] != batch and batch in s.shape) for s in specs)
