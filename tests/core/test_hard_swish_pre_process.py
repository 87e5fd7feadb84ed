"""Pre-processing keeps HardSwish whole: quant_pre_process splits it into HardSigmoid and
Mul, which quantized ran a MobileNet-sized depthwise CNN at 0.66x FP32 instead of 2.06x."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from core.quantize.common import pre_process, restore_hard_swish
from tests.factories import export_onnx

INPUT = np.random.default_rng(0).normal(size=(3, 4, 6, 6)).astype(np.float32)


class Activations(nn.Module):
    """Two HardSwish after convs, and a squeeze-excite gate: x * hardsigmoid(pool(x)),
    whose HardSigmoid feeds a Mul with another tensor (not a HardSwish)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.act = nn.Hardswish()
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv2(self.act(self.conv(x))))
        return y * self.gate(y.mean(dim=(2, 3), keepdim=True))


def op_counts(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(path).graph.node)


def run(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": INPUT})[0])


def test_pre_processing_keeps_hard_swish_and_leaves_gates_alone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = export_onnx(Activations().eval(), INPUT, tmp_path / "model.onnx")
    assert op_counts(source)["HardSwish"] == 2

    prepared, note = pre_process(source, tmp_path / "prepared.onnx")

    counts = op_counts(prepared)
    assert counts["HardSwish"] == 2 and counts["HardSigmoid"] == 1  # the gate stays
    assert "2 HardSwish restored" in note
    onnx.checker.check_model(str(prepared), full_check=True)  # unique node names, types
    np.testing.assert_allclose(run(prepared), run(source), atol=1e-5)


def test_only_the_hard_swish_pattern_is_fused() -> None:
    x, gate, y = "x", "gate", "y"
    other_alpha = onnx.helper.make_node("HardSigmoid", [x], [gate], alpha=0.2, beta=0.5)
    nodes = [other_alpha, onnx.helper.make_node("Mul", [x, gate], [y])]
    graph = onnx.helper.make_graph(
        nodes,
        "g",
        [onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, [2])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])

    assert restore_hard_swish(model) == 0
    assert [node.op_type for node in model.graph.node] == ["HardSigmoid", "Mul"]
