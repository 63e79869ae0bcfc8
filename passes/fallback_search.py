"""Which quantized groups go back to float, and in what order: whole op types that cost nothing
in the MAC budget first (revert_free_types), then single groups by sensitivity (re-ranked when steps stop
helping), then, when single steps stall, blocks: the top of the ranking reverted together, in
prefixes of doubling size, bisected to the smallest that meets the target (as NNCF's accuracy
control keeps reverting down its ranking). Last, give back to int8 what the target no longer
needs, largest MACs then largest weights first, so the result has the fewest float MACs, then the
smallest file, the search found.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import onnx

from edgeport.passes.context import Progress
from edgeport.passes.fidelity import FidelityScore
from edgeport.passes.int8_eval import EvalSplit, Scorer
from edgeport.passes.qdq_graph import QdqModel
from edgeport.passes.recurrent_scan import recurrence_weights
from edgeport.passes.sensitivity import GroupRank, rank_groups, ranked_by_alone

MISSES_BEFORE_RERANK = 2  # reverts in a row that did not help before the groups are ranked again
MAX_RERANKS = 4
# Misses in a row, once re-ranking is spent, before single reverts give way to blocks: where the
# error is spread over many layers (depthwise CNNs), one revert moves the worst sample by less
# than the noise of which sample is worst, or even the wrong way (errors of layers partly cancel).
MISSES_BEFORE_BLOCKS = 4
_SMALL_WEIGHTS = 64 * 1024  # bytes of constants above which give-back tries a MAC-free node in int8 again
# A revert that costs MACs or file size must move the worst margin by this much (in units of the
# error the target allows), or SQNR by MIN_SQNR_GAIN_DB where the margin is flat (top-1 targets):
# otherwise the search pays MACs and megabytes for noise when the target is out of reach.
MIN_STEP_GAIN = 0.02
MIN_SQNR_GAIN_DB = 0.1
# A block short of the target, taken while single reverts could still spend the budget, must close
# this share of the gap to the target (with its guard band), pro rata to the share of the remaining
# fallback budget it spends: on a MobileNetV2 a 24% block bought 1% of the gap and left nothing for
# single reverts.
BLOCK_PAYBACK = 0.5
FLOAT_COMPUTE_OPS = frozenset({"GRU", "LSTM", "RNN"})  # ORT has no int8 kernel for them, whatever Q/DQ sits around them


@dataclass
class SearchBudget:
    deadline: float
    trials_left: int
    progress: Progress | None = None  # one tick per trial

    def spend(self) -> None:
        self.trials_left -= 1
        if self.progress is not None:
            self.progress.advance(1)

    def ok(self) -> bool:
        return self.trials_left > 0 and time.perf_counter() < self.deadline


@dataclass
class SearchSpace:
    """The quantized groups of the all-int8 model, with what reverting each one costs."""

    qdq: QdqModel
    groups: list[str]
    macs: dict[str, int]  # per node of the float model, per sample
    op_of: dict[str, str]
    weight_bytes: dict[str, int] = field(default_factory=dict)  # fp32 bytes of each group's constant inputs
    int8_bytes: int = 0  # the all-int8 model's size
    int8_speedup: float | None = None  # the target's int8 over fp32 compute throughput; None: unknown
    # quantized groups ORT's CPU provider runs in float all-int8 too (no int8 kernel for them here,
    # e.g. ConvTranspose): read off its graph, so the budget prices them from the start
    float_anyway: frozenset[str] = frozenset()
    total: int = field(init=False)
    float_from_start: int = field(init=False)  # MACs float whatever the search does (ops ORT does not quantize)

    def __post_init__(self) -> None:
        self.total = sum(self.macs.values()) or 1
        # A GRU/LSTM can read a Q/DQ'd input (and so be a group) yet ORT computes it in float
        self._int8_macs = {n: self.macs.get(n, 0) for n in self.groups
                           if self.op_of.get(n) not in FLOAT_COMPUTE_OPS and n not in self.float_anyway}
        self.float_from_start = sum(self.macs.values()) - sum(self._int8_macs.values())

    def float_compute_share(self) -> float:
        """MACs in ops ORT computes only in float (GRU/LSTM/RNN), as a share."""
        return sum(m for n, m in self.macs.items() if self.op_of.get(n) in FLOAT_COMPUTE_OPS) / self.total

    def share(self, reverted: set[str]) -> float:
        """MACs in float with ``reverted`` reverted, as ORT runs the mix (a reverted Conv can take the
        int8 Conv before it to float), as a share."""
        return self.share_of(self.qdq.float_at_runtime(reverted))

    def share_of(self, in_float: set[str]) -> float:
        """MACs in float with exactly the int8 groups ``in_float`` in float, as a share."""
        return (self.float_from_start + sum(self._int8_macs.get(n, 0) for n in in_float)) / self.total

    def size_estimate(self, reverted: set[str]) -> int:
        """The file size with ``reverted`` in float: a float weight takes 4 bytes where int8 took 1."""
        return self.int8_bytes + sum(self.weight_bytes.get(n, 0) for n in reverted) * 3 // 4

    def compute_estimate(self, reverted: set[str]) -> float | None:
        """MAC-bound compute time with ``reverted`` in float, as a share of the fp32 model's: a
        roofline's compute side (memory traffic and per-node costs are left out, so it is a floor)."""
        return self.compute_estimate_at(self.share(reverted))

    def compute_estimate_at(self, float_share: float) -> float | None:
        if not self.int8_speedup:
            return None
        return round(float_share + (1.0 - float_share) / self.int8_speedup, 4)

    def is_free(self, node: str) -> bool:
        """Float costs this node nothing in the MAC budget (LayerNorm, Softmax, Add, an embedding
        Gather...). Those with weights still cost file size, so give-back tries them again."""
        return not self.macs.get(node, 0)

    def costs_size(self, node: str) -> bool:
        return self.weight_bytes.get(node, 0) > _SMALL_WEIGHTS

    def describe(self, node: str) -> dict[str, Any]:
        return {"node": node, "op_type": self.op_of.get(node, "?"), "mac_share": round(self.macs.get(node, 0) / self.total, 4)}


@dataclass
class SearchResult:
    reverted: set[str]
    score: FidelityScore
    steps: list[dict[str, Any]]
    ranking: list[GroupRank]
    budget_left: bool


def weight_bytes(model: onnx.ModelProto, nodes: list[str]) -> dict[str, int]:
    """fp32 bytes of the constant inputs of each node: what reverting it adds to the file, times 4/3."""
    sizes = {t.name: 4 * math.prod(t.dims) for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    return {name: sum(sizes.get(i, 0) for i in by_name[name].input) + sum(4 * math.prod(w.dims) for w in recurrence_weights(by_name[name]))
            for name in nodes if name in by_name}


def revert_free_types(space: SearchSpace, start: FidelityScore, search: EvalSplit, scorer: Scorer, budget: SearchBudget, *,
                      guard: float, first_types: tuple[str, ...] = ()) -> tuple[set[str], FidelityScore, list[dict[str, Any]]]:
    """Try each op type whose nodes carry no MACs (LayerNorm, Softmax, Add, Gather...) in float as a
    whole, ``first_types`` first, keeping those that help: single reverts of such nodes each move
    little, together they often decide a transformer. Returns the reverted nodes, the score with
    them in float, and the steps."""
    reverted: set[str] = set()
    steps: list[dict[str, Any]] = []
    current = start
    free = {g for g in space.groups if space.is_free(g)}
    for op_type in sorted({space.op_of.get(g, "?") for g in free}, key=lambda t: (t not in first_types, t)):
        if current.margin >= guard or not budget.ok():
            break
        nodes = {g for g in free if space.op_of.get(g) == op_type}
        trial = scorer.score(space.qdq.session(reverted | nodes), search)
        budget.spend()
        helped = trial.key() > current.key()
        steps.append(_type_step(space, op_type, nodes, reverted | nodes, trial, helped))
        if helped:
            reverted |= nodes
            current = trial
    rest = free - reverted
    rejected_types = sorted({space.op_of.get(g, "?") for g in rest})
    if len(rejected_types) > 1 and current.margin < guard and budget.ok():
        # Each type alone can move nothing while together they do: in a MobileNetV3-style detector
        # the hard-swish Mul/Clip/Div and the residual Adds each round a little of the same signal.
        trial = scorer.score(space.qdq.session(reverted | rest), search)
        budget.spend()
        helped = trial.key() > current.key()
        steps.append(_type_step(space, "+".join(rejected_types), rest, reverted | rest, trial, helped))
        if helped:
            reverted |= rest
            current = trial
    return reverted, current, steps


def _type_step(space: SearchSpace, op_type: str, nodes: set[str], in_float: set[str], trial: FidelityScore, kept: bool) -> dict[str, Any]:
    return {"reverted_op_type": op_type, "nodes": len(nodes), "kept": kept, "margin": significant(trial.margin),
            "values": trial.to_dict()["values"], "float_mac_share": round(space.share(in_float), 4),
            "size_estimate_bytes": space.size_estimate(in_float), "compute_time_vs_fp32_estimate": space.compute_estimate(in_float)}


def search_fallback(space: SearchSpace, start: FidelityScore, search: EvalSplit, subset: EvalSplit, scorer: Scorer, budget: SearchBudget,
                    progress: Progress, *, guard: float, max_fallback: float, ranking_trials: int,
                    reverted: set[str] | None = None, steps: list[dict[str, Any]] | None = None) -> SearchResult:
    """From ``reverted`` (scored ``start``), revert the worst single group, re-measure, re-rank when
    steps did not help; then give back to int8 any group with MACs or weights the target no longer
    needs."""
    reverted = set(reverted or ())
    rejected: set[str] = set()
    steps = list(steps or [])
    current = start
    qdq, groups, macs, op_of = space.qdq, space.groups, space.macs, space.op_of

    def done(score: FidelityScore) -> bool:
        return score.margin >= guard  # the minimum over samples drops on new samples: aim above the target

    ranking: list[GroupRank] = []

    def record(step: dict[str, Any], nodes: set[str]) -> None:
        steps.append({**step, "float_mac_share": round(space.share(nodes), 4), "size_estimate_bytes": space.size_estimate(nodes),
                      "compute_time_vs_fp32_estimate": space.compute_estimate(nodes)})

    alone: dict[str, FidelityScore | None] = {}  # each group's score alone in int8: tried once, whatever the mix

    def rerank() -> list[GroupRank]:
        remaining = [g for g in groups if g not in reverted and g not in rejected]
        if ranking and (not budget.ok() or all(g in alone for g in remaining)):
            # a score alone does not depend on the mix: with every group tried, the order stands
            return [r for r in ranking if r.node in remaining]
        progress.note(f"int8 search: ranking {len(remaining)} quantized groups")
        budget.spend()  # the proxy's run
        # Ranking may take half of what is left, so reverts have the rest
        deadline = time.perf_counter() + (budget.deadline - time.perf_counter()) / 2
        return rank_groups(qdq, groups, reverted, remaining, subset, scorer, alone, min(ranking_trials, budget.trials_left // 2), op_of,
                           lambda: budget.ok() and time.perf_counter() < deadline, budget.spend)

    if not done(current):
        ranking = rerank()
    full_ranking = list(ranking)
    misses = reranks = 0
    blocks_tried = False

    def try_blocks(singles_follow: bool) -> None:
        nonlocal current
        # The groups rejected one by one first (each moved too little alone: the very ones to
        # combine), in the first ranking's order, then the rest of the current ranking.
        order = list(dict.fromkeys([*(r.node for r in full_ranking if r.node in rejected), *(r.node for r in ranking or full_ranking)]))
        order = [node for node in order if node not in reverted]
        block, block_score, block_steps = revert_blocks(space, order, reverted, current, search, scorer, budget, guard=guard,
                                                        max_fallback=max_fallback)
        kept = bool(block) and worth_it(block_score, current, costly=any(not space.is_free(n) or space.costs_size(n) for n in block))
        if kept and singles_follow and block_score.margin < guard:  # the budget it takes is budget single reverts could use
            kept = pays_its_way(block_score, current, space.share(reverted | block) - space.share(reverted),
                                max_fallback - space.share(reverted), guard)
        for step, nodes in block_steps:
            chosen = kept and step["block_size"] == len(block)
            record({**step, "kept": chosen, "reverted_block": step["reverted_block"] if chosen else None}, nodes)
        if kept:
            reverted.update(block)
            current = block_score

    while not done(current) and budget.ok():
        affordable = [r for r in ranking if r.node not in reverted and r.node not in rejected
                      and space.share(reverted | {r.node}) <= max_fallback + 1e-9]
        if not affordable:
            break
        pick = affordable[0]
        trial = scorer.score(qdq.session(reverted | {pick.node}), search)
        budget.spend()
        helped = worth_it(trial, current, costly=not space.is_free(pick.node) or space.costs_size(pick.node))
        record({"reverted": pick.node, "op_type": pick.op_type, "mac_share": space.describe(pick.node)["mac_share"],
                "kept": helped, "margin": significant(trial.margin), "values": trial.to_dict()["values"]}, reverted | {pick.node})
        if helped:
            reverted.add(pick.node)
            current = trial
            misses = 0
        else:
            rejected.add(pick.node)
            misses += 1
            if misses == MISSES_BEFORE_RERANK and reranks < MAX_RERANKS:  # the ranking has gone stale
                ranking, misses, reranks = rerank(), 0, reranks + 1
            elif reranks >= MAX_RERANKS and misses >= MISSES_BEFORE_BLOCKS and not blocks_tried:
                # Single steps have stalled: try blocks once, then go on down the ranking one by one
                # (a single revert further down can still help, as on a MobileNetV2).
                blocks_tried, misses = True, 0
                try_blocks(singles_follow=True)
    if not done(current) and not blocks_tried and budget.ok():
        try_blocks(singles_follow=False)
    if done(current):  # give back what the target no longer needs, largest first
        costly = (n for n in reverted if not space.is_free(n) or space.costs_size(n))
        for node in sorted(costly, key=lambda n: (-macs.get(n, 0), -space.weight_bytes.get(n, 0))):
            if not budget.ok():
                break
            trial = scorer.score(qdq.session(reverted - {node}), search)
            budget.spend()
            if done(trial):
                reverted.discard(node)
                current = trial
                record({"requantized": node, "op_type": op_of.get(node, "?"), "margin": significant(trial.margin)}, reverted)
    # the report's ranking: every group of the first ranking, with what later rankings measured
    return SearchResult(reverted, current, steps, ranked_by_alone(full_ranking, alone), budget.ok())


def revert_blocks(space: SearchSpace, order: list[str], reverted: set[str], current: FidelityScore, search: EvalSplit, scorer: Scorer,
                  budget: SearchBudget, *, guard: float, max_fallback: float) -> tuple[set[str], FidelityScore, list[tuple[dict[str, Any], set[str]]]]:
    """Revert the first 2, 4, 8 ... groups of ``order`` (most harmful first) together, within the
    MAC budget, until a prefix meets the target with the guard band; then bisect to the smallest
    such prefix (size 1 is taken to miss: single reverts have been tried). Without one, the smallest
    prefix that scores within MIN_STEP_GAIN of the best. About 2*log2(len(order)) trials, where
    single reverts would take one each. Returns the block (empty: none scored above ``current``),
    its score and the steps as (record, float nodes)."""
    affordable: list[str] = []
    for node in order:  # the ranking's order, skipping what would overrun the MAC budget
        if space.share(reverted | set(affordable) | {node}) <= max_fallback + 1e-9:
            affordable.append(node)
    steps: list[tuple[dict[str, Any], set[str]]] = []
    tried: dict[int, FidelityScore] = {}
    if not affordable:
        return set(), current, steps

    def trial(size: int) -> FidelityScore:
        nodes = reverted | set(affordable[:size])
        score = scorer.score(space.qdq.session(nodes), search)
        budget.spend()
        tried[size] = score
        steps.append(({"reverted_block": affordable[:size], "block_size": size, "kept": False,
                       "margin": significant(score.margin), "values": score.to_dict()["values"]}, nodes))
        return score

    size, met_at, below = 2, None, 1
    while size <= len(affordable) * 2 and budget.ok():
        size = min(size, len(affordable))
        if trial(size).margin >= guard:
            met_at = size
            break
        below = size
        if size == len(affordable):
            break
        size *= 2
    while met_at is not None and met_at - below > 1 and budget.ok():  # the smallest prefix that meets it
        middle = (below + met_at) // 2
        if trial(middle).margin >= guard:
            met_at = middle
        else:
            below = middle
    if not tried:
        return set(), current, steps
    chosen = met_at if met_at is not None else smallest_near_best(tried)
    if not tried[chosen].key() > current.key():
        return set(), current, steps
    return set(affordable[:chosen]), tried[chosen], steps


def smallest_near_best(tried: dict[int, FidelityScore]) -> int:
    """Of prefixes by size, none meeting the target: the smallest whose margin is within
    MIN_STEP_GAIN of the best one, so no MACs go float for a gain a smaller block already had."""
    best = max(tried.values(), key=lambda score: score.key())
    return min(size for size, score in tried.items() if score.margin >= best.margin - MIN_STEP_GAIN)


def pays_its_way(trial: FidelityScore, current: FidelityScore, share: float, budget_left: float, guard: float) -> bool:
    """Whether a block short of the target (with its guard band) closes enough of the gap to it for
    the share of the remaining fallback budget it puts in float."""
    if budget_left <= 0:
        return False
    if not math.isfinite(current.margin):  # no finite gap to measure against: any gain pays
        return trial.margin > current.margin
    return trial.margin - current.margin >= BLOCK_PAYBACK * (guard - current.margin) * min(share / budget_left, 1.0)


def worth_it(trial: FidelityScore, current: FidelityScore, *, costly: bool) -> bool:
    """Whether a revert earns its place: any gain for a free node, a real one for a costly node."""
    if not trial.key() > current.key():
        return False
    if not costly or (trial.met and not current.met):  # the step that meets the target is always worth it
        return True
    gain = trial.margin - current.margin
    sqnr_gain = (trial.values.get("sqnr_db") or 0.0) - (current.values.get("sqnr_db") or 0.0)
    return gain >= MIN_STEP_GAIN or (gain >= 0 and sqnr_gain >= MIN_SQNR_GAIN_DB)


def significant(value: float | None) -> float | None:
    """Four significant digits for the report; None for a value JSON cannot hold."""
    return None if value is None or not math.isfinite(value) else float(f"{value:.4g}")
