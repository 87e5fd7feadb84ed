"""The "prune" step: convert to torch once, run the kind, export, validate, report.

A kind is `(module, config, tuner, ctx) -> KindResult`: it prunes the GraphModule (in
place or by returning a new module) and fine-tunes it through `tuner` as its method
needs (once after pruning, with a schedule acting every optimizer step, or between
rounds). Adding a kind means one module with `@register_kind` and its config in
core.spec; the step itself dispatches on `config.kind`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from core.context import RunContext
from core.errors import EngineError, StepFailed, UnsupportedModel, short_reason
from core.formats import inspect_model
from core.prune.report import prune_report
from core.prune.training import FineTuner
from core.quantize.common import validate_runs
from core.registry import StepData, StepOutput, register_step
from core.spec import PruneConfig

if TYPE_CHECKING:
    from torch import fx, nn

# Op types that mark an already quantized model: onnx2torch cannot train those.
_QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulNBits")


@dataclass
class KindResult:
    """What a kind hands back: the pruned (fine-tuned) module and its facts."""

    module: nn.Module
    details: dict[str, Any] = field(default_factory=dict)
    # the sparsity each pruned layer was configured to reach, by module name
    target_sparsity: dict[str, float] = field(default_factory=dict)
    fine_tune_history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


KindFn = Callable[["fx.GraphModule", Any, FineTuner, RunContext], KindResult]
F = TypeVar("F", bound=KindFn)

_KINDS: dict[str, KindFn] = {}


def register_kind(name: str) -> Callable[[F], F]:
    def decorator(function: F) -> F:
        if name in _KINDS and _KINDS[name] is not function:
            raise ValueError(f"pruning kind {name!r} is already registered")
        _KINDS[name] = function
        return function

    return decorator


def get_kind(name: str) -> KindFn:
    try:
        return _KINDS[name]
    except KeyError:
        raise EngineError(
            f"no pruning kind {name!r} is registered; known: {sorted(_KINDS)}",
            code="unknown_method",
        ) from None


def registered_kinds() -> list[str]:
    return sorted(_KINDS)


@register_step("prune")
def prune(model_path: Path, config: PruneConfig, data: StepData, ctx: RunContext) -> StepOutput:
    """Prune the model as `config.kind` says, fine-tune it, and return the validated,
    exported result with a sparsity/size report."""
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    output_path = ctx.work_dir / "model.onnx"
    info = inspect_model(model_path)
    quantized = sorted(
        op for op in info.op_types if op in _QUANTIZED_OPS or op.startswith("QLinear")
    )
    if quantized:
        raise UnsupportedModel(
            f"the model is already quantized ({', '.join(quantized)}): prune before quantizing",
            code="already_quantized",
        )
    kind = get_kind(config.kind)
    try:
        from core.torch_bridge import onnx_to_torch, torch_to_onnx

        module = onnx_to_torch(model_path, ctx.work_dir / "torch")
        tuner = FineTuner.of(model_path, info, config.fine_tune, data, ctx)
        sensitivity: dict[str, Any] | None = None
        if config.sensitivity is not None:
            sensitivity = _sensitivity(module, config, tuner, data, _share(ctx, 0.0, 0.3))
            config = _with_derived_ratios(config, sensitivity)
        kind_ctx = _share(ctx, 0.3, 1.0) if sensitivity is not None else ctx
        kind_ctx.report_step(0.0, f"{config.kind} pruning", kind=config.kind)
        result = kind(module, config, tuner, kind_ctx)
        pruned = result.module.eval()
        eval_metric = tuner.evaluate(pruned)
        torch_to_onnx(
            pruned,
            data.eval_feeds(rows=tuner.batch_size),
            output_path,
            inputs=info.inputs,
            outputs=info.outputs,
            opset=info.opset,
        )
    except EngineError:  # ours (incl. JobCancelled) already say what happened
        raise
    except Exception as exc:
        raise StepFailed(f"{config.kind} pruning failed: {short_reason(exc)}") from exc

    validate_runs(output_path, data, ctx.device, what=f"the {config.kind}-pruned model")
    details: dict[str, Any] = {
        "kind": config.kind,
        **result.details,
        **prune_report(model_path, output_path, pruned, result.target_sparsity),
        "fine_tune": {
            **config.fine_tune.model_dump(),
            "batch_size": tuner.batch_size,
            "steps": tuner.total_steps,
            "loss": tuner.training.loss if tuner.training is not None else None,
            "seed": ctx.seed,
            "training_device": ctx.device,
        },
        "epochs": result.fine_tune_history,
        "eval_metric_name": tuner.evaluation.metric_name,
        "eval_metric": eval_metric,
        # before pruning, after pruning (before fine-tuning), after fine-tuning
        "metric_original": (
            data.original_metrics.metric_value if data.original_metrics is not None else None
        ),
        "metric_after_pruning": (
            tuner.metric_before_fine_tuning[0] if tuner.metric_before_fine_tuning else eval_metric
        ),
        "metric_after_fine_tuning": eval_metric if tuner.metric_before_fine_tuning else None,
        "notes": result.notes,
    }
    if sensitivity is not None:
        details["sensitivity"] = sensitivity
    ctx.report_step(1.0, f"{config.kind} pruning done", kind=config.kind)
    return StepOutput(model_path=output_path, details=details)


def _share(ctx: RunContext, start: float, end: float) -> RunContext:
    """`ctx` reporting into [start, end] of the step's own share of the job."""
    low, high = ctx.progress_span or (0.0, 1.0)
    span = high - low
    return dataclasses.replace(ctx, progress_span=(low + span * start, low + span * end))


def _sensitivity(
    module: fx.GraphModule,
    config: PruneConfig,
    tuner: FineTuner,
    data: StepData,
    ctx: RunContext,
) -> dict[str, Any]:
    """Distiller's sweep over the layers the kind would prune (each alone, on a copy),
    pruned the kind's way: channels for structured, smallest weights otherwise."""
    import torch

    from core.prune.masks import default_skipped, prunable_layers
    from core.prune.sensitivity import (
        magnitude_mask_action,
        run_sensitivity,
        structured_action,
        torch_evaluator,
    )

    assert config.sensitivity is not None
    names = list(prunable_layers(module))
    skipped = default_skipped(names) if config.skip_layers is None else config.skip_layers
    layers = [name for name in names if name not in skipped]
    if config.kind == "structured":
        example = {
            t.name: torch.from_numpy(tuner.evaluation.feeds[t.name][:2]) for t in tuner.inputs
        }
        action = structured_action(example, config.importance)
    else:
        action = magnitude_mask_action
    return run_sensitivity(module, config.sensitivity, layers, action, torch_evaluator(data), ctx)


def _with_derived_ratios(config: PruneConfig, sensitivity: dict[str, Any]) -> PruneConfig:
    """The config with the sweep's derived per-layer ratios (explicit layer_sparsity
    entries win); N:M has one sparsity, so its sweep only reports."""
    derived = sensitivity.get("layer_sparsity")
    if derived is None or config.kind == "n_m":
        return config
    return config.model_copy(update={"layer_sparsity": derived | config.layer_sparsity})
