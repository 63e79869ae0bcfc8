"""Carrying a streaming model's state from one run to the next, as it runs on the device.

A stateful model (a voice-activity detector, a wake-word net, streaming ASR) takes its state as an
input and returns the next state as an output. Judged feed by feed with the state the data gives,
an int8 model never sees its own rounding fed back; carried, its error accumulates as it will on
the device. ``--stateful state:stateN`` names the pairs: input ``state`` takes output ``stateN``
of the previous run. The feeds a command is given are one stream, in their order (a folder's files
sorted by name); the first feed of a stream keeps the state its data gives. (The int8 search cuts
its evaluation data into two streams, one to search on and one held out.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnxruntime as ort

from edgeport.errors import DataError, UsageError
from edgeport.runtimes.session import run_session


@dataclass(frozen=True)
class StateCarry:
    pairs: tuple[tuple[str, str], ...]  # (input that takes the state, output that returns it)

    @classmethod
    def parse(cls, specs: "Sequence[str] | StateCarry | None") -> "StateCarry | None":
        """``["state:stateN", "h:hN"]`` -> the pairs (a StateCarry is taken as it is); None when no spec is given."""
        if isinstance(specs, StateCarry):
            return specs
        if not specs:
            return None
        pairs = []
        for spec in specs:
            name, sep, output = str(spec).partition(":")
            if not sep or not name.strip() or not output.strip() or ":" in output:
                raise UsageError(f"--stateful '{spec}' is not INPUT:OUTPUT", fix="name the state input and the output that returns it, e.g. --stateful state:stateN")
            pairs.append((name.strip(), output.strip()))
        inputs = [p[0] for p in pairs]
        if len(set(inputs)) != len(inputs):
            raise UsageError(f"--stateful names input '{next(i for i in inputs if inputs.count(i) > 1)}' twice", fix="give each state input once")
        return cls(tuple(pairs))

    def check(self, inputs: Sequence[str], outputs: Sequence[str], model: str) -> None:
        """Every named input and output exists on ``model``."""
        for name, output in self.pairs:
            if name not in inputs:
                raise UsageError(f"--stateful {name}:{output}: model '{model}' has no input '{name}' (its inputs: {', '.join(inputs)})",
                                 fix="name one of the model's inputs before the colon")
            if output not in outputs:
                raise UsageError(f"--stateful {name}:{output}: model '{model}' has no output '{output}' (its outputs: {', '.join(outputs)})",
                                 fix="name the output that returns the next state after the colon")

    def describe(self) -> str:
        return ", ".join(f"output {output} -> input {name}" for name, output in self.pairs)

    def to_dict(self) -> dict[str, str]:
        return {name: output for name, output in self.pairs}


class CarriedSession:
    """Runs feeds in order on one session, feeding each run the state the previous run returned."""

    def __init__(self, session: ort.InferenceSession, carry: StateCarry | None):
        self.session, self.carry = session, carry
        self._index = {o.name: i for i, o in enumerate(session.get_outputs())}
        self._state: dict[str, np.ndarray] = {}

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.carry is None:
            return run_session(self.session, feed)
        for name, array in self._state.items():
            given = feed.get(name)
            if given is not None and (given.shape != array.shape or given.dtype != array.dtype):
                raise DataError(f"--stateful {name}: the model returned a state of {array.dtype}{list(array.shape)}, but input '{name}' "
                                f"is given as {given.dtype}{list(given.shape)}", fix="name the output that returns this input's next state")
        outputs = run_session(self.session, {**feed, **self._state})
        self._state = {name: outputs[self._index[output]] for name, output in self.carry.pairs}
        return outputs


def carried_outputs(session: ort.InferenceSession, feeds: Sequence[dict[str, np.ndarray]], carry: StateCarry | None) -> list[list[np.ndarray]]:
    """Outputs of ``feeds`` run in order as one stream."""
    runner = CarriedSession(session, carry)
    return [runner.run(feed) for feed in feeds]
