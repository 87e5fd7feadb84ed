"""The graph side of pruning: which weights are prunable, and masks that keep them zero.

Prunable layers are the `nn.Conv*` and `nn.Linear` modules of the GraphModule that
onnx2torch builds, named by their module path (e.g. "features/features/0/Conv").

Masks are plain boolean tensors (True = kept) multiplied into the weights in place,
and re-applied after every optimizer step, rather than torch.nn.utils.prune. Why:
- torch.nn.utils.prune reparametrizes `weight` as `weight_orig * weight_mask` through a
  forward pre-hook; torch.export would capture that product and every consumer of the
  module (export, the structured kind, sensitivity sweeps) would see `weight_orig`
  instead of `weight` until `prune.remove` is called at the right moment.
- Schedules recompute masks many times from the current weights; torch's
  PruningContainer composes successive masks instead, which is not the semantics
  (TF-MOT's) wanted here.
- Multiplying after each step makes pruned weights exactly 0.0 in the exported ONNX
  even when Adam's moments or weight decay would move them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from core.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

# Module name -> boolean mask shaped like that module's weight (True: kept).
Masks = dict[str, "torch.Tensor"]


def prunable_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Conv and Linear modules by name, in the module's (graph) order."""
    from torch import nn

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return {name: layer for name, layer in module.named_modules() if isinstance(layer, kinds)}


def default_skipped(names: list[str]) -> list[str]:
    """The first and the last prunable layer: the input's features and the output's
    logits are the most sensitive to pruning (and usually the smallest layers)."""
    return list(dict.fromkeys([names[0], names[-1]])) if names else []


def check_layer_names(given: Iterable[str], known: Iterable[str], field: str) -> None:
    """InputError naming the unknown layers in `field` and the known ones."""
    known_names = list(known)
    unknown = [name for name in given if name not in known_names]
    if unknown:
        raise InputError(
            f"{field}: no prunable layer named {unknown}; prunable layers: {known_names}",
            code="invalid_spec",
        )


def layer_weight(layer: nn.Module) -> torch.Tensor:
    """The weight of a prunable layer (a Parameter)."""
    import torch

    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def apply_masks(layers: Mapping[str, nn.Module], masks: Masks) -> None:
    """Zero every masked-out weight in place (no autograd history)."""
    import torch

    with torch.no_grad():
        for name, mask in masks.items():
            weight = layer_weight(layers[name])
            weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


def mask_sparsity(mask: torch.Tensor) -> float:
    """The fraction of weights the mask removes."""
    return 1.0 - float(mask.float().mean())
