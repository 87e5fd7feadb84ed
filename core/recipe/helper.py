"""A helper's part in an auto recipe fanned out to other workers (AutoStep.parallel_workers).

The job's runner asks for helpers under the recipe's name as its recipe starts; a helper
(worker.search_helper sends it into the engine with kind "recipe") prepares the job's
data exactly as the pipeline does (core.pipeline.prepare: the same eval split, the same
reference outputs), builds the same recipe and produces the short rounds nobody has
claimed, recording each in the job's candidate store (core.recipe.step.Recipe.help).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core.context import RunContext
from core.pipeline import prepare
from core.recipe.step import recipe_for
from core.spec import AutoStep, JobSpec


def join_recipe(
    model_path: Path, datasets: dict[str, Path], spec: JobSpec, name: str, ctx: RunContext
) -> int:
    """Produce short rounds of the recipe `name` of the job whose uploaded model is
    `model_path`; returns how many were produced here (0 when the job's first step is not
    that recipe, or it does not fan out)."""
    step = spec.steps[0] if spec.steps else None
    if not isinstance(step, AutoStep) or step.parallel_workers < 2:
        return 0
    prepared = prepare(model_path, datasets, spec, ctx)
    step_ctx = dataclasses.replace(prepared.ctx, work_dir=ctx.work_dir / "recipe")
    recipe = recipe_for(model_path, step, prepared.data, step_ctx)
    if recipe.recipe != name:
        return 0
    return recipe.help()
