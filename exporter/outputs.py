"""An output folder filled atomically: everything is written to a staging folder beside it, then
each file is renamed into place, the command's ledger last. A failed run leaves the folder as it was.

Each command owns a fixed set of names. It replaces or removes only those of its names that an
earlier run of the same command wrote, as its ledger records (export: manifest.json; validate:
validation.json; prune and distill: report.json). A file with one of its names that it did not
write (another command's output, or the user's own) is refused unless ``force``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeport.errors import UsageError

COMMAND_FILES: dict[str, tuple[str, ...]] = {
    "export": ("model.onnx", "model.onnx.data", "model.fp32.onnx", "model.fp32.onnx.data", "model.ort", "report.json", "report.md",
               "manifest.json"),
    "validate": ("validation.json", "validation.md"),
    "compress": ("model.pt2", "report.json"),  # prune and distill
}
LEDGER = {"export": "manifest.json", "validate": "validation.json", "compress": "report.json"}


class OutputFolder:
    def __init__(self, path: str | Path, command: str = "export", *, force: bool = False):
        self.path = Path(path).absolute()
        self.command = command
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"output folder '{path}' is an existing file", fix="choose another -o folder")
        self.owned_before = owned_files(self.path, command)
        foreign = [n for n in COMMAND_FILES[command] if (self.path / n).exists() and n not in self.owned_before]
        if foreign and not force:
            raise UsageError(f"output folder '{path}' holds {', '.join(foreign)}, which an earlier '{command}' here did not write "
                             "(another command's output or your own file)", fix="choose another -o folder, or pass --force to replace them")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.edgeport-", dir=self.path.parent))
        except OSError as exc:
            raise UsageError(f"output folder '{path}' cannot be written ({exc.strerror or exc})", fix="choose a writable folder with -o") from exc
        self.work = self.staging / "work"
        self.work.mkdir()

    def stage(self, name: str) -> Path:
        return self.staging / name

    def ledger(self, files: list[str]) -> dict[str, Any]:
        """The keys that record, in the ledger file, which files this run writes."""
        return {"written_by": self.command, "files": sorted(files)}

    def write_json(self, name: str, payload: Any) -> Path:
        target = self.stage(name)
        target.write_text(dumps_strict(payload) + "\n")
        return target

    def commit(self, order: list[str]) -> None:
        """Move staged files into the output folder in the given order (the ledger last), then
        remove the files an earlier run of this command wrote that this one did not."""
        own = set(COMMAND_FILES[self.command])
        unknown = [n for n in order if n not in own]
        if unknown:
            raise AssertionError(f"'{self.command}' does not own {unknown}")  # a programming error: exit 3
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for name in order:
                os.replace(self.staging / name, self.path / name)
            for name in sorted(self.owned_before - set(order)):
                if name in own and (self.path / name).is_file():
                    (self.path / name).unlink()
        except OSError as exc:
            raise UsageError(f"output folder '{self.path}' cannot be written ({exc.strerror or exc})", fix="choose a writable folder with -o") from exc
        finally:
            self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def owned_files(folder: Path, command: str) -> set[str]:
    """The files an earlier run of ``command`` wrote in ``folder``, from its ledger."""
    try:
        record = json.loads((folder / LEDGER[command]).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(record, dict):
        return set()
    if record.get("written_by") == command and isinstance(record.get("files"), list):
        return {str(f) for f in record["files"]} & set(COMMAND_FILES[command])
    if command == "export" and isinstance(record.get("artifacts"), dict) and "recipe" in record:
        # a manifest from before ledgers: its artifacts and the reports beside them
        return ({str(n) for n in record["artifacts"]} | {"report.json", "report.md", "manifest.json"}) & set(COMMAND_FILES[command])
    return set()


def dumps_strict(payload: Any) -> str:
    """JSON that strict parsers accept: NaN and infinities become null."""
    return json.dumps(_finite(payload), indent=2, sort_keys=False, default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity made null; in a mapping, the reason goes beside it."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            out[key] = _finite(item)
            if isinstance(item, float) and not math.isfinite(item):
                out[f"{key}_not_a_number"] = str(item)  # "nan", "inf" or "-inf"
        return out
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file under a temporary name beside it, then rename: readers never see half of it.
    Created with the usual permissions (0666 less the umask), as any other file the user writes."""
    path = Path(path)
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise UsageError(f"'{path}' cannot be written ({exc.strerror or exc})", fix="choose a writable path") from exc
