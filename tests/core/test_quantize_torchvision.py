"""Quantization of real-world architectures: torchvision's models, exported at several opsets.

Not the project's own networks: these are the graphs users export (MobileNetV3 with
HardSwish/HardSigmoid and squeeze-excitation, ResNet with BatchNorm and residual adds,
ShuffleNetV2 with channel shuffles and concats, SqueezeNet with concats). Weights are
random (nothing is downloaded); what is checked is that each mode yields a valid, smaller
model that runs and agrees with the original.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

from core.context import RunContext
from core.data import load_arrays
from core.formats import inspect_model
from core.registry import StepData, get_step
from core.spec import QUANTIZE_STEP_ADAPTER, TaskSpec
from service.examples import export_onnx

pytestmark = pytest.mark.filterwarnings("ignore")

ARCHITECTURES: dict[str, Callable[[], torch.nn.Module]] = {
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "shufflenet_v2_x0_5": lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10),
    "squeezenet1_1": lambda: torchvision.models.squeezenet1_1(num_classes=10),
}
CASES = [
    ("mobilenet_v3_small", 13, "static"),
    ("mobilenet_v3_small", 17, "dynamic"),
    ("resnet18", 17, "static"),
    ("resnet18", 12, "fp16"),
    ("shufflenet_v2_x0_5", 11, "static"),
    ("squeezenet1_1", 17, "static"),
]
IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("tv") / "images.npz"
    np.savez(path, input=rng.random((16, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32))
    return path


@pytest.mark.parametrize(("name", "opset", "mode"), CASES, ids=lambda v: str(v))
def test_torchvision_architecture_quantizes_to_a_model_that_agrees(
    name: str, opset: int, mode: str, images: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    module = ARCHITECTURES[name]().eval()
    example = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    model = export_onnx(module, example, tmp_path / f"{name}.onnx", opset=opset)
    arrays = load_arrays(images)
    data = StepData(arrays, arrays, inspect_model(model).inputs, TaskSpec(kind="classification"))
    config = QUANTIZE_STEP_ADAPTER.validate_python(
        {
            "method": "quantize",
            "mode": mode,
            **({"calibration_samples": 16} if mode == "static" else {}),
        }
    )
    output = get_step("quantize")(model, config, data, RunContext(work_dir=tmp_path / "q"))

    feeds = {"input": arrays["input"]}
    original = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    quantized = ort.InferenceSession(str(output.model_path), providers=["CPUExecutionProvider"])
    reference = original.run(None, feeds)[0]
    result = quantized.run(None, feeds)[0]
    cosine = float(
        (reference * result).sum() / (np.linalg.norm(reference) * np.linalg.norm(result))
    )
    assert cosine > 0.9, f"{name} opset {opset} {mode}: cosine {cosine:.4f}"
    assert output.model_path.stat().st_size < model.stat().st_size
