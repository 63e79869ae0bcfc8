"""An output folder filled atomically: everything is written to a staging folder beside it. On
Linux the finished folder (the new files, plus hard links to every other file already there) then
changes places with the old one in one renameat2(RENAME_EXCHANGE), so a run killed at any moment
leaves the previous complete result or the new one, never a mix. Elsewhere, or when the folder
holds subfolders, each file is renamed into place, the command's ledger last. A failed run leaves
the folder as it was; staging folders of killed runs are removed by the next run.

Each command owns a fixed set of names. It replaces or removes only those of its names that an
earlier run of the same command wrote, as its ledger records (export: manifest.json; validate:
validation.json; prune and distill: report.json). A file with one of its names that it did not
write (another command's output, or the user's own) is refused unless ``force``.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeport.artifacts import file_sha256
from edgeport.errors import UsageError

COMMAND_FILES: dict[str, tuple[str, ...]] = {
    "export": ("model.onnx", "model.onnx.data", "model.fp32.onnx", "model.fp32.onnx.data", "model.ort",
               "model_ctx.onnx", "model_ctx_qnn.bin", "report.json", "report.md", "report.html", "junit.xml", "manifest.json"),
    "validate": ("validation.json", "validation.md", "validation.html"),
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
        # a file the ledger hashed that no longer matches was replaced by someone: no longer ours
        self.owned_before -= {name for name, digest in _ledger_hashes(self.path, command).items()
                              if (self.path / name).is_file() and file_sha256(self.path / name) != digest}
        foreign = [n for n in COMMAND_FILES[command] if (self.path / n).exists() and n not in self.owned_before]
        if foreign and not force:
            raise UsageError(f"output folder '{path}' holds {', '.join(foreign)}, which an earlier '{command}' here did not write "
                             "(another command's output or your own file)", fix="choose another -o folder, or pass --force to replace them")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _remove_abandoned_staging(self.path)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.edgeport-{os.getpid()}-", dir=self.path.parent))
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
        stale = {n for n in self.owned_before - set(order) if n in own}
        try:
            _failpoint("commit-start")
            if not self._swap_whole_folder(order, stale):
                self.path.mkdir(parents=True, exist_ok=True)
                for index, name in enumerate(order):
                    os.replace(self.staging / name, self.path / name)
                    if index == 0:
                        _failpoint("commit-between")
                for name in sorted(stale):
                    if (self.path / name).is_file():
                        (self.path / name).unlink()
        except OSError as exc:
            raise UsageError(f"output folder '{self.path}' cannot be written ({exc.strerror or exc})", fix="choose a writable folder with -o") from exc
        finally:
            self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def _swap_whole_folder(self, order: list[str], stale: set[str]) -> bool:
        """Build the finished folder beside the old one and exchange the two atomically. False when
        it cannot be done here (no renameat2, subfolders to carry, another filesystem)."""
        if self.path.is_symlink():
            return False  # exchanging would replace the user's link with a folder
        cwd = Path.cwd().resolve()
        if self.path.exists() and (cwd == self.path.resolve() or self.path.resolve() in cwd.parents):
            return False  # `-o .`: the shell would be left in the old, deleted folder
        kept = [p for p in self.path.iterdir() if p.name not in order and p.name not in stale] if self.path.is_dir() else []
        if any(p.is_dir() or not p.is_file() for p in kept):
            return False
        finished = self.staging / "finished"
        finished.mkdir()
        if self.path.is_dir():
            shutil.copymode(self.path, finished)
        try:
            for entry in kept:
                os.link(entry, finished / entry.name)  # the user's and other commands' files, as they are
        except OSError:
            return False
        for name in order:
            os.replace(self.staging / name, finished / name)
        _failpoint("commit-between")
        if not self.path.exists():
            os.rename(finished, self.path)
            return True
        if not _exchange(finished, self.path):
            for name in order:  # back where the per-file commit expects them
                os.replace(finished / name, self.staging / name)
            return False
        _failpoint("commit-swapped")
        return True  # the old folder now sits in staging, and goes with it


def _failpoint(name: str) -> None:
    """Fault injection for the kill tests: with EDGEPORT_FAILPOINT=name this process dies here, as
    SIGKILL would take it at that moment (nothing is flushed or cleaned up)."""
    if os.environ.get("EDGEPORT_FAILPOINT") == name:
        os.kill(os.getpid(), 9)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    return renameat2(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0


def _remove_abandoned_staging(path: Path) -> None:
    """Staging folders whose run was killed (its process is gone): nothing else removes them."""
    for entry in path.parent.glob(f".{path.name}.edgeport-*"):
        pid = entry.name[len(f".{path.name}.edgeport-"):].split("-", 1)[0]
        if entry.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, but another user's
    return True


def _ledger_hashes(folder: Path, command: str) -> dict[str, str]:
    """sha256 of the files the ledger records them for (an export's artifacts)."""
    try:
        record = json.loads((folder / LEDGER[command]).read_text())
        return {str(n): str(a["sha256"]) for n, a in record.get("artifacts", {}).items()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


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
