"""A pipeline is an ordered list of pass configs; running it threads one artifact through them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeport import step_cache
from edgeport.passes import pass_info, run_pass
from edgeport.passes.context import PassContext, config_to_dict


@dataclass
class Pipeline:
    steps: list[Any] = field(default_factory=list)
    use_cache: bool = True

    def run(self, artifact: Any, ctx: PassContext) -> Any:
        for config in self.steps:
            label = pass_info(config).label
            key = step_cache.step_key(artifact, config, ctx) if self.use_cache else None
            cached = step_cache.load(key, artifact, ctx) if key else None
            if cached is not None:
                ctx.progress.note(f"{label}: unchanged, taken from the cache")
                artifact = cached
                continue
            ctx.progress.note(label + " ...")
            artifact = run_pass(artifact, config, ctx)
            if key:
                step_cache.store(key, artifact, ctx.records[-1], ctx)
        return artifact

    def describe(self) -> list[dict[str, Any]]:
        """The resolved recipe: each step's pass and full config, for the manifest."""
        return [{"pass": type(c).__name__, "config": config_to_dict(c)} for c in self.steps]
