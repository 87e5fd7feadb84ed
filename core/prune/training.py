"""Fine-tuning after (or while) pruning, shared by every kind.

The loss is QAT's (core.quantize.qat.training_data): cross-entropy against the labels
when a classification job's training data has them, else the original model's outputs
(KL divergence of the softmaxes for classification, MSE otherwise). The loop is seeded,
reports every epoch through `ctx.report_step`, and calls `on_step(step)` after every
optimizer step (step counts from 1) so that schedules can recompute masks and masks are
re-applied before the next forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.context import RunContext
from core.data import pinned_batch_size, sample_count
from core.formats import ModelInfo, TensorInfo
from core.registry import StepData
from core.spec import FineTune
from core.training import (
    Evaluation,
    StepHook,
    TrainingData,
    TrainingPlan,
    fit,
    loss_of,
    predict,
    training_data,
)

if TYPE_CHECKING:
    import torch
    from torch import nn



@dataclass(frozen=True)
class FineTuner:
    """The fine-tuning of one prune step: its data, loss, evaluation and settings."""

    config: FineTune
    training: TrainingData | None  # None when config.epochs == 0
    evaluation: Evaluation
    batch_size: int
    output_index: int
    inputs: list[TensorInfo]
    ctx: RunContext
    # The metric when fine-tuning first starts, i.e. right after (the first round of)
    # pruning: the report shows what pruning cost and what fine-tuning won back.
    metric_before_fine_tuning: list[float] = field(default_factory=list)

    @classmethod
    def of(
        cls, model_path: Path, info: ModelInfo, config: FineTune, data: StepData, ctx: RunContext
    ) -> FineTuner:
        """Load what fine-tuning needs; the training data only when epochs > 0."""
        output_name = data.task.output or info.outputs[0].name
        output_index = [tensor.name for tensor in info.outputs].index(output_name)
        training = None
        if config.epochs > 0:
            train_arrays = data.require_train_arrays("prune fine-tuning")
            training = training_data(
                model_path, train_arrays, info.inputs, data.task, output_name, ctx
            )
        return cls(
            config=config,
            training=training,
            evaluation=Evaluation.of(model_path, data, output_name, ctx),
            batch_size=pinned_batch_size(info.inputs) or config.batch_size,
            output_index=output_index,
            inputs=info.inputs,
            ctx=ctx,
        )

    @property
    def steps_per_epoch(self) -> int:
        if self.training is None:
            return 0
        return math.ceil(sample_count(self.training.feeds) / self.batch_size)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of a full fine-tuning run (0 without fine-tuning)."""
        return self.steps_per_epoch * self.config.epochs

    def evaluate(self, module: nn.Module) -> float:
        """The step's metric of `module` on the eval data (vs. labels or the original)."""
        import torch

        device = torch.device(self.ctx.device)
        # the module may come straight from the CPU (onnx2torch, a sensitivity copy)
        module.to(device).eval()
        outputs = predict(
            module,  # type: ignore[arg-type]  # any module taking the inputs positionally
            self.evaluation.feeds,
            self.batch_size,
            self.output_index,
            self.inputs,
            device,
        )
        return self.evaluation.metric(outputs)

    def run(
        self,
        module: nn.Module,
        on_step: StepHook | None = None,
        *,
        label: str = "fine-tune",
        progress: tuple[float, float] = (0.0, 1.0),
    ) -> list[dict[str, Any]]:
        """Fine-tune `module` in place for config.epochs in the one training loop
        (core.training.fit, last epoch's weights kept); one record per epoch (epoch,
        train_loss, eval_metric). Reports each epoch within `progress` of the step."""
        import torch

        if self.training is None or self.config.epochs == 0:
            return []
        training = self.training
        device = torch.device(self.ctx.device)
        if not self.metric_before_fine_tuning:
            self.metric_before_fine_tuning.append(self.evaluate(module))

        def loss(batch: list[torch.Tensor], outputs: torch.Tensor, rows: np.ndarray) -> Any:
            targets = torch.from_numpy(training.targets[rows]).to(device)
            return loss_of(training.loss, outputs, targets)

        config = self.config
        run = fit(
            module,
            loss,
            training.feeds,
            self.inputs,
            self.output_index,
            self.evaluate,
            TrainingPlan(
                epochs=config.epochs,
                batch_size=self.batch_size,
                learning_rate=config.learning_rate,
                optimizer=config.optimizer,
                weight_decay=config.weight_decay,
                patience=None,
                seed=self.ctx.seed,
            ),
            self.ctx,
            label=label,
            progress=progress,
            keep_best=False,
            on_step=on_step,
            report={"metric_name": self.evaluation.metric_name},
        )
        return run.history
