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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.context import RunContext
from core.data import pinned_batch_size, sample_count
from core.formats import TensorInfo, inspect_model
from core.quantize.common import PER_CHANNEL_MIN_OPSET
from core.quantize.modes import register_mode
from core.registry import StepData
from core.spec import QatQuantize
from core.training import (
    Evaluation,
    TrainingData,
    TrainingPlan,
    fit,
    loss_of,
    predict,
    refuse_bound_inputs,
    training_data,
)

if TYPE_CHECKING:
    from torch import fx


@register_mode("qat")
def quantize_qat_mode(
    model_path: Path, output_path: Path, config: QatQuantize, data: StepData, ctx: RunContext
) -> dict[str, Any]:
    refuse_bound_inputs(data.task, "qat")
    train_arrays = data.require_train_arrays("qat")
    info = inspect_model(model_path)
    output_name = data.task.output or info.outputs[0].name
    output_index = [tensor.name for tensor in info.outputs].index(output_name)
    training = training_data(model_path, train_arrays, info.inputs, data.task, output_name, ctx)
    batch_size = pinned_batch_size(info.inputs) or config.batch_size
    evaluation = Evaluation.of(model_path, data, output_name, ctx)

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


def train_with_fake_quant(
    model_path: Path,
    training: TrainingData,
    evaluation: Evaluation,
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
    # the observers prepare inserts are made on the CPU: on a CUDA job they follow the module
    prepared = prepare_qat_pt2e(program.module(), _quantizer(config.per_channel)).to(device)

    def train_mode(model: Any) -> None:
        move_exported_model_to_train(model)
        model.apply(enable_observer)

    def eval_mode(model: Any) -> None:
        # Activation ranges come from the training data only: evaluating must not move them.
        move_exported_model_to_eval(model)
        model.apply(disable_observer)

    def loss(batch: list[Any], outputs: Any, rows: np.ndarray) -> Any:
        targets = torch.from_numpy(training.targets[rows]).to(device)
        return loss_of(training.loss, outputs, targets)

    run = fit(
        prepared,
        loss,
        training.feeds,
        inputs,
        output_index,
        lambda model: evaluation.metric(
            predict(prepared, evaluation.feeds, batch_size, output_index, inputs, device)
        ),
        TrainingPlan(
            epochs=config.epochs,
            batch_size=batch_size,
            learning_rate=config.learning_rate,
            optimizer="adam",
            weight_decay=0.0,
            patience=None,
            seed=ctx.seed,
        ),
        ctx,
        label="qat",
        keep_best=False,
        train_mode=train_mode,
        eval_mode=eval_mode,
        report={"metric_name": evaluation.metric_name},
    )
    history = run.history
    move_exported_model_to_eval(prepared)
    return convert_pt2e(graph_to_cpu(prepared)), history


def graph_to_cpu(module: fx.GraphModule) -> fx.GraphModule:
    """The module's weights and the devices its graph names, on the CPU.

    A graph captured from a CUDA module can create tensors with `device=cuda` (factory
    ops torch.export recorded); `.to("cpu")` moves only parameters and buffers, so those
    kwargs are rewritten too (as torch.export's move_to_device_pass does), and the ONNX
    export of the converted model runs on the CPU."""
    import torch

    module.to("cpu")
    changed = False
    for node in module.graph.nodes:
        device = node.kwargs.get("device")
        if device is not None and torch.device(device).type != "cpu":
            node.kwargs = {**node.kwargs, "device": torch.device("cpu")}
            changed = True
    if changed:
        module.recompile()
    return module


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
