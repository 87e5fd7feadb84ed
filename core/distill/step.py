"""The registered `distill` step: the job's original model teaches a student.

The teacher runs once in ONNX Runtime over the training data (teacher.py, cached); the
student comes from the spec (students.py), trains against the teacher's outputs and the
labels when there are any (loss.py; trainer.py keeps the best epoch on the eval data),
optionally beside a label-only twin from the same initial weights (the baseline that
shows what distillation added), and is exported to ONNX under the teacher's input and
output names. The pipeline then measures it like any other step's output.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.context import RunContext
from core.data import Feeds, model_feeds, pinned_batch_size, sample_count
from core.distill.features import FeatureMatcher
from core.distill.loss import classification_loss, label_loss, regression_loss
from core.distill.students import Student, Teacher, resolve_student
from core.distill.teacher import as_logits, teacher_outputs
from core.errors import EngineError, IncompatibleData, StepFailed, short_reason
from core.formats import TensorInfo, inspect_model
from core.measure import count_parameters
from core.quantize.common import validate_runs
from core.registry import StepData, StepOutput, register_step
from core.spec import DistillStep, TaskSpec
from core.training import (
    EvaluateFn,
    Evaluation,
    LossFn,
    TrainingPlan,
    TrainingRun,
    fit,
    predict,
    refuse_bound_inputs,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


@register_step("distill")
def distill(model_path: Path, config: DistillStep, data: StepData, ctx: RunContext) -> StepOutput:
    """Train the configured student against the job's original model and return it as
    ONNX, with a report: student and sizing, parameters, loss settings, per-epoch
    history, best epoch, and the eval metric of teacher, distilled and label-only."""
    refuse_bound_inputs(data.task, "distill")
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    output_path = ctx.work_dir / "model.onnx"
    ctx = dataclasses.replace(ctx, seed=ctx.seed if config.seed is None else config.seed)
    teacher_path = data.original_model_path or model_path
    teacher_info = inspect_model(teacher_path)
    output_name = data.task.output or teacher_info.outputs[0].name
    output_index = [tensor.name for tensor in teacher_info.outputs].index(output_name)
    train_arrays = data.require_train_arrays("distill")
    feeds = model_feeds(train_arrays, teacher_info.inputs, data.task)
    batch_size = pinned_batch_size(teacher_info.inputs) or config.batch_size

    ctx.report_step(0.0, "distill: the teacher's outputs on the training data")
    cached = teacher_outputs(
        teacher_path,
        feeds,
        output_name,
        teacher_info.inputs,
        ctx.work_dir / "teacher",
        ctx.measure,
        ctx.device,
        ctx.check_cancelled,
    )
    classification = data.task.kind == "classification"
    soft_targets, were_probabilities = (
        as_logits(cached.outputs) if classification else (cached.outputs, False)
    )
    labels = _labels(train_arrays, data.task, soft_targets.shape[1:])
    if config.compare_label_only and labels is None:
        raise IncompatibleData(
            f"compare_label_only trains the student on labels alone, but the training data "
            f"has no label array {data.task.labels!r}: add it or set compare_label_only false"
            if data.task.kind in ("classification", "regression")
            else f"compare_label_only trains on labels alone, which squeeze does for "
            f"classification and regression tasks, not {data.task.kind}: set "
            "compare_label_only false"
        )
    teacher = Teacher(
        path=teacher_path,
        info=teacher_info,
        output_index=output_index,
        output_shape=tuple(int(size) for size in soft_targets.shape[1:]),
        parameters=count_parameters(teacher_path),
    )
    try:
        student = resolve_student(
            config.student,
            model_path,
            teacher,
            feeds,
            dict(data.models),
            data.batch_size,
            _share(ctx, 0.02, 0.1),
        )
        evaluation = Evaluation.of(teacher_path, data, output_name, ctx)
        runs = _train_students(
            config, student, feeds, soft_targets, labels, evaluation, batch_size, teacher, ctx
        )
        ctx.report_step(0.92, "distill: exporting the student")
        from core.torch_bridge import torch_to_onnx

        torch_to_onnx(
            student.module.eval(),
            {tensor.name: feeds[tensor.name][:batch_size] for tensor in student.inputs},
            output_path,
            inputs=student.inputs,
            outputs=student.outputs,
            opset=teacher_info.opset,
        )
    except EngineError:  # ours (incl. JobCancelled) already say what happened
        raise
    except Exception as exc:
        raise StepFailed(f"distillation failed: {short_reason(exc)}") from exc

    validate_runs(output_path, data, ctx.device, what="the distilled student")
    student_parameters = count_parameters(output_path)
    details: dict[str, Any] = {
        "teacher": "the job's original model",
        "student": student.description,
        "parameters": {
            "teacher": teacher.parameters,
            "student": student_parameters,
            "ratio": student_parameters / max(teacher.parameters, 1),
        },
        "loss": _loss_report(config, classification, labels is not None, were_probabilities),
        "training": {
            "epochs": config.epochs,
            "epochs_run": len(runs.distilled.history) - 1,
            "stopped_early": runs.distilled.stopped_early,
            "batch_size": batch_size,
            "learning_rate": config.learning_rate,
            "optimizer": config.optimizer,
            "weight_decay": config.weight_decay,
            "early_stopping_patience": config.early_stopping_patience,
            "seed": ctx.seed,
            "training_device": ctx.device,
            "train_samples": sample_count(feeds),
            "training_s": round(runs.distilled.training_s, 3),
            "teacher_outputs": "read from the cache" if cached.from_cache else "computed once",
        },
        # the exporter keeps a newer opset when the graph cannot be converted down to the
        # teacher's (e.g. ReduceMean's axes input, opset 18)
        "opset": inspect_model(output_path).opset,
        "opset_of_teacher": teacher_info.opset,
        "epochs": runs.distilled.history,
        "best_epoch": runs.distilled.best_epoch,
        "eval_metric_name": evaluation.metric_name,
        "eval_metric": {
            "teacher": evaluation.metric(evaluation.reference),
            "distilled": runs.distilled.best_metric,
            "label_only": runs.label_only.best_metric if runs.label_only else None,
        },
        "label_only": (
            {
                "epochs": runs.label_only.history,
                "best_epoch": runs.label_only.best_epoch,
                "stopped_early": runs.label_only.stopped_early,
            }
            if runs.label_only is not None
            else None
        ),
        "notes": _notes(config, labels is not None, runs.distilled, data.task.kind),
    }
    if runs.feature_pairs:
        details["loss"]["feature_pairs"] = runs.feature_pairs
    ctx.report_step(1.0, "distill done")
    return StepOutput(model_path=output_path, details=details)


@dataclasses.dataclass(frozen=True)
class _Runs:
    distilled: TrainingRun
    label_only: TrainingRun | None  # with compare_label_only
    feature_pairs: list[dict[str, Any]]  # with feature matching


def _train_students(
    config: DistillStep,
    student: Student,
    feeds: Feeds,
    teacher_outputs: np.ndarray,
    labels: np.ndarray | None,
    evaluation: Evaluation,
    batch_size: int,
    teacher: Teacher,
    ctx: RunContext,
) -> _Runs:
    """Distil the student in place (its best epoch kept); with compare_label_only, also
    train a copy of its initial weights on the labels alone, with the same plan."""
    classification = evaluation.task.kind == "classification"
    label_only = copy.deepcopy(student.module) if config.compare_label_only else None
    evaluate = _evaluator(evaluation, student, batch_size, ctx.device)
    plan = TrainingPlan(
        epochs=config.epochs,
        batch_size=batch_size,
        learning_rate=config.learning_rate,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        patience=config.early_stopping_patience,
        seed=ctx.seed,
    )
    matcher = _feature_matcher(config, teacher.path, student, feeds, ctx)
    distilled = fit(
        student.module,
        _distillation_loss(config, classification, teacher_outputs, labels, matcher, ctx.device),
        feeds,
        student.inputs,
        student.output_index,
        evaluate,
        plan,
        ctx,
        label="distill",
        progress=(0.1, 0.55 if label_only is not None else 0.9),
        extra_parameters=matcher.parameters() if matcher is not None else (),
    )
    pairs = [pair.describe() for pair in matcher.pairs] if matcher is not None else []
    if matcher is not None:
        matcher.close()  # the hooks must not be exported
    baseline = None
    if label_only is not None and labels is not None:
        baseline = fit(
            label_only,
            _label_only_loss(classification, labels, ctx.device),
            feeds,
            student.inputs,
            student.output_index,
            evaluate,
            plan,
            ctx,
            label="label-only",
            progress=(0.55, 0.9),
        )
    return _Runs(distilled, baseline, pairs)


def _labels(arrays: Any, task: TaskSpec, output_shape: tuple[int, ...]) -> np.ndarray | None:
    """The training labels the loss mixes in: class indices for classification, targets
    of the output's shape for regression; None when absent, and for the kinds whose labels
    are no target for the output itself (embeddings; masks and sequences, whose labels are
    class maps or CTC label sequences, not the logits: the teacher's outputs alone
    teach those)."""
    labels = arrays.get(task.labels) if task.kind in ("classification", "regression") else None
    if labels is None:
        return None
    if task.kind == "classification":
        if np.dtype(labels.dtype).kind not in "iu":
            raise IncompatibleData(
                f"classification labels {task.labels!r} must be integer class indices, "
                f"got {labels.dtype}"
            )
        return np.ascontiguousarray(labels.reshape(-1), dtype=np.int64)
    per_sample = int(np.prod(output_shape))
    if labels.size != len(labels) * per_sample:
        raise IncompatibleData(
            f"regression labels {task.labels!r} of shape {labels.shape} do not match the "
            f"output's shape {list(output_shape)} per sample"
        )
    return np.ascontiguousarray(labels.reshape(len(labels), *output_shape), dtype=np.float32)


def _distillation_loss(
    config: DistillStep,
    classification: bool,
    teacher_outputs: np.ndarray,
    labels: np.ndarray | None,
    matcher: FeatureMatcher | None,
    device_name: str,
) -> LossFn:
    import torch

    device = torch.device(device_name)

    def loss(inputs: list[torch.Tensor], outputs: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        targets = torch.from_numpy(teacher_outputs[rows]).to(device)
        truth = torch.from_numpy(labels[rows]).to(device) if labels is not None else None
        if classification:
            total = classification_loss(
                outputs, targets, truth, temperature=config.temperature, alpha=config.alpha
            )
        else:
            total = regression_loss(
                outputs, targets, truth, kind=config.output_loss, alpha=config.alpha
            )
        if matcher is not None:
            total = total + config.feature_matching * matcher.loss(inputs)
        return total

    return loss


def _label_only_loss(classification: bool, labels: np.ndarray, device_name: str) -> LossFn:
    import torch

    device = torch.device(device_name)

    def loss(inputs: list[torch.Tensor], outputs: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        truth = torch.from_numpy(labels[rows]).to(device)
        return label_loss(outputs, truth, classification=classification)

    return loss


def _evaluator(
    evaluation: Evaluation, student: Student, batch_size: int, device_name: str
) -> EvaluateFn:
    """The step's metric of a module on the eval data (vs labels or the teacher)."""
    import torch

    device = torch.device(device_name)

    def evaluate(module: nn.Module) -> float:
        module.eval()
        outputs = predict(
            module,  # type: ignore[arg-type]  # any module taking the inputs positionally
            evaluation.feeds,
            batch_size,
            student.output_index,
            student.inputs,
            device,
        )
        return evaluation.metric(outputs)

    return evaluate


def _feature_matcher(
    config: DistillStep, teacher_path: Path, student: Student, feeds: Feeds, ctx: RunContext
) -> FeatureMatcher | None:
    """Hooks on the teacher (converted to torch) and the student, when asked for."""
    if config.feature_matching == 0:
        return None
    import torch

    from core.torch_bridge import onnx_to_torch

    device = torch.device(ctx.device)
    teacher_module = onnx_to_torch(teacher_path, ctx.work_dir / "torch-teacher").to(device)
    student.module.to(device)
    example = _example(feeds, student.inputs, device)
    return FeatureMatcher(teacher_module, student.module, example).to(device)


def _example(feeds: Feeds, inputs: list[TensorInfo], device: torch.device) -> list[torch.Tensor]:
    from core.training import tensors

    return tensors(feeds, np.arange(2) % sample_count(feeds), inputs, device)


def _loss_report(
    config: DistillStep, classification: bool, has_labels: bool, were_probabilities: bool
) -> dict[str, Any]:
    alpha = config.alpha if has_labels else 1.0
    if classification:
        soft = f"T^2 * KL(softmax(t/T) || softmax(s/T)), T = {config.temperature:g}"
        hard = "CE(labels, s)"
    else:
        soft = f"{config.output_loss}(s, t)"
        hard = "MSE(s, labels)"
    formula = soft if alpha == 1.0 else f"{alpha:g} * {soft} + {1 - alpha:g} * {hard}"
    report: dict[str, Any] = {
        "formula": formula,
        "temperature": config.temperature if classification else None,
        "alpha": config.alpha,
        "labels_used": has_labels and config.alpha < 1.0,
        "output_loss": None if classification else config.output_loss,
        "feature_matching": config.feature_matching,
    }
    if were_probabilities:
        report["teacher_outputs"] = "probabilities: their logarithms serve as logits"
    return report


def _notes(config: DistillStep, has_labels: bool, run: TrainingRun, kind: str) -> list[str]:
    notes = []
    if not has_labels and config.alpha < 1.0:
        notes.append(
            "the training data has no labels: the loss is the teacher term alone (alpha 1)"
            if kind in ("classification", "regression")
            else f"a {kind} task's labels are no target for its outputs: the loss is the "
            "teacher term alone (alpha 1)"
        )
    if run.best_epoch == 0:
        notes.append(
            "no epoch beat the student as it started on the eval data: it is returned untrained"
        )
    notes.append(
        "the best epoch is chosen on the eval data, which also scores the result: the "
        "reported metric is slightly optimistic (a separate validation set would not be)"
    )
    return notes


def _share(ctx: RunContext, start: float, end: float) -> RunContext:
    """`ctx` reporting into [start, end] of the step's own share of the job."""
    low, high = ctx.progress_span or (0.0, 1.0)
    span = high - low
    return dataclasses.replace(ctx, progress_span=(low + span * start, low + span * end))
