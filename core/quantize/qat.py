"""QAT: fake-quantized fine-tuning in PyTorch on the job's training data, exported as QDQ.

The float ONNX model becomes a torch GraphModule (core.torch_bridge, onnx2torch), is
captured with torch.export, gets fake quantization inserted by torchao's PT2E flow, is
fine-tuned, converted, and exported back to ONNX with QuantizeLinear/DequantizeLinear
around weights (int8, symmetric, per output channel) and activations (uint8, asymmetric,
per tensor, moving-average min/max ranges learned during training).

Why torchao PT2E: `torch.ao.quantization` is being retired in favour of torchao, and
PT2E is torchao's maintained path for QAT. It works on onnx2torch's GraphModules as
they are (once the bridge has made their Reshapes traceable), and its converted graph
(`quantized_decomposed` quantize/dequantize ops, weights folded to int8) is what
torch.onnx's exporter writes as QDQ, with int8 weight initializers: ~4x smaller files.
torchao's wheel needs no particular torch build (it declares no torch requirement and
imports beside 2.14.1). The quantizer is torchao's X86InductorQuantizer in QAT mode:
its recipe (uint8 activations, int8 per-channel symmetric weights, Conv/Linear/MatMul
and the ops between them) is U8S8, the layout ONNX Runtime's x86 INT8 kernels run, as
static mode uses. A hand-written fake-quant wrapper was the fallback, not needed.

Loss: cross-entropy against the labels when a classification job's training data has
them; otherwise the fine-tuned model learns the original's outputs (computed once with
ONNX Runtime): KL divergence of the softmaxes for classification, MSE for regression and
embeddings.

torch, torchao and onnx2torch are imported inside the functions: they take seconds and
about 1 GB to import, which only QAT jobs should pay.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core.context import RunContext
from core.data import Feeds, model_feeds, pinned_batch_size, sample_count
from core.errors import IncompatibleData, StepFailed
from core.formats import TensorInfo, inspect_model
from core.measure import compute_outputs, eval_batch_size, open_session, score
from core.quantize.common import PER_CHANNEL_MIN_OPSET
from core.quantize.modes import register_mode
from core.registry import StepData
from core.spec import QatQuantize, TaskSpec

if TYPE_CHECKING:
    import torch
    from torch import fx

LossName = Literal["cross_entropy", "kl_divergence", "mse"]

# Check for cancellation every this many training batches (and at every epoch's end).
_CANCEL_CHECK_BATCHES = 20


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """What the model is fine-tuned on: its input feeds and the targets of its loss."""

    feeds: Feeds
    targets: np.ndarray  # class indices (cross_entropy) or the original's outputs
    loss: LossName


@register_mode("qat")
def quantize_qat_mode(
    model_path: Path, output_path: Path, config: QatQuantize, data: StepData, ctx: RunContext
) -> dict[str, Any]:
    train_arrays = data.require_train_arrays("qat")
    info = inspect_model(model_path)
    output_name = data.task.output or info.outputs[0].name
    output_index = [tensor.name for tensor in info.outputs].index(output_name)
    training = training_data(model_path, train_arrays, info.inputs, data.task, output_name, ctx)
    batch_size = pinned_batch_size(info.inputs) or config.batch_size
    evaluation = _Evaluation.of(model_path, data, output_name, ctx)

    started = time.perf_counter()
    converted, history = train_with_fake_quant(
        model_path, training, evaluation, config, batch_size, output_index, info.inputs, ctx
    )
    training_s = time.perf_counter() - started

    from core.torch_bridge import torch_to_onnx

    opset = max(info.opset, PER_CHANNEL_MIN_OPSET)  # per-channel DequantizeLinear needs 13
    torch_to_onnx(
        converted,
        {name: array[:batch_size] for name, array in training.feeds.items()},
        output_path,
        inputs=info.inputs,
        outputs=info.outputs,
        opset=opset,
    )
    return {
        "mode": "qat",
        "format": "QDQ",
        "method": "torchao PT2E quantization-aware training (X86InductorQuantizer)",
        "torchao_version": importlib.metadata.version("torchao"),
        "weight_type": "QInt8 symmetric " + ("per-channel" if config.per_channel else "per-tensor"),
        "activation_type": "QUInt8 asymmetric per-tensor",
        "per_channel": config.per_channel,
        "loss": training.loss,
        "epochs": history,
        "eval_metric_name": evaluation.metric_name,
        "learning_rate": config.learning_rate,
        "batch_size": batch_size,
        "train_samples": sample_count(training.feeds),
        "training_device": ctx.device,
        "training_s": round(training_s, 3),
        "seed": ctx.seed,
        "opset": opset,
        "opset_upgraded_from": info.opset if opset != info.opset else None,
    }


def training_data(
    model_path: Path,
    train_arrays: Mapping[str, np.ndarray],
    inputs: list[TensorInfo],
    task: TaskSpec,
    output_name: str,
    ctx: RunContext,
) -> TrainingData:
    """The feeds and loss targets: labels for a classification task whose training data
    has them, else the original model's outputs on the training data (ONNX Runtime)."""
    feeds = model_feeds(train_arrays, inputs, task)
    labels = train_arrays.get(task.labels)
    if task.kind == "classification" and labels is not None:
        if np.dtype(labels.dtype).kind not in "iu":
            raise IncompatibleData(
                f"classification labels {task.labels!r} must be integer class indices, "
                f"got {labels.dtype}"
            )
        return TrainingData(feeds, labels.reshape(-1).astype(np.int64), "cross_entropy")
    session = open_session(model_path, ctx.measure, ctx.device)
    outputs = compute_outputs(
        session, feeds, output_name, eval_batch_size(inputs), ctx.check_cancelled
    )
    loss: LossName = "kl_divergence" if task.kind == "classification" else "mse"
    return TrainingData(feeds, outputs.astype(np.float32), loss)


@dataclasses.dataclass(frozen=True)
class _Evaluation:
    """The job's eval data and what the step's metric compares against, per epoch."""

    feeds: Feeds
    task: TaskSpec
    labels: np.ndarray | None
    reference: np.ndarray
    metric_name: str

    @classmethod
    def of(cls, model_path: Path, data: StepData, output_name: str, ctx: RunContext) -> _Evaluation:
        feeds = data.eval_feeds()
        labels = data.eval_arrays.get(data.task.labels) if data.task.kind != "embedding" else None
        reference = data.reference_outputs
        if reference is None:  # a step called outside the pipeline: run the original once
            session = open_session(model_path, ctx.measure, ctx.device)
            reference = compute_outputs(
                session, feeds, output_name, eval_batch_size(data.inputs), ctx.check_cancelled
            )
        metric_name, _ = score(data.task, reference, labels, reference)
        return cls(feeds, data.task, labels, reference, metric_name)

    def metric(self, outputs: np.ndarray) -> float:
        return score(self.task, outputs, self.labels, self.reference)[1]


def train_with_fake_quant(
    model_path: Path,
    training: TrainingData,
    evaluation: _Evaluation,
    config: QatQuantize,
    batch_size: int,
    output_index: int,
    inputs: list[TensorInfo],
    ctx: RunContext,
) -> tuple[fx.GraphModule, list[dict[str, Any]]]:
    """Fine-tune the model with fake quantization; return the converted (quantized) CPU
    module and one record per epoch: epoch, train_loss, eval_metric."""
    import torch
    from torchao.quantization.pt2e import (
        disable_observer,
        enable_observer,
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from core.torch_bridge import capture, onnx_to_torch

    torch.manual_seed(ctx.seed)
    device = torch.device(ctx.device)
    module = onnx_to_torch(model_path, ctx.work_dir / "torch").to(device)
    example = {name: array[:batch_size] for name, array in training.feeds.items()}
    program = capture(module, example, inputs, device=ctx.device)
    prepared = prepare_qat_pt2e(program.module(), _quantizer(config.per_channel))
    optimizer = torch.optim.Adam(prepared.parameters(), lr=config.learning_rate)
    shuffle = np.random.default_rng(ctx.seed)
    history: list[dict[str, Any]] = []
    for epoch in range(1, config.epochs + 1):
        move_exported_model_to_train(prepared)
        prepared.apply(enable_observer)
        losses = []
        for step, rows in enumerate(_batches(shuffle, sample_count(training.feeds), batch_size)):
            if step % _CANCEL_CHECK_BATCHES == 0:
                ctx.check_cancelled()
            optimizer.zero_grad()
            outputs = _select(
                prepared(*_tensors(training.feeds, rows, inputs, device)), output_index
            )
            loss = _loss(
                training.loss, outputs, torch.from_numpy(training.targets[rows]).to(device)
            )
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        train_loss = float(np.mean(losses))
        if not np.isfinite(train_loss):
            raise StepFailed(
                f"qat training diverged in epoch {epoch} (loss {train_loss}): "
                f"lower learning_rate (now {config.learning_rate})"
            )
        # Activation ranges come from the training data only: evaluating must not move them.
        move_exported_model_to_eval(prepared)
        prepared.apply(disable_observer)
        eval_metric = evaluation.metric(
            _predict(prepared, evaluation.feeds, batch_size, output_index, inputs, device)
        )
        record = {"epoch": epoch, "train_loss": train_loss, "eval_metric": eval_metric}
        history.append(record)
        ctx.report_step(
            epoch / config.epochs,
            f"qat epoch {epoch}/{config.epochs}",
            epoch=epoch,
            loss=record["train_loss"],
            eval_metric=eval_metric,
            metric_name=evaluation.metric_name,
        )
    move_exported_model_to_eval(prepared)
    return convert_pt2e(prepared.to("cpu")), history


def _quantizer(per_channel: bool) -> Any:
    """torchao's x86 recipe in QAT mode; per-tensor weights when per_channel is off."""
    import torch
    from torchao.quantization.pt2e import (
        FusedMovingAvgObsFakeQuantize,
        MovingAverageMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    config = get_default_x86_inductor_quantization_config(is_qat=True)
    if not per_channel:
        weight = dataclasses.replace(
            config.weight,
            qscheme=torch.per_tensor_symmetric,
            ch_axis=None,
            observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
                observer=MovingAverageMinMaxObserver, eps=2**-12
            ),
        )
        config = dataclasses.replace(config, weight=weight)
    return X86InductorQuantizer().set_global(config)


def _batches(shuffle: np.random.Generator, samples: int, batch_size: int) -> Iterator[np.ndarray]:
    """Shuffled row indices, `batch_size` per batch: the last batch is filled up from
    the start of the order, so a model that pins its batch size gets exactly that many
    rows (and BatchNorm in training never sees a batch of one)."""
    order = shuffle.permutation(samples)
    for start in range(0, samples, batch_size):
        yield order[np.arange(start, start + batch_size) % samples]


def _tensors(
    feeds: Feeds, rows: np.ndarray | slice, inputs: list[TensorInfo], device: torch.device
) -> list[torch.Tensor]:
    import torch

    return [
        torch.from_numpy(np.ascontiguousarray(feeds[tensor.name][rows])).to(device)
        for tensor in inputs
    ]


def _select(outputs: Any, index: int) -> torch.Tensor:
    return outputs[index] if isinstance(outputs, tuple | list) else outputs


def _loss(name: LossName, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from torch.nn import functional

    if name == "cross_entropy":
        return functional.cross_entropy(outputs.reshape(len(outputs), -1), targets)
    if name == "kl_divergence":
        student = functional.log_softmax(outputs.reshape(len(outputs), -1), dim=1)
        teacher = functional.softmax(targets.reshape(len(targets), -1), dim=1)
        return functional.kl_div(student, teacher, reduction="batchmean")
    return functional.mse_loss(outputs, targets.reshape(outputs.shape))


def _predict(
    module: fx.GraphModule,
    feeds: Feeds,
    batch_size: int,
    output_index: int,
    inputs: list[TensorInfo],
    device: torch.device,
) -> np.ndarray:
    """The module's chosen output over all of `feeds`, in batches (the last padded)."""
    import torch

    samples = sample_count(feeds)
    chunks = []
    with torch.no_grad():
        for start in range(0, samples, batch_size):
            rows = np.arange(start, start + batch_size) % samples
            outputs = _select(module(*_tensors(feeds, rows, inputs, device)), output_index)
            chunks.append(outputs.cpu().numpy()[: min(batch_size, samples - start)])
    return np.concatenate(chunks, axis=0)
