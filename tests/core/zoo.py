"""Odd graphs for the quantization robustness tests, built in the test session.

Every model here takes the digits as "input": images (N, 1, 8, 8) or, for the sequence
models, rows as a sequence (N, 8, 8); and gives 10 class scores as "logits". The common
architectures (MobileNet-, ResNet-style, Transformer, LSTM/GRU) live in
`service.examples`; this file adds what users upload less often but does break
quantizers: hard activations, upsampling, control flow with weights inside, symbolic
dims beyond the batch, a graph shape inference cannot finish, and exports at several
opsets and with the dynamo exporter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from service.examples import export_onnx

FLOAT = TensorProto.FLOAT


class HardActivationNet(nn.Module):
    """Conv + BatchNorm + HardSwish, a squeeze-excite gate through HardSigmoid, a head.
    Exported at opset >= 14 as HardSwish; below, as HardSigmoid + Mul."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.Hardswish()
        )
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, width, 1), nn.Hardsigmoid()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        return self.head(features * self.gate(features))


class UpsamplingNet(nn.Module):
    """Strided conv down (4x4), ConvTranspose up (8x8), nearest Resize up (16x16), conv,
    global pooling, a head: the decoder half of segmentation-style models."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width, 2, stride=2),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SequenceMLP(nn.Module):
    """Per-step Linear + ReLU, mean over the steps, a head: runs on any sequence length."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.step = nn.Sequential(nn.Linear(8, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.step(x).mean(dim=1))


def export_with_symbolic_sequence(
    module: nn.Module, example: np.ndarray, path: Path, opset: int = 17
) -> Path:
    """Export a sequence model with both the batch and the sequence length symbolic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module,
            (torch.from_numpy(example),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def export_at(module: nn.Module, example: np.ndarray, path: Path, opset: int | str) -> Path:
    """Export at an opset (TorchScript exporter) or, for "dynamo", with torch.export."""
    if opset == "dynamo":
        return export_onnx(module, example, path, opset=18, dynamo=True)
    return export_onnx(module, example, path, opset=int(opset))


# --- hand-built graphs -------------------------------------------------------------------


def _weight(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    scale = 1.0 / np.sqrt(shape[0])
    return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)


def _model(graph: onnx.GraphProto, *, contrib: bool = False) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", 17)]
    if contrib:
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _flatten_and_hidden(
    rng: np.random.Generator,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """input (N,1,8,8) -> "hidden" (N,32): Reshape, MatMul, Add, Relu in the main graph."""
    nodes = [
        helper.make_node("Reshape", ["input", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "w_in"], ["hidden_mm"], name="hidden_matmul"),
        helper.make_node("Add", ["hidden_mm", "b_in"], ["hidden_pre"], name="hidden_add"),
        helper.make_node("Relu", ["hidden_pre"], ["hidden"], name="hidden_relu"),
    ]
    initializers = [
        numpy_helper.from_array(np.array([-1, 64], np.int64), "flat_shape"),
        _weight(rng, "w_in", 64, 32),
        numpy_helper.from_array(np.zeros(32, np.float32), "b_in"),
    ]
    return nodes, initializers


def _io() -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    return (
        helper.make_tensor_value_info("input", FLOAT, ["batch", 1, 8, 8]),
        helper.make_tensor_value_info("logits", FLOAT, ["batch", 10]),
    )


# Weights each branch of if_model holds: two (32, 10) matrices and their biases.
IF_SUBGRAPH_WEIGHTS = {"count": 4, "bytes": 2 * (32 * 10 + 10) * 4}
# Weights loop_model's body holds: one (32, 32) matrix and its bias.
LOOP_SUBGRAPH_WEIGHTS = {"count": 2, "bytes": (32 * 32 + 32) * 4}


def if_model(seed: int = 0) -> onnx.ModelProto:
    """A main-graph hidden layer, then an If on the mean pixel (bright vs dark digits)
    whose branches each hold their own (32, 10) head as subgraph initializers."""
    rng = np.random.default_rng(seed)
    nodes, initializers = _flatten_and_hidden(rng)

    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph(
            [
                helper.make_node("MatMul", ["hidden", f"w_{name}"], [f"mm_{name}"]),
                helper.make_node("Add", [f"mm_{name}", f"b_{name}"], [f"out_{name}"]),
            ],
            name,
            [],
            [helper.make_tensor_value_info(f"out_{name}", FLOAT, ["batch", 10])],
            initializer=[
                _weight(rng, f"w_{name}", 32, 10),
                numpy_helper.from_array(rng.normal(size=10).astype(np.float32), f"b_{name}"),
            ],
        )

    nodes += [
        helper.make_node("ReduceMean", ["input"], ["brightness"], keepdims=0, name="brightness"),
        helper.make_node("Greater", ["brightness", "threshold"], ["bright"], name="is_bright"),
        helper.make_node(
            "If",
            ["bright"],
            ["logits"],
            name="branch_on_brightness",
            then_branch=branch("bright_head"),
            else_branch=branch("dark_head"),
        ),
    ]
    initializers.append(numpy_helper.from_array(np.array(0.3, np.float32), "threshold"))
    x, y = _io()
    return _model(helper.make_graph(nodes, "if_model", [x], [y], initializer=initializers))


def loop_model(seed: int = 0, steps: int = 3) -> onnx.ModelProto:
    """A main-graph hidden layer, a Loop applying a (32, 32) Tanh layer held in its body
    `steps` times, and a main-graph head."""
    rng = np.random.default_rng(seed)
    nodes, initializers = _flatten_and_hidden(rng)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["state_in", "w_loop"], ["state_mm"], name="loop_mm"),
            helper.make_node("Add", ["state_mm", "b_loop"], ["state_pre"], name="loop_add"),
            helper.make_node("Tanh", ["state_pre"], ["state_out"], name="loop_tanh"),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", FLOAT, ["batch", 32]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", FLOAT, ["batch", 32]),
        ],
        initializer=[
            _weight(rng, "w_loop", 32, 32),
            numpy_helper.from_array(np.zeros(32, np.float32), "b_loop"),
        ],
    )
    nodes += [
        helper.make_node(
            "Loop", ["trip_count", "keep_going", "hidden"], ["looped"], name="repeat", body=body
        ),
        helper.make_node("MatMul", ["looped", "w_out"], ["logits"], name="head_mm"),
    ]
    initializers += [
        numpy_helper.from_array(np.array(steps, np.int64), "trip_count"),
        numpy_helper.from_array(np.array(True), "keep_going"),
        _weight(rng, "w_out", 32, 10),
    ]
    x, y = _io()
    return _model(helper.make_graph(nodes, "loop_model", [x], [y], initializer=initializers))


def uninferable_shapes_model(seed: int = 0) -> onnx.ModelProto:
    """Runs in ONNX Runtime, but shape inference cannot finish it: a value_info that
    contradicts the real shape (strict ONNX inference fails) and a com.microsoft
    FusedMatMul head, an op neither ONNX nor onnxruntime's symbolic shape inference knows
    ("Incomplete symbolic shape inference" in quant_pre_process)."""
    rng = np.random.default_rng(seed)
    nodes, initializers = _flatten_and_hidden(rng)
    nodes.append(
        helper.make_node(
            "FusedMatMul",
            ["hidden", "w_head"],
            ["logits"],
            name="fused_head",
            domain="com.microsoft",
            transB=1,
            alpha=1.0,
        )
    )
    initializers.append(_weight(rng, "w_head", 10, 32))
    wrong = [helper.make_tensor_value_info("hidden_mm", FLOAT, ["batch", 32, 1])]
    x, y = _io()
    graph = helper.make_graph(
        nodes, "uninferable", [x], [y], initializer=initializers, value_info=wrong
    )
    return _model(graph, contrib=True)


def conv_only_model(seed: int = 0) -> onnx.ModelProto:
    """A fully convolutional classifier: Conv, Relu, a 1x1 Conv to 10 channels, global
    pooling. No MatMul or Gemm anywhere (nothing for weight-only int4)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["input", "w_conv", "b_conv"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "w_classes"], ["scores"]),
        helper.make_node("GlobalAveragePool", ["scores"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
    ]
    initializers = [
        _weight(rng, "w_conv", 8, 1, 3, 3),
        numpy_helper.from_array(np.zeros(8, np.float32), "b_conv"),
        _weight(rng, "w_classes", 10, 8, 1, 1),
    ]
    x, y = _io()
    return _model(helper.make_graph(nodes, "conv_only", [x], [y], initializer=initializers))


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path
