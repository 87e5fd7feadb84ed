"""Unstructured magnitude pruning: the smallest |w| of each Conv/Linear weight are zeroed.

Importance is I(w) = |w| (`magnitude`); `select_masks` turns scores into masks for exact
sparsities (a global ranking across layers, or per layer); the schedule (one-shot or
polynomial, core.prune.schedule) says when and how much; masks stay fixed between
schedule points and after the last one while fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.context import RunContext
from core.errors import InputError
from core.prune.kinds import KindResult, register_kind
from core.prune.masks import (
    Masks,
    apply_masks,
    check_layer_names,
    default_skipped,
    layer_weight,
    prunable_layers,
)
from core.prune.report import UNSTRUCTURED_NOTE
from core.prune.schedule import OneShot, PolynomialDecay, SparsitySchedule
from core.prune.training import FineTuner
from core.spec import UnstructuredPrune

if TYPE_CHECKING:
    import torch
    from torch import fx, nn


@dataclass(frozen=True)
class LayerPlan:
    """Which layers are pruned to what final sparsity: `ranked_together` share one
    magnitude ranking (global scope) at `shared_sparsity`; `per_layer` are pruned alone."""

    ranked_together: list[str]
    shared_sparsity: float
    per_layer: dict[str, float]

    @property
    def targets(self) -> dict[str, float]:
        return {name: self.shared_sparsity for name in self.ranked_together} | self.per_layer


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """Importance of each weight: its absolute value."""
    return weight.detach().abs()


def layer_plan(config: UnstructuredPrune, names: list[str]) -> LayerPlan:
    """Skipped layers (default: first and last) get nothing, layer_sparsity overrides
    (which win over skipping) are pruned alone, the rest by `config.scope`."""
    skipped = default_skipped(names) if config.skip_layers is None else config.skip_layers
    check_layer_names(skipped, names, "skip_layers")
    check_layer_names(config.layer_sparsity, names, "layer_sparsity")
    bad = {name: s for name, s in config.layer_sparsity.items() if not 0.0 <= s < 1.0}
    if bad:
        raise InputError(f"layer_sparsity must lie in [0, 1): {bad}", code="invalid_spec")
    rest = [name for name in names if name not in skipped and name not in config.layer_sparsity]
    if config.scope == "global":
        return LayerPlan(rest, config.sparsity, dict(config.layer_sparsity))
    # local scope: every layer its own ranking at the same ratio
    local = {name: config.sparsity for name in rest} | dict(config.layer_sparsity)
    return LayerPlan([], config.sparsity, local)


def local_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the round(sparsity * n) lowest-scored entries (ties by position)."""
    return global_masks({"layer": scores}, sparsity)["layer"]


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> Masks:
    """One ranking over all `scores`: exactly round(sparsity * total) entries removed."""
    import torch

    if not scores:
        return {}
    flat = torch.cat([score.reshape(-1).float().cpu() for score in scores.values()])
    pruned_count = round(sparsity * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if pruned_count:
        keep[torch.argsort(flat, stable=True)[:pruned_count]] = False
    masks: Masks = {}
    offset = 0
    for name, score in scores.items():
        masks[name] = keep[offset : offset + score.numel()].reshape(score.shape)
        offset += score.numel()
    return masks


def select_masks(
    layers: dict[str, nn.Module], plan: LayerPlan, schedule: SparsitySchedule, step: int
) -> Masks:
    """Masks for `step` of the schedule from the layers' current magnitudes."""
    together = {name: magnitude(layer_weight(layers[name])) for name in plan.ranked_together}
    masks = global_masks(together, schedule.sparsity(step, plan.shared_sparsity))
    for name, final in plan.per_layer.items():
        masks[name] = local_mask(
            magnitude(layer_weight(layers[name])), schedule.sparsity(step, final)
        )
    return masks


def make_schedule(config: UnstructuredPrune, total_steps: int) -> SparsitySchedule:
    """One-shot, or PolynomialDecay over the fine-tuning's optimizer steps (end_step
    defaults to the last one)."""
    if config.schedule == "one_shot":
        return OneShot()
    if total_steps == 0:
        raise InputError(
            "a polynomial schedule prunes while fine-tuning: set fine_tune.epochs > 0",
            code="invalid_spec",
        )
    end_step = config.end_step if config.end_step is not None else total_steps
    if end_step > total_steps:
        raise InputError(
            f"end_step {end_step} lies past the last optimizer step of fine-tuning "
            f"({total_steps}): the final sparsity would never be reached",
            code="invalid_spec",
        )
    return PolynomialDecay(
        initial_sparsity=config.initial_sparsity,
        begin_step=config.begin_step,
        end_step=end_step,
        frequency=config.frequency,
        power=config.power,
    )


@register_kind("unstructured")
def prune_unstructured(
    module: fx.GraphModule, config: UnstructuredPrune, tuner: FineTuner, ctx: RunContext
) -> KindResult:
    """Magnitude-prune the Conv/Linear weights on the schedule, fine-tuning with the
    masks re-applied after every optimizer step."""
    layers = prunable_layers(module)
    plan = layer_plan(config, list(layers))
    schedule = make_schedule(config, tuner.total_steps)
    masks: Masks = {}
    pruned_at: list[int] = []

    def prune_at(step: int) -> None:
        if schedule.is_pruning_step(step):
            masks.update(select_masks(layers, plan, schedule, step))
            pruned_at.append(step)
        apply_masks(layers, masks)

    prune_at(0)
    history = tuner.run(module, prune_at, label="prune fine-tune")
    schedule_details: dict[str, object] = {"schedule": config.schedule}
    if isinstance(schedule, PolynomialDecay):
        schedule_details |= {
            "initial_sparsity": schedule.initial_sparsity,
            "begin_step": schedule.begin_step,
            "end_step": schedule.end_step,
            "frequency": schedule.frequency,
            "power": schedule.power,
        }
    schedule_details["pruning_steps"] = len(pruned_at)
    return KindResult(
        module=module,
        details={"scope": config.scope, "sparsity": config.sparsity, **schedule_details},
        target_sparsity=plan.targets,
        fine_tune_history=history,
        notes=[UNSTRUCTURED_NOTE],
    )
