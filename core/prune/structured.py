"""Structured (channel/filter) pruning with torch-pruning on the bridge's GraphModule.

Four parts, each swappable, as in VainF/Torch-Pruning:
- the graph: torch-pruning's DependencyGraph, traced inside its pruner from the module
  and example inputs; it couples every layer whose channels must shrink together
  (residual Adds, depthwise convs, BatchNorm, Flatten into a Linear) into one group;
- the importance: `make_importance` (L1/L2 weight magnitude, or first-order Taylor
  |w * dL/dw| from a backward pass on a few training batches with the task loss);
- the pruning action: torch-pruning's pruner removing the least important channels of
  each group, at `sparsity` per layer (local) or on average across layers (global), with
  per-layer overrides (`layer_sparsity`) and ignored layers (`skip_layers`);
- the schedule: `iterations` equal rounds, fine-tuning between rounds when given a
  fine-tune callable (the final fine-tune after the last round is the caller's).

Channels removed are removed physically: the exported ONNX Conv/Gemm weights are smaller,
which is where the speed comes from.

onnx2torch rebuilds attention from its ONNX ops (MatMul, Softmax, Reshape), never as
`nn.MultiheadAttention`, so torch-pruning cannot see heads in converted models. With
`head_sparsity` > 0 the prune step removes heads before conversion, by ONNX graph surgery
(core.prune.heads): this kind gets the head-pruned module, prunes its channels (when
`sparsity` or `layer_sparsity` asks for it) and fine-tunes it like any other. Modules
holding real `nn.MultiheadAttention` layers also get their heads pruned by torch-pruning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core.context import RunContext
from core.data import model_feeds
from core.errors import IncompatibleData, UnsupportedModel, short_reason
from core.prune.kinds import KindResult, register_kind
from core.prune.training import FineTuner
from core.registry import StepData
from core.spec import StructuredPrune

if TYPE_CHECKING:
    import torch
    from torch import fx, nn

ImportanceName = Literal["l1", "l2", "taylor"]
# Called with the module between pruning rounds; trains it in place (result ignored).
FineTuneFn = Callable[["nn.Module"], object]

# Taylor importance: gradients accumulated over this many training batches of this size.
TAYLOR_BATCHES = 4
TAYLOR_BATCH_SIZE = 64
# Rows of the eval data that trace the dependency graph and count MACs.
EXAMPLE_ROWS = 2


def make_importance(name: ImportanceName) -> Any:
    """The torch-pruning importance criterion for a config's `importance`."""
    import torch_pruning as tp

    if name == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.MagnitudeImportance(p=1 if name == "l1" else 2)


def prunable_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Conv and Linear layers by module name, in definition order: what has channels."""
    from torch import nn

    return {
        name: layer
        for name, layer in module.named_modules()
        if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
    }


def output_channels(layer: nn.Module) -> int:
    """Out channels of a Conv, out features of a Linear."""
    from torch import nn

    if isinstance(layer, nn.Linear):
        return int(layer.out_features)
    return int(layer.out_channels)  # type: ignore[arg-type]


def ignored_layers(module: nn.Module, skip_layers: list[str] | None) -> list[str]:
    """Layers whose output channels are kept: `skip_layers`, or by default the last
    Conv/Linear (the model's outputs, e.g. its classes). The first layer's input channels
    are the model's inputs and are never pruned (torch-pruning never prunes inputs)."""
    layers = prunable_layers(module)
    if skip_layers is None:
        return list(layers)[-1:]
    _check_names(skip_layers, layers, "skip_layers")
    return list(skip_layers)


def build_pruner(
    module: nn.Module,
    config: StructuredPrune,
    example_inputs: Mapping[str, torch.Tensor],
    *,
    importance: Any | None = None,
) -> Any:
    """torch-pruning's pruner for `config` on `module` (the dependency graph is traced
    here from `example_inputs`, keyed by model input in the graph's input order)."""
    import torch_pruning as tp
    from torch import nn

    layers = prunable_layers(module)
    _check_names(list(config.layer_sparsity), layers, "layer_sparsity")
    ignored = [layers[name] for name in ignored_layers(module, config.skip_layers)]
    heads = {
        layer: int(layer.num_heads)
        for layer in module.modules()
        if isinstance(layer, nn.MultiheadAttention)
    }
    return tp.pruner.BasePruner(
        module,
        tuple(example_inputs.values()),
        importance=importance if importance is not None else make_importance(config.importance),
        pruning_ratio=config.sparsity,
        pruning_ratio_dict={layers[name]: ratio for name, ratio in config.layer_sparsity.items()},
        global_pruning=config.scope == "global",
        iterative_steps=config.iterations,
        ignored_layers=ignored,
        num_heads=heads,
        prune_num_heads=bool(heads),
        prune_head_dims=False,
        head_pruning_ratio=config.sparsity,
    )


def count_macs_and_params(
    module: nn.Module, example_inputs: Mapping[str, torch.Tensor]
) -> tuple[int, int]:
    """MACs of one forward pass on `example_inputs` and the parameter count
    (torch-pruning's counter)."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(module, tuple(example_inputs.values()))
    return int(macs), int(params)


def prune_structured(
    module: nn.Module,
    config: StructuredPrune,
    example_inputs: dict[str, torch.Tensor],
    data: StepData,
    ctx: RunContext,
    fine_tune: FineTuneFn | None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove channels from `module` in place (and return it) as `config` says.

    `example_inputs` (one small batch, keyed by model input in the graph's input order)
    trace the dependency graph and count MACs. `fine_tune`, when given, trains the module
    between rounds (`config.iterations` > 1). Taylor importance needs the job's training
    data with labels (classification). Returns the module and the report (see
    `prune_channels`).
    """
    gradients = None
    if config.importance == "taylor":
        arrays = data.require_train_arrays("structured pruning with taylor importance")
        labels = arrays.get(data.task.labels)
        if data.task.kind != "classification" or labels is None:
            raise IncompatibleData(
                "taylor importance needs a classification task whose training data has "
                f"labels ({data.task.labels!r}); use importance l1 or l2"
            )
        feeds = model_feeds(arrays, data.inputs, data.task)
        gradients = taylor_gradients(
            module, [feeds[t.name] for t in data.inputs], labels, ctx.seed, ctx
        )
    return prune_channels(module, config, example_inputs, ctx, fine_tune, gradients)


def module_device(module: nn.Module) -> torch.device:
    """Where the module's parameters are (the CPU for a module without any)."""
    import torch

    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def on_device(tensors: Mapping[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """The example inputs on the module's device: on a CUDA job the fine-tuning between
    rounds leaves the module on the GPU while the examples were made on the CPU."""
    device = module_device(module)
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def prune_channels(
    module: nn.Module,
    config: StructuredPrune,
    example_inputs: Mapping[str, torch.Tensor],
    ctx: RunContext,
    fine_tune: FineTuneFn | None = None,
    accumulate_gradients: Callable[[], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The schedule: `config.iterations` rounds of the pruner's step, gradients
    accumulated before each (Taylor), `fine_tune` between rounds. Returns the module and
    the report: output channels per layer [before, after], parameters and MACs
    before/after (torch-pruning's counter), the removed-channel fraction."""
    if config.importance == "taylor" and accumulate_gradients is None:
        raise IncompatibleData("taylor importance needs training data with labels")
    layers_before = {
        name: output_channels(layer) for name, layer in prunable_layers(module).items()
    }
    macs_before, params_before = count_macs_and_params(module, on_device(example_inputs, module))
    shapes_before = output_shapes(module, on_device(example_inputs, module))
    pruner = build_pruner(module, config, on_device(example_inputs, module))
    for round_index in range(1, config.iterations + 1):
        ctx.check_cancelled()
        if accumulate_gradients is not None:
            accumulate_gradients()
        pruner.step()
        if accumulate_gradients is not None:
            module.zero_grad(set_to_none=True)
        ctx.report_step(
            round_index / (config.iterations + 1),
            f"structured pruning round {round_index}/{config.iterations}",
        )
        if fine_tune is not None and round_index < config.iterations:
            fine_tune(module)
    module.eval()
    check_runs_after_pruning(module, on_device(example_inputs, module), shapes_before)
    macs_after, params_after = count_macs_and_params(module, on_device(example_inputs, module))
    layers_after = {name: output_channels(layer) for name, layer in prunable_layers(module).items()}
    channels = {name: [before, layers_after.get(name, 0)] for name, before in layers_before.items()}
    total_before = sum(before for before, _ in channels.values())
    total_after = sum(after for _, after in channels.values())
    return module, {
        "importance": config.importance,
        "scope": config.scope,
        "sparsity": config.sparsity,
        "iterations": config.iterations,
        "ignored_layers": ignored_layers(module, config.skip_layers),
        "layer_sparsity": dict(config.layer_sparsity),
        "channels": channels,
        "removed_channel_fraction": 1.0 - total_after / total_before if total_before else 0.0,
        "torch_parameters": {"before": params_before, "after": params_after},
        "macs": {
            "before": macs_before,
            "after": macs_after,
            "reduction": macs_before / macs_after if macs_after else math.inf,
        },
        "attention_heads_pruned": bool(pruner.num_heads),
    }


def output_shapes(
    module: nn.Module, example_inputs: Mapping[str, torch.Tensor]
) -> list[tuple[int, ...]]:
    """The shapes of the module's outputs on `example_inputs`."""
    import torch

    with torch.no_grad():
        outputs = module(*example_inputs.values())
    values = outputs if isinstance(outputs, tuple | list) else (outputs,)
    return [tuple(value.shape) for value in values]


def check_runs_after_pruning(
    module: nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    shapes_before: list[tuple[int, ...]],
) -> None:
    """Raise UnsupportedModel (code "channel_dependency_untraced") when the pruned module
    fails on the example inputs (naming the first node that fails) or gives outputs of
    other shapes than before: torch-pruning did not see that an op depends on the pruned
    channels (a reshape to a constant width, an add of a constant vector of the old
    width, an op it has no rule for), so the pruned graph no longer computes the same
    thing (a reshape to a constant width can even fold the batch away silently)."""
    from torch import fx

    try:
        shapes_after = output_shapes(module, example_inputs)
    except Exception as exc:
        where = ""
        if isinstance(module, fx.GraphModule):
            where = _failing_node(module, tuple(example_inputs.values()))
        raise _untraced(f"structured pruning broke the graph{where}: {short_reason(exc)}") from exc
    if shapes_after != shapes_before:
        raise _untraced(
            f"structured pruning changed the model's output shapes from {shapes_before} to "
            f"{shapes_after}"
        )


def _untraced(what: str) -> UnsupportedModel:
    return UnsupportedModel(
        f"{what}. torch-pruning could not follow the removed channels through an op that "
        "still expects the old width; use kind unstructured or n_m, or keep the layers "
        "before it out of pruning (skip_layers)",
        code="channel_dependency_untraced",
    )


def _failing_node(module: fx.GraphModule, args: tuple[Any, ...]) -> str:
    """" at node 'X' (Kind)" for the first fx node that raises, run node by node."""
    import torch
    from torch import fx

    failed: list[fx.Node] = []

    class Tracer(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            try:
                return super().run_node(n)
            except Exception:
                failed.append(n)
                raise

    try:
        with torch.no_grad():
            Tracer(module).run(*args)
    except Exception:
        pass
    if not failed:
        return ""
    node = failed[0]
    if node.op == "call_module":
        kind = type(module.get_submodule(str(node.target))).__name__
    else:
        kind = getattr(node.target, "__name__", str(node.target))
    return f" at node {node.name!r} ({kind})"


def taylor_gradients(
    module: nn.Module,
    inputs: list[np.ndarray],
    labels: np.ndarray,
    seed: int,
    ctx: RunContext | None = None,
) -> Callable[[], None]:
    """A function accumulating the cross-entropy loss's gradients on a few training
    batches (`inputs` in the graph's input order, integer `labels`) into the module's
    parameters: what TaylorImportance reads (|w * dL/dw|)."""
    import torch

    targets = labels.reshape(-1).astype(np.int64)
    rows = len(targets)
    chosen = np.random.default_rng(seed).permutation(rows)[: TAYLOR_BATCHES * TAYLOR_BATCH_SIZE]

    def accumulate() -> None:
        module.zero_grad(set_to_none=True)
        module.eval()  # the model as it runs: BatchNorm statistics stay frozen
        for batch in _chunks(chosen, TAYLOR_BATCH_SIZE):
            if ctx is not None:
                ctx.check_cancelled()
            # on the module's device: fine-tuning between rounds moves it (ctx.device)
            device = module_device(module)
            outputs = module(*(torch.from_numpy(array[batch]).to(device) for array in inputs))
            logits = outputs[0] if isinstance(outputs, tuple | list) else outputs
            truth = torch.from_numpy(targets[batch]).to(device)
            loss = torch.nn.functional.cross_entropy(logits, truth)
            loss.backward()

    return accumulate


@register_kind("structured")
def structured_kind(
    module: fx.GraphModule, config: StructuredPrune, tuner: FineTuner, ctx: RunContext
) -> KindResult:
    """The prune step's "structured" kind: prune channels in `config.iterations` rounds
    with the step's fine-tuner between rounds and once after the last. With
    `config.head_sparsity` > 0 the step removed heads already; channels are pruned only
    when asked for (`sparsity`, `layer_sparsity`), else the module is fine-tuned as is."""
    import torch

    example_inputs = {
        t.name: torch.from_numpy(tuner.evaluation.feeds[t.name][:EXAMPLE_ROWS])
        for t in tuner.inputs
    }
    gradients = None
    if config.importance == "taylor":
        training = tuner.training
        if training is None or training.loss != "cross_entropy":
            raise IncompatibleData(
                "taylor importance needs fine-tuning data with class labels "
                "(a classification task, labels in the training data, fine_tune.epochs > 0)"
            )
        gradients = taylor_gradients(
            module, [training.feeds[t.name] for t in tuner.inputs], training.targets, ctx.seed, ctx
        )
    history: list[dict[str, Any]] = []

    def fine_tune(pruned: nn.Module) -> None:
        history.extend(tuner.run(pruned, label="structured fine-tune"))

    pruned: nn.Module = module
    details: dict[str, Any] = {}
    targets: dict[str, float] = {}
    # heads alone: channel pruning at sparsity 0 would only trace the graph
    prunes_channels = (
        config.head_sparsity == 0 or config.sparsity > 0 or bool(config.layer_sparsity)
    )
    if prunes_channels:
        pruned, details = prune_channels(module, config, example_inputs, ctx, fine_tune, gradients)
        targets = {
            name: config.layer_sparsity.get(name, config.sparsity)
            for name in prunable_layers(pruned)
            if name not in details["ignored_layers"]
        }
    fine_tune(pruned)
    notes = []
    heads_left = config.head_sparsity == 0 and not details["attention_heads_pruned"]
    if heads_left and _has_attention_ops(module):
        notes.append(
            "attention heads were not pruned: onnx2torch rebuilds attention from MatMul/"
            "Softmax ops, not as nn.MultiheadAttention; set head_sparsity to remove heads"
        )
    return KindResult(
        module=pruned.eval(),
        details=details,
        target_sparsity=targets,
        fine_tune_history=history,
        notes=notes,
        structure_kept=not prunes_channels,
    )


def _has_attention_ops(module: nn.Module) -> bool:
    """Softmax and MatMul between activations: attention as onnx2torch rebuilds it."""
    kinds = {type(layer).__name__ for layer in module.modules()}
    return any("Softmax" in kind for kind in kinds) and "OnnxMatMul" in kinds


def _chunks(indices: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _check_names(names: list[str], layers: Mapping[str, Any], field: str) -> None:
    unknown = [name for name in names if name not in layers]
    if unknown:
        raise IncompatibleData(
            f"{field} names layers the model does not have: {unknown}; its Conv/Linear "
            f"layers are {list(layers)}"
        )
