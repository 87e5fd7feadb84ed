"""Sensitivity analysis (Distiller's): prune each layer alone over a sparsity sweep,
measure the metric, restore; optionally derive per-layer ratios from the curves.

The pruning action is a parameter: `structured_action` removes a layer's channels with
torch-pruning (its dependency group shrinks with it), `magnitude_mask_action` zeroes a
layer's smallest weights (unstructured). Each point prunes a fresh copy of the module,
so the original is never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from core.context import RunContext
from core.measure import score
from core.prune.structured import build_pruner
from core.registry import StepData
from core.spec import PruneSensitivity, StructuredPrune

if TYPE_CHECKING:
    import torch
    from torch import nn

# Prunes the named layer of the module, in place, at the given sparsity.
PruneAction = Callable[["nn.Module", str, float], None]
# The task metric of a module (higher is better).
Evaluate = Callable[["nn.Module"], float]
Curves = dict[str, list[tuple[float, float]]]

# Rows of the eval data the sweep measures on (it evaluates layers x sparsities models).
DEFAULT_EVAL_ROWS = 512


def structured_action(
    example_inputs: Mapping[str, torch.Tensor], importance: str = "l1"
) -> PruneAction:
    """Remove `sparsity` of a layer's output channels (and the channels coupled to them)
    with torch-pruning, every other layer left as it is."""

    def action(module: nn.Module, layer: str, sparsity: float) -> None:
        config = StructuredPrune(
            method="prune",
            kind="structured",
            sparsity=0.0,
            importance="l2" if importance == "l2" else "l1",
            layer_sparsity={layer: sparsity},
            skip_layers=[],
        )
        build_pruner(module, config, example_inputs).step()

    return action


def magnitude_mask_action(module: nn.Module, layer: str, sparsity: float) -> None:
    """Zero the `sparsity` fraction of the layer's weights smallest in magnitude."""
    import torch

    weight = module.get_submodule(layer).weight
    assert isinstance(weight, torch.Tensor)
    count = round(sparsity * weight.numel())
    if count == 0:
        return
    with torch.no_grad():
        threshold = weight.abs().flatten().kthvalue(count).values
        weight.mul_((weight.abs() > threshold).to(weight.dtype))


def sensitivity_curves(
    module: nn.Module,
    layers: list[str],
    sparsities: list[float],
    action: PruneAction,
    evaluate: Evaluate,
    ctx: RunContext | None = None,
) -> Curves:
    """{layer: [(sparsity, metric)]}: each layer pruned alone on a copy of `module`."""
    curves: Curves = {}
    total = max(len(layers) * len(sparsities), 1)
    for layer_index, layer in enumerate(layers):
        points = []
        for sparsity_index, sparsity in enumerate(sorted(sparsities)):
            if ctx is not None:
                ctx.report_step(
                    (layer_index * len(sparsities) + sparsity_index) / total,
                    f"sensitivity {layer} at {sparsity:.2f}",
                )
            pruned = copy.deepcopy(module)
            action(pruned, layer, sparsity)
            points.append((float(sparsity), float(evaluate(pruned))))
        curves[layer] = points
    return curves


def derive_layer_ratios(
    curves: Curves, baseline: float, max_metric_drop: float
) -> dict[str, float]:
    """Per layer, the largest sparsity whose metric stays within `max_metric_drop` of
    `baseline`, every smaller sparsity in the sweep included (0.0 when none does)."""
    ratios: dict[str, float] = {}
    for layer, points in curves.items():
        ratio = 0.0
        for sparsity, metric in sorted(points):
            if baseline - metric > max_metric_drop:
                break
            ratio = sparsity
        ratios[layer] = ratio
    return ratios


def torch_evaluator(data: StepData, rows: int | None = DEFAULT_EVAL_ROWS) -> Evaluate:
    """The job's metric of a torch module on (the first `rows` of) the eval data, against
    its labels or the original model's outputs (`data.reference_outputs`)."""
    import torch

    feeds = data.eval_feeds(rows)
    labels = data.eval_arrays.get(data.task.labels) if data.task.kind != "embedding" else None
    if labels is not None and rows is not None:
        labels = labels[:rows]
    reference = data.reference_outputs
    if reference is not None and rows is not None:
        reference = reference[:rows]

    def evaluate(module: nn.Module) -> float:
        module.eval()
        with torch.no_grad():
            outputs = module(*(torch.from_numpy(feeds[t.name]) for t in data.inputs))
        first = outputs[0] if isinstance(outputs, tuple | list) else outputs
        array = first.detach().cpu().numpy()
        return score(data.task, array, labels, reference if reference is not None else array)[1]

    return evaluate


def run_sensitivity(
    module: nn.Module,
    config: PruneSensitivity,
    layers: list[str],
    action: PruneAction,
    evaluate: Evaluate,
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    """The sweep for the job's details: baseline metric, curves, and with
    `derive_layer_ratios` the derived per-layer sparsities (a `layer_sparsity` dict)."""
    baseline = float(evaluate(copy.deepcopy(module)))
    curves = sensitivity_curves(module, layers, config.sparsities, action, evaluate, ctx)
    details: dict[str, Any] = {
        "baseline_metric": baseline,
        "curves": {layer: [list(point) for point in points] for layer, points in curves.items()},
    }
    if config.derive_layer_ratios:
        details["layer_sparsity"] = derive_layer_ratios(curves, baseline, config.max_metric_drop)
        details["max_metric_drop"] = config.max_metric_drop
    return details
