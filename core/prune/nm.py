"""N:M semi-structured pruning: in every group of M consecutive weights along the input
dimension, the N largest |w| are kept (2:4 by default).

Groups run along the input channels: the last dim of a Linear weight (out, in), dim 1 of
a Conv weight (out, in, *kernel) at each output channel and kernel position, the layout
GPU sparse kernels (and NVIDIA's ASP) use. A layer whose input dimension is not a
multiple of M is left alone and named in the details. Masks stay fixed while fine-tuning.
"""

from __future__ import annotations

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
from core.prune.report import SEMI_STRUCTURED_NOTE
from core.prune.training import FineTuner
from core.prune.unstructured import magnitude
from core.spec import SemiStructuredPrune

if TYPE_CHECKING:
    import torch
    from torch import fx


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n highest scores of every m consecutive entries along dim 1 (the input
    dimension); dim 1 must be a multiple of m."""
    import torch

    grouped = scores.movedim(1, -1)  # (out, *kernel, in)
    shape = grouped.shape
    groups = grouped.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    return keep.reshape(shape).movedim(-1, 1)


def groupable(weight: torch.Tensor, m: int) -> bool:
    return weight.dim() >= 2 and weight.shape[1] % m == 0


@register_kind("n_m")
def prune_n_m(
    module: fx.GraphModule, config: SemiStructuredPrune, tuner: FineTuner, ctx: RunContext
) -> KindResult:
    """N:M masks on every prunable layer not skipped, then fine-tuning with them fixed."""
    if config.n >= config.m:
        raise InputError(
            f"n_m pruning keeps n of every m weights: n ({config.n}) must be below m ({config.m})",
            code="invalid_spec",
        )
    if config.layer_sparsity:
        raise InputError(
            "n_m pruning has one sparsity, 1 - n/m: layer_sparsity does not apply",
            code="invalid_spec",
        )
    layers = prunable_layers(module)
    names = list(layers)
    skipped = default_skipped(names) if config.skip_layers is None else config.skip_layers
    check_layer_names(skipped, names, "skip_layers")
    chosen = [name for name in names if name not in skipped]
    not_groupable = [name for name in chosen if not groupable(layer_weight(layers[name]), config.m)]
    masks: Masks = {
        name: nm_mask(magnitude(layer_weight(layers[name])), config.n, config.m)
        for name in chosen
        if name not in not_groupable
    }
    apply_masks(layers, masks)
    history = tuner.run(module, lambda step: apply_masks(layers, masks), label="prune fine-tune")
    pattern = f"{config.n}:{config.m}"
    return KindResult(
        module=module,
        details={
            "pattern": pattern,
            "sparsity": 1.0 - config.n / config.m,
            "layers_not_divisible_by_m": not_groupable,
        },
        target_sparsity={name: 1.0 - config.n / config.m for name in masks},
        fine_tune_history=history,
        notes=[SEMI_STRUCTURED_NOTE.replace("2:4", pattern, 1)],
    )
