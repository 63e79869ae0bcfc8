"""What the host CPU can do, as far as int8 kernels care (VNNI or not, x86 or Arm)."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Any of these gives x86 a non-saturating u8*s8 dot product (VPDPBUSD).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


# A profile names a CPU feature one way; hosts spell it their own way (Linux arm64's /proc/cpuinfo
# says asimd and asimddp, numpy says fma3). Each profile name -> every spelling that proves it.
FEATURE_SPELLINGS: dict[str, tuple[str, ...]] = {
    "neon": ("neon", "asimd"),
    "dotprod": ("dotprod", "asimddp"),
    "i8mm": ("i8mm",),
    "fma": ("fma", "fma3"),
    "avx512_vnni": ("avx512_vnni", "avx512vnni"),
    "avx_vnni": ("avx_vnni", "avxvnni"),
    "vnni": VNNI_FLAGS,
}


X86_ARCHES = ("x86_64", "x86")  # where u8*s8 int8 kernels saturate without VNNI


@dataclass(frozen=True)
class HostCpu:
    arch: str  # "x86_64" | "arm64" | other platform.machine() values
    flags: frozenset[str]
    model_name: str
    cores: int

    @property
    def has_vnni(self) -> bool:
        return any(f in self.flags for f in VNNI_FLAGS)

    def has_feature(self, name: str) -> bool:
        """Whether the host has the CPU feature a profile names (in any of its spellings)."""
        return any(s in self.flags for s in FEATURE_SPELLINGS.get(name.lower(), (name.lower(),)))


@lru_cache(maxsize=1)
def host_cpu() -> HostCpu:
    import os

    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "aarch64": "arm64"}.get(machine, machine)
    flags: set[str] = set()
    model_name = platform.processor() or machine
    cpuinfo = Path("/proc/cpuinfo")
    system = platform.system()
    if system == "Darwin":  # no /proc on macOS: sysctl names the same CPUID features
        darwin_flags, brand = _darwin_flags()
        flags.update(darwin_flags or _numpy_flags())  # Apple silicon has no machdep.cpu.features: numpy reads its hwcaps
        model_name = brand or model_name
    elif system != "Linux" or not cpuinfo.is_file():  # Windows and the rest: numpy's own CPUID probe
        flags.update(_numpy_flags())
    else:
        cpu_flags, named = parse_cpuinfo(cpuinfo.read_text(errors="replace"))
        flags.update(cpu_flags)
        model_name = named or model_name
    return HostCpu(arch, frozenset(flags), model_name, os.cpu_count() or 1)


def memory_mb() -> int | None:
    """Physical memory in MiB, as the OS tells: POSIX sysconf, or Windows' GlobalMemoryStatusEx;
    None where neither answers."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import ctypes

        class MemoryStatus(ctypes.Structure):
            _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong), ("total_phys", ctypes.c_ulonglong),
                        ("avail_phys", ctypes.c_ulonglong), ("total_page", ctypes.c_ulonglong), ("avail_page", ctypes.c_ulonglong),
                        ("total_virtual", ctypes.c_ulonglong), ("avail_virtual", ctypes.c_ulonglong), ("avail_extended", ctypes.c_ulonglong)]

        status = MemoryStatus(length=ctypes.sizeof(MemoryStatus))
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return status.total_phys // 2**20
    except (AttributeError, OSError):  # not Windows
        pass
    return None


def parse_cpuinfo(text: str) -> tuple[set[str], str | None]:
    """Features and a name from /proc/cpuinfo. x86 names the CPU ("model name"); arm64 boards name
    the board in "Model" ("Raspberry Pi 5 Model B Rev 1.0"), which beats "Hardware" (every Pi since
    4.9-era kernels says BCM2835 there)."""
    flags: set[str] = set()
    names: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags.update(value.split())
        elif key in ("model name", "model", "hardware") and value.strip():
            names.setdefault(key, value.strip())
    return flags, names.get("model name") or names.get("model") or names.get("hardware")


# macOS spells CPUID features its own way (AVX512VNNI); Linux's /proc/cpuinfo names are the reference.
_DARWIN_NAMES = {"avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "amx_int8": "amx_int8", "amxint8": "amx_int8"}


# numpy's names for the features that matter here, in /proc/cpuinfo's spelling; the rest are lower-cased.
_NUMPY_NAMES = {"AVX512VNNI": "avx512_vnni", "AVXVNNI": "avx_vnni", "AVX_VNNI": "avx_vnni", "AMX_INT8": "amx_int8"}


def _numpy_flags(features: dict[str, bool] | None = None) -> set[str]:
    """The CPU features numpy detected at import for its own kernel dispatch (CPUID on x86, the
    OS's hwcaps on Arm): the one probe that works on Windows without a new dependency. numpy 2.4
    lists AVX512VNNI but not the VEX-encoded AVX-VNNI, so a Windows Alder Lake (or later) client
    without AVX-512 still reads as a saturating AVX2 host; Linux and macOS name it."""
    if features is None:
        try:
            from numpy._core._multiarray_umath import __cpu_features__ as features
        except ImportError:  # numpy < 2 kept it in numpy.core
            try:
                from numpy.core._multiarray_umath import __cpu_features__ as features
            except ImportError:
                return set()
    return {_NUMPY_NAMES.get(name, name.lower()) for name, present in features.items() if present}


def _darwin_flags() -> tuple[set[str], str | None]:
    """CPU features and brand from sysctl, one key at a time: Intel Macs list features, Apple
    silicon has no such keys (its features come from numpy), and each key may be missing."""
    import subprocess

    def sysctl(key: str) -> str:
        try:
            done = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    tokens = f"{sysctl('machdep.cpu.features')} {sysctl('machdep.cpu.leaf7_features')}".split()
    flags = {_DARWIN_NAMES.get(token.lower(), token.lower()) for token in tokens}
    return flags, sysctl("machdep.cpu.brand_string") or None
