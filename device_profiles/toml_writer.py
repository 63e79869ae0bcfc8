"""Write a Profile back as TOML that `load_profile` reads (the standard library reads TOML but does
not write it, and a profile needs only strings, numbers, booleans, lists of strings and tables)."""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from typing import Any

from edgeport.device_profiles.schema import Profile


def profile_to_toml(profile: Profile) -> str:
    top = {f.name: getattr(profile, f.name) for f in fields(profile) if f.name != "path"}
    lines = [f"{key} = {_value(value)}" for key, value in top.items() if _scalar(value)]
    for key, value in top.items():
        if not _scalar(value):
            lines += _table(key, value)
    return "\n".join(lines) + "\n"


def _table(name: str, value: Any) -> list[str]:
    items = {f.name: getattr(value, f.name) for f in fields(value)} if is_dataclass(value) else dict(value)
    items = {k: v for k, v in items.items() if v is not None}
    lines = ["", f"[{name}]"] + [f"{_key(k)} = {_value(v)}" for k, v in items.items() if _scalar(v)]
    for key, inner in items.items():
        if not _scalar(inner):
            lines += _table(f"{name}.{key}", inner)
    return lines


def _scalar(value: Any) -> bool:
    return not (is_dataclass(value) or isinstance(value, dict))


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
