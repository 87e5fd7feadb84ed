"""The "prune" step: convert to torch once, run the kind, export, validate, report.

A kind is `(module, config, tuner, ctx) -> KindResult`: it prunes the GraphModule (in
place or by returning a new module) and fine-tunes it through `tuner` as its method
needs (once after pruning, with a schedule acting every optimizer step, or between
rounds). Adding a kind means one module with `@register_kind` and its config in
core.spec; the step itself dispatches on `config.kind`.

Attention heads (structured `head_sparsity`) are removed before conversion, by ONNX
graph surgery (core.prune.heads): the head-pruned model is the one converted, pruned
further and fine-tuned. The export writes the trained weights back into the converted
ONNX graph when the kind kept the module's structure (masks, fine-tuning only): that
keeps graphs torch.export cannot capture, such as dynamic-batch attention. Modules whose
layers were resized (channels removed) are exported with torch.export.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.context import RunContext
from core.data import pinned_batch_size
from core.errors import EngineError, StepFailed, UnsupportedModel, short_reason
from core.formats import ModelInfo, inspect_model, load_model, save_model
from core.prune.heads import HeadPruning, prune_heads
from core.prune.kinds import KindResult, get_kind
from core.prune.masks import default_skipped, prunable_layers
from core.prune.report import prune_report
from core.prune.sensitivity import (
    magnitude_mask_action,
    run_sensitivity,
    structured_action,
    torch_evaluator,
)
from core.prune.training import FineTuner
from core.quantize.common import validate_runs
from core.registry import StepData, StepOutput, register_step
from core.spec import PruneConfig, StructuredPrune
from core.training import refuse_bound_inputs

if TYPE_CHECKING:
    from torch import fx

# Op types that mark an already quantized model: onnx2torch cannot train those.
_QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulNBits")
# Rows of the eval data that ONNX Runtime runs to trace head shapes and rank heads (a
# pinned batch size wins).
HEAD_FEED_ROWS = 2


@register_step("prune")
def prune(model_path: Path, config: PruneConfig, data: StepData, ctx: RunContext) -> StepOutput:
    """Prune the model as `config.kind` says, fine-tune it, and return the validated,
    exported result with a sparsity/size report."""
    refuse_bound_inputs(data.task, "prune")
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
        from core.torch_bridge import onnx_to_torch

        tuner = FineTuner.of(model_path, info, config.fine_tune, data, ctx)
        source = model_path
        head_details: dict[str, Any] = {}
        head_notes: list[str] = []
        if isinstance(config, StructuredPrune) and config.head_sparsity > 0:
            source, heads = _prune_heads_first(model_path, config, tuner, ctx)
            head_details = {
                "head_sparsity": config.head_sparsity,
                "head_importance": heads.importance,
                "attention_heads": [record.as_dict() for record in heads.blocks],
            }
            head_notes = heads.notes
        module = onnx_to_torch(source, ctx.work_dir / "torch")
        sensitivity: dict[str, Any] | None = None
        if config.sensitivity is not None:
            sensitivity = _sensitivity(module, config, tuner, data, _share(ctx, 0.0, 0.3))
            config = _with_derived_ratios(config, sensitivity)
        kind_ctx = _share(ctx, 0.3, 1.0) if sensitivity is not None else ctx
        kind_ctx.report_step(0.0, f"{config.kind} pruning", kind=config.kind)
        result = kind(module, config, tuner, kind_ctx)
        pruned = result.module.eval()
        eval_metric = tuner.evaluate(pruned)
        export, export_notes = _export(result, source, output_path, info, data, tuner.batch_size)
    except EngineError:  # ours (incl. JobCancelled) already say what happened
        raise
    except Exception as exc:
        raise StepFailed(f"{config.kind} pruning failed: {short_reason(exc)}") from exc

    validate_runs(output_path, data, ctx.device, what=f"the {config.kind}-pruned model")
    details: dict[str, Any] = {
        "kind": config.kind,
        **result.details,
        **head_details,
        "export": export,
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
        "notes": [*head_notes, *result.notes, *export_notes],
    }
    if sensitivity is not None:
        details["sensitivity"] = sensitivity
    ctx.report_step(1.0, f"{config.kind} pruning done", kind=config.kind)
    return StepOutput(
        model_path=output_path, details=details, unchanged_reason=nothing_pruned(details)
    )


def nothing_pruned(details: dict[str, Any]) -> str | None:
    """Why the step pruned nothing (no weight zeroed, no channel or head removed), or None."""
    after, before = details["parameters"], details["parameters_original"]
    if after["total"] < before["total"] or after["nonzero"] < before["nonzero"]:
        return None
    tuned = " (the weights were only fine-tuned)" if details["fine_tune"]["epochs"] else ""
    return (
        "no weight, channel or head was removed: every layer was skipped or its sparsity "
        f"was 0{tuned}"
    )


def _prune_heads_first(
    model_path: Path, config: StructuredPrune, tuner: FineTuner, ctx: RunContext
) -> tuple[Path, HeadPruning]:
    """Remove attention heads from the uploaded model by ONNX surgery; the head-pruned
    model (saved in the work dir) is what the step converts and writes weights into."""
    ctx.report_step(0.0, "pruning attention heads")
    rows = pinned_batch_size(tuner.inputs) or HEAD_FEED_ROWS
    feeds = {t.name: tuner.evaluation.feeds[t.name][:rows] for t in tuner.inputs}
    heads = prune_heads(load_model(model_path), config.head_sparsity, config.importance, feeds)
    return save_model(heads.model, ctx.work_dir / "heads" / "model.onnx"), heads


def _export(
    result: KindResult,
    source: Path,
    output_path: Path,
    info: ModelInfo,
    data: StepData,
    rows: int,
) -> tuple[str, list[str]]:
    """Write the pruned module to `output_path`: its weights into `source` (the model
    converted) when the kind kept the structure, else by torch.export. Returns how, and
    a note saying why when a write-back was refused."""
    from core.torch_bridge import WriteBackRefused, torch_to_onnx, write_back_weights

    refused = None
    if result.structure_kept:
        try:
            write_back_weights(result.module, source, output_path)
            return "weights_written_back", []
        except WriteBackRefused as exc:
            refused = f"the weights could not be written back into the model's graph ({exc})"
    try:
        torch_to_onnx(
            result.module,
            data.eval_feeds(rows=rows),
            output_path,
            inputs=info.inputs,
            outputs=info.outputs,
            opset=info.opset,
        )
    except UnsupportedModel as exc:
        if refused is None:
            raise
        raise UnsupportedModel(f"{exc}; and {refused}", code=exc.code) from exc
    return "torch_export", [f"{refused}: exported with torch.export"] if refused else []


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
