"""On a GPU (marked `gpu`: skipped with the reason elsewhere; scripts/gpu-check.sh runs
them): ONNX Runtime's CUDA provider through the adapter, and every step that trains
really trains on CUDA when the job's device is "cuda" (CUDA memory is allocated)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.context import MeasureSettings, RunContext
from core.formats import inspect_model
from core.registry import StepData, StepOutput, get_step
from core.runtimes import RunSettings, get_runtime
from core.spec import QUANTIZE_STEP_ADAPTER, DistillStep, SearchStep, StructuredPrune, TaskSpec
from service.examples import digits_arrays

pytestmark = pytest.mark.gpu

TRAIN_IMAGES, TRAIN_LABELS = (a[:256] for a in digits_arrays("train"))
EVAL_IMAGES, EVAL_LABELS = (a[:96] for a in digits_arrays("test"))
FAST = MeasureSettings(threads=1, warmup_runs=1, runs=5)


def data(model: Path) -> StepData:
    return StepData(
        eval_arrays={"input": EVAL_IMAGES, "label": EVAL_LABELS},
        calibration_arrays={"input": TRAIN_IMAGES},
        inputs=inspect_model(model).inputs,
        task=TaskSpec(),
        train_arrays={"input": TRAIN_IMAGES, "label": TRAIN_LABELS},
        original_model_path=model,
    )


def on_cuda(method: str, model: Path, config: Any, work_dir: Path) -> tuple[StepOutput, int]:
    """Run the step with ctx.device "cuda"; returns its output and the peak CUDA bytes."""
    import torch

    torch.cuda.reset_peak_memory_stats()
    ctx = RunContext(work_dir=work_dir, device="cuda", measure=FAST)
    output = get_step(method)(model, config, data(model), ctx)
    return output, int(torch.cuda.max_memory_allocated())


def test_onnx_runtime_on_cuda_agrees_with_the_cpu(cnn_onnx: Path, tmp_path: Path) -> None:
    runtime = get_runtime("onnxruntime")
    prepared = runtime.prepare(cnn_onnx, tmp_path)
    gpu = runtime.open(prepared, RunSettings(device="cuda"))
    assert gpu.providers[0] == "CUDAExecutionProvider"  # type: ignore[attr-defined]
    cpu = runtime.open(prepared, RunSettings(device="cpu"))
    feeds = {"input": EVAL_IMAGES}
    np.testing.assert_allclose(gpu.run(feeds)[0], cpu.run(feeds)[0], atol=1e-3, rtol=1e-3)


def test_tensorrt_runs_where_installed(cnn_onnx: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("ONNX Runtime here has no TensorRT provider")
    runtime = get_runtime("onnxruntime")
    runner = runtime.open(
        runtime.prepare(cnn_onnx, tmp_path), RunSettings(device="cuda", use_tensorrt=True)
    )
    assert runner.run({"input": EVAL_IMAGES[:4]})[0].shape == (4, 10)


def test_qat_trains_on_cuda(cnn_onnx: Path, tmp_path: Path) -> None:
    config = QUANTIZE_STEP_ADAPTER.validate_python(
        {"method": "quantize", "mode": "qat", "epochs": 1, "batch_size": 32}
    )
    output, peak = on_cuda("quantize", cnn_onnx, config, tmp_path)
    assert peak > 0
    assert output.details["training_device"] == "cuda"
    assert inspect_model(output.model_path).op_types["QuantizeLinear"] >= 4


def test_structured_pruning_fine_tunes_between_rounds_on_cuda(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    config = StructuredPrune.model_validate(
        {"method": "prune", "kind": "structured", "sparsity": 0.5, "iterations": 2,
         "importance": "taylor", "fine_tune": {"epochs": 1}}
    )  # fmt: skip
    output, peak = on_cuda("prune", cnn_onnx, config, tmp_path)
    assert peak > 0
    assert output.details["training_device"] == "cuda"


def test_distillation_trains_the_student_on_cuda(cnn_onnx: Path, tmp_path: Path) -> None:
    config = DistillStep.model_validate({"method": "distill", "epochs": 1})
    output, peak = on_cuda("distill", cnn_onnx, config, tmp_path)
    assert peak > 0
    assert output.details["training_device"] == "cuda"


def test_search_trials_train_on_cuda(cnn_onnx: Path, tmp_path: Path) -> None:
    config = SearchStep.model_validate(
        {"method": "search", "family": "mlp", "max_trials": 2, "epochs": 1, "batch_size": 32,
         "space": {"layers": 1, "units": {"low": 16, "high": 32}}}
    )  # fmt: skip
    _, peak = on_cuda("search", cnn_onnx, config, tmp_path)
    assert peak > 0
