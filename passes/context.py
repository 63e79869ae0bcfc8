"""What a pass may use besides its config and input artifact: folders, data, seed, progress."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from edgeport.artifacts import StepRecord
from edgeport.data import DataSource
from edgeport.runtimes.state_carry import StateCarry


class Progress(Protocol):
    """Progress of long work: one status line per step, a counter for loops (calibration, training)."""

    def note(self, text: str) -> None: ...
    def start(self, label: str, total: int | None = None) -> None: ...
    def advance(self, count: int = 1) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def note(self, text: str) -> None:
        pass

    def start(self, label: str, total: int | None = None) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


def default_cache_dir() -> Path:
    if os.environ.get("EDGEPORT_CACHE_DIR"):
        return Path(os.environ["EDGEPORT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeport"


@dataclass
class QuantTarget:
    """What the deployment target wants from int8: where the defaults of the quantize pass come from.

    ``arch`` and ``has_vnni`` describe the CPU that will run the model; ``source`` says whether they
    came from a device profile or from this host, so the report can say which rule chose the defaults.
    """

    arch: str
    has_vnni: bool
    source: str
    int8_speedup: float | None = None  # int8 over fp32 compute throughput (a profile's peak_gops ratio); None: unknown
    provider: str = "CPUExecutionProvider"  # the execution provider the target runs first
    # the first providers of the export's other profiles: one int8 file serves them all, so a
    # rewrite one of them cannot run (HardSwish on NNAPI) is not made
    other_providers: tuple[str, ...] = ()


@dataclass
class PassContext:
    work_dir: Path
    seed: int = 0
    calibration: DataSource | None = None
    evaluation: DataSource | None = None
    progress: Progress = field(default_factory=NullProgress)
    cache_dir: Path = field(default_factory=default_cache_dir)
    quant_target: QuantTarget | None = None
    # A streaming model's state pairs: evaluation runs feeds in order, each run taking the state the
    # previous one returned (None: every feed as its data gives it).
    state_carry: StateCarry | None = None
    # Runtime objects for torch passes (never config fields): distillation's teacher and training data.
    teacher: Any = None
    training: DataSource | None = None
    # How recovery distills (prune's --lr, --device, --batch-size...: a DistillConfig): a pass that
    # fine-tunes itself trains with these settings for its own number of epochs (None: the defaults).
    recovery: Any = None
    # Where training checkpoints live: outside the output's staging folder, so a run that was
    # interrupted can be resumed (None: the work folder).
    checkpoint_dir: Path | None = None
    records: list[StepRecord] = field(default_factory=list)

    @property
    def target_provider(self) -> str:
        """The execution provider the target runs first: ORT's CPU one when no profile says."""
        return self.quant_target.provider if self.quant_target else "CPUExecutionProvider"

    @property
    def target_providers(self) -> tuple[str, ...]:
        """The first provider of every target the int8 file must run on."""
        return (self.target_provider, *(self.quant_target.other_providers if self.quant_target else ()))

    def record(self, step: StepRecord) -> None:
        self.records.append(step)

    def record_pass(self, info: Any, config: Any, started: float, metrics: dict[str, Any], *, source: Any = None, result: Any = None,
                    notes: Sequence[str] = ()) -> None:
        """The record of one run of the pass ``info`` (its PassInfo): its config, the seconds since
        ``started``, the sizes of the ONNX artifact it read and the one it wrote (None for a torch
        model), and what it measured."""
        self.record(StepRecord(name=info.name, config=config_to_dict(config), wall_s=time.perf_counter() - started,
                               input_bytes=source.size_bytes if source is not None else None,
                               output_bytes=result.size_bytes if result is not None else None, metrics=metrics, notes=list(notes)))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config as plain TOML-friendly values (tuples become lists, None is dropped)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a config from plain values, naming any unknown key."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        import difflib

        from edgeport.errors import UsageError

        near = difflib.get_close_matches(unknown[0], list(names), n=1)
        hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(names)}"
        raise UsageError(f"{cls.__name__} has no option '{unknown[0]}'", fix=hint)
    import typing

    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if isinstance(value, dict) and dataclasses.is_dataclass(hints.get(key)):
            value = config_from_dict(hints[key], value)  # a nested config, e.g. the int8 settings of a search
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)
