"""Device profiles: the schema, the loader, and the built-in profiles (TOML files in builtin/).

Never imports torch or onnxruntime: a profile can be checked anywhere.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from edgeport.device_profiles.typed_toml import read_toml
from edgeport.device_profiles.schema import Budgets, Hardware, ParityBudget, Profile, Quantization, Runtime
from edgeport.errors import ProfileError

BUILTIN_DIR = Path(__file__).parent / "builtin"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def check_profile(name_or_path: str | Path) -> tuple[Profile | None, list[str]]:
    """Every problem with a profile, one line each; an empty list means it is valid."""
    path = _resolve(name_or_path)
    data, problems = read_toml(path)
    if data is None:
        return None, problems
    return _parse(data, str(path))


def load_profile(name_or_path: str | Path | Profile) -> Profile:
    """A built-in profile by name, or a profile file by path. Raises ProfileError naming the problem."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    profile, problems = check_profile(name_or_path)
    if problems:
        more = f" (and {len(problems) - 1} more: run 'edgeport profiles check {name_or_path}')" if len(problems) > 1 else ""
        raise ProfileError(problems[0] + more, fix="correct the profile against 'edgeport profiles show ci-x86-avx2'")
    return profile


def _parse(data: dict, origin: str) -> tuple[Profile | None, list[str]]:
    from edgeport.device_profiles.schema import parse_profile

    return parse_profile(data, origin)


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise ProfileError(f"profile file '{text}' does not exist", fix="check the path, or use a built-in name from 'edgeport profiles list'")
        return path
    path = BUILTIN_DIR / f"{text}.toml"
    if not path.is_file():
        near = sorted(difflib.get_close_matches(text, builtin_names(), n=3, cutoff=0.6))
        hint = f"did you mean {' or '.join(repr(n) for n in near)}?" if near else f"built-in profiles: {', '.join(builtin_names())}"
        raise ProfileError(f"unknown profile '{text}'", fix=hint)
    return path


__all__ = [
    "Budgets", "Hardware", "ParityBudget", "Profile", "Quantization", "Runtime",
    "builtin_names", "check_profile", "load_profile",
]
