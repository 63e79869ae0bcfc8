"""An output folder filled atomically: everything is written to a staging folder beside it, then
each file is renamed into place, manifest.json last. A failed run leaves the folder as it was."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeport.errors import UsageError

# Files a run owns in its output folder; stale ones from an earlier run are removed on success.
OWNED_FILES = ("model.onnx", "model.fp32.onnx", "model.ort", "report.json", "report.md", "junit.xml", "manifest.json")


class OutputFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path).absolute()
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"output folder '{path}' is an existing file", fix="choose another -o folder")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.edgeport-", dir=self.path.parent))
        except OSError as exc:
            raise UsageError(f"output folder '{path}' cannot be written ({exc.strerror or exc})", fix="choose a writable folder with -o") from exc
        self.work = self.staging / "work"
        self.work.mkdir()

    def stage(self, name: str) -> Path:
        return self.staging / name

    def write_json(self, name: str, payload: Any) -> Path:
        target = self.stage(name)
        target.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
        return target

    def commit(self, order: list[str]) -> None:
        """Move staged files into the output folder in the given order, then drop stale owned files."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for name in order:
                os.replace(self.staging / name, self.path / name)
            for name in OWNED_FILES:
                if name not in order and (self.path / name).exists():
                    (self.path / name).unlink()
        except OSError as exc:
            raise UsageError(f"output folder '{self.path}' cannot be written ({exc.strerror or exc})", fix="choose a writable folder with -o") from exc
        finally:
            self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file under a temporary name beside it, then rename: readers never see half of it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temp, path)
    except OSError as exc:
        raise UsageError(f"'{path}' cannot be written ({exc.strerror or exc})", fix="choose a writable path") from exc
