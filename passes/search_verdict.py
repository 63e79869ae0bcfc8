"""What an int8 search that missed its target says about why: the split that failed, the groups
that blocked it, and whether the fp32 model itself amplifies int8 rounding of its inputs."""

from __future__ import annotations

from typing import Any

from edgeport.passes.fallback_search import SearchResult, significant
from edgeport.passes.fidelity import FidelityScore


def search_verdict(max_fallback: float, met: bool, search: FidelityScore, held_out: FidelityScore,
                   result: SearchResult, floor: FidelityScore | None = None, rounds_inputs: bool = True,
                   fallback: str = "in float") -> dict[str, Any]:
    if met:
        return {"reason": None, "blockers": []}
    judged = held_out if held_out.failing() else search
    split = "held-out" if judged is held_out else "search split"
    short = ", ".join(f"{name} {significant(judged.values.get(name))} on the {split} (margin {significant(judged.margins[name])})" for name in judged.failing())
    floored_note = ""
    if floor is not None and not floor.met and not rounds_inputs:
        floored_note = (" (the fp32 model with only its inputs rounded to int8 scores "
                        + ", ".join(f"{name} {significant(floor.values.get(name))}" for name in floor.failing())
                        + ": it amplifies rounding noise)")
    if floor is not None and not floor.met and rounds_inputs:
        # the model itself, not any layer, stands in the way: no fallback behind a quantized input helps
        floored = ", ".join(f"{name} {significant(floor.values.get(name))}" for name in floor.failing())
        reason = (f"the fp32 model itself misses the target when only its inputs are rounded to the int8 grid of the plain all-int8 "
                  f"model ({floored} on the search split): it amplifies rounding noise, so no mix behind a quantized input can "
                  f"meet the target, and each int8 layer near the inputs costs more than it allows (the int8 file has {short}); "
                  "relax the target or raise --max-fallback")
        return {"reason": reason, "blockers": [{"node": "graph inputs", "op_type": "QuantizeLinear",
                                                "fp32_with_rounded_inputs": floor.to_dict()["values"]}]}
    if search.met:
        reason = f"the target was met on the search split but not on held-out data: {short}{floored_note}; give more evaluation data"
    elif not result.budget_left:
        reason = f"the search budget ran out with {short}{floored_note}; raise --search-budget"
    else:
        reason = f"no mix within {max_fallback:.0%} of MACs {fallback} meets the target: {short}{floored_note}; raise --max-fallback or relax the target"
    blockers = [r.to_dict() for r in result.ranking if r.node not in result.reverted][:5]
    return {"reason": reason, "blockers": blockers}
