"""Small models for the runtime adapters' tests, built in the test session (no blobs)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as helper
import onnx.numpy_helper as numpy_helper
import torch

from service.examples import TransformerEncoderClassifier, digits_sequences, export_onnx


def transformer_onnx(path: Path) -> Path:
    """A 2-layer attention encoder over (N, 8, 8) sequences: MatMul-heavy."""
    torch.manual_seed(0)
    sequences, _ = digits_sequences("test")
    return export_onnx(TransformerEncoderClassifier(d_model=32, heads=4, layers=2, ff=64),
                       sequences[:1], path)  # fmt: skip


def if_weights_onnx(path: Path) -> Path:
    """Weights inside the branches of an `If` whose outputs differ in rank (a (4, 3) matrix
    or a (4,) vector, chosen by the input's sum): ONNX Runtime runs it, OpenVINO's CPU
    plugin cannot compile an If of dynamic rank."""
    rng = np.random.default_rng(0)
    matrix = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "matrix")
    vector = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "vector")

    def branch(name: str, weight: onnx.TensorProto) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Identity", [weight.name], [f"{name}_w"])],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_w", onnx.TensorProto.FLOAT, None)],
            [weight],
        )

    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
            helper.make_node("Greater", ["total", "zero"], ["positive"]),
            helper.make_node(
                "If",
                ["positive"],
                ["weight"],
                then_branch=branch("then", matrix),
                else_branch=branch("else", vector),
            ),
            helper.make_node("MatMul", ["x", "weight"], ["y"]),
        ],
        "if_weights",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(0, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def interleaved_ms(callables: list[Callable[[], object]], runs: int) -> list[list[float]]:
    """Per-callable times in ms, run A B, B A, ... (a stand-in for the project's timing
    function, which takes the same zero-argument callables)."""
    times: list[list[float]] = [[] for _ in callables]
    order = list(range(len(callables)))
    for _ in range(runs):
        for index in order:
            start = time.perf_counter()
            callables[index]()
            times[index].append((time.perf_counter() - start) * 1000.0)
        order.reverse()
    return times
