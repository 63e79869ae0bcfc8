"""Strict TOML tables into frozen dataclasses: every problem is collected, one line each (an
unknown key with the nearest valid one, a wrong type, a missing required key). Device profiles and
recipes both parse this way, so their errors read alike."""

from __future__ import annotations

import difflib
import sys
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """A TOML file's tables, or None and the one problem that stops reading it."""
    try:
        return tomllib.loads(path.read_text()), []
    except tomllib.TOMLDecodeError as exc:
        return None, [f"{path}: not valid TOML ({exc})"]
    except OSError as exc:
        return None, [f"{path}: cannot be read ({exc.strerror})"]
    except UnicodeDecodeError as exc:  # found by fuzzing: TOML is UTF-8 text
        return None, [f"{path}: not UTF-8 text (byte {exc.start})"]


class Problems:
    def __init__(self, origin: str):
        self.origin = origin
        self.items: list[str] = []

    def add(self, key: str, text: str) -> None:
        self.items.append(f"{self.origin}: {key}: {text}")


def build_dataclass(cls: type, data: Any, prefix: str, problems: Problems) -> Any:
    """``cls`` built from ``data`` (keys under ``prefix``), or None with the reasons added to ``problems``."""
    where = prefix.rstrip(".") or "(top level)"
    if not isinstance(data, dict):
        problems.add(where, f"must be a table, not {type(data).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(key, list(known), n=1)
            problems.add(prefix + key, "unknown key" + (f"; did you mean '{near[0]}'?" if near else f" (valid: {', '.join(known)})"))
    values: dict[str, Any] = {}
    ok = True
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                problems.add(prefix + name, "is required")
                ok = False
            continue
        value = _convert(hints[name], data[name], prefix + name, problems)
        if value is _BAD:
            ok = False
        else:
            values[name] = value
    return cls(**values) if ok else None


_BAD = object()


def _convert(hint: Any, value: Any, key: str, problems: Problems) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, problems)
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        built = build_dataclass(hint, value, key + ".", problems)
        return _BAD if built is None else built
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.add(key, f"must be a list of strings, not {value!r}")
            return _BAD
        return tuple(value)
    if origin is dict:
        value_type = args[1]
        if not isinstance(value, dict) or not all(_is(value_type, v) for v in value.values()):
            problems.add(key, f"must be a table of {value_type.__name__} values, not {value!r}")
            return _BAD
        return dict(value)
    if not _is(hint, value):
        problems.add(key, f"must be {'a number' if hint is float else hint.__name__}, not {type(value).__name__} {value!r}")
        return _BAD
    return float(value) if hint is float else value


def _is(hint: type, value: Any) -> bool:
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)
