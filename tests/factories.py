"""Small models and datasets built in the test session (no shipped blobs).

The digits CNN and ONNX export come from `service.examples` (what a user runs on their
side); this adds an MLP for the regression and embedding tasks, .npz writers and a
harmless pickle payload.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnx.numpy_helper
import torch

# The user-side builders are the ones the demo and benchmarks use.
from service.examples import DigitsCNN, digits_arrays, export_onnx, train_digits_cnn

__all__ = ["DigitsCNN", "digits_arrays", "export_onnx", "train_digits_cnn"]

Split = Literal["train", "test"]


def make_mlp(
    in_features: int = 64, hidden: int = 256, out_features: int = 32, seed: int = 0
) -> torch.nn.Module:
    """A randomly initialised (seeded) MLP: an "embedding" or regression model on
    flattened digits. Its weights are big enough for quantization to shrink the file."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(in_features, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, out_features),
    ).eval()


def digits_npz(
    path: Path, split: Split = "test", n: int | None = None, *, labels: bool = True
) -> Path:
    """Write digits as an .npz: "input" float32 (N, 1, 8, 8) and "label" int64 (N,)."""
    images, targets = digits_arrays(split)
    arrays: dict[str, Any] = {"input": images[:n]}  # Any: numpy's stub types savez's **kwds
    if labels:
        arrays["label"] = targets[:n]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def flat_digits_npz(
    path: Path, split: Split = "test", n: int | None = None, *, targets: np.ndarray | None = None
) -> Path:
    """Digits flattened to "input" float32 (N, 64), for the MLP; optional "label" targets
    (e.g. regression targets) written alongside."""
    images, _ = digits_arrays(split)
    arrays: dict[str, Any] = {"input": images[:n].reshape(-1, 64)}
    if targets is not None:
        arrays["label"] = targets
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def student_cnn_onnx(path: Path, *, classes: int = 10, input_name: str = "input") -> Path:
    """A small, untrained (seeded) DigitsCNN exported to ONNX: a student to upload."""
    torch.manual_seed(1)
    module = DigitsCNN(width=8, hidden=16)
    if classes != 10:
        module.classifier[-1] = torch.nn.Linear(16, classes)
    images, _ = digits_arrays("test")
    return export_onnx(module, images[:1], path, input_name=input_name)


def hardmax_classifier_onnx(path: Path) -> Path:
    """(N, 1, 8, 8) -> Flatten -> Gemm -> Hardmax (N, 10): a digits-shaped model ONNX
    Runtime runs but onnx2torch cannot convert (it has no Hardmax converter)."""
    weight = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Flatten", ["input"], ["flat"]),
            onnx.helper.make_node("Gemm", ["flat", "w"], ["scores"]),
            onnx.helper.make_node("Hardmax", ["scores"], ["logits"]),
        ],
        "hardmax",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["n", 1, 8, 8])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["n", 10])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


class MkdirOnUnpickle:
    """Unpickling this creates `marker` as a directory: a harmless stand-in for the code a
    malicious pickle would run. Tests assert the marker never appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _digits_head(extra: onnx.NodeProto, extra_output: str, nodes: list[onnx.NodeProto]) -> Any:
    """Digits in (N, 1, 8, 8), ten logits out: a linear head plus a scalar (always 0)
    that `nodes` compute from the input, so ONNX Runtime cannot fold them away."""
    from onnx import TensorProto, helper

    weights = onnx.numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32), "weights"
    )
    head = [
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
        helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "zero"], ["nothing"]),  # 0, but from the input
        *nodes,
        extra,
        helper.make_node("Add", ["logits", extra_output], ["output"]),
    ]
    graph = helper.make_graph(
        head,
        "digits_head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])],
        [weights, onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def endless_loop_onnx(path: Path, trip_count: float = 1e18) -> Path:
    """A digits model whose `Loop` runs `trip_count` times (computed from the input, so
    no upload check can see it): measuring it never ends."""
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["carried_in"], ["carried_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_out", TensorProto.FLOAT, []),
        ],
    )
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["trips"],
            value=helper.make_tensor("t", TensorProto.FLOAT, [], [trip_count]),
        ),
        helper.make_node("Add", ["nothing", "trips"], ["trips_f"]),
        helper.make_node("Cast", ["trips_f"], ["trip_count"], to=TensorProto.INT64),
        helper.make_node(
            "Constant", [], ["go"], value=helper.make_tensor("g", TensorProto.BOOL, [], [True])
        ),
    ]
    loop = helper.make_node("Loop", ["trip_count", "go", "nothing"], ["looped"], body=body)
    onnx.save(_digits_head(loop, "looped", nodes), path)
    return path


def memory_hog_onnx(path: Path, floats: int) -> Path:
    """A digits model that allocates `floats` float32s (a size computed from the input)
    on every run."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["count"],
            value=helper.make_tensor("c", TensorProto.FLOAT, [1], [floats]),
        ),
        helper.make_node("Add", ["nothing", "count"], ["count_f"]),
        helper.make_node("Cast", ["count_f"], ["shape"], to=TensorProto.INT64),
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["big"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]),
        ),
    ]
    reduce = helper.make_node("ReduceSum", ["big"], ["hogged"], keepdims=0)
    onnx.save(_digits_head(reduce, "hogged", nodes), path)
    return path
def distinct_copy(model: Path, destination: Path, tag: str) -> Path:
    """The same ONNX model with other bytes (its doc string says `tag`): a second model
    where an identical file would be reused as the first upload."""
    destination.write_bytes(distinct_bytes(model, tag))
    return destination


def distinct_bytes(path: Path, tag: str) -> bytes:
    """The bytes of the same ONNX model (its doc string says `tag`) or `.npz` dataset
    (its zip comment says it), but not the same bytes: uploads the service does not
    reuse as one."""
    if path.suffix == ".npz":
        buffer = io.BytesIO(path.read_bytes())
        with zipfile.ZipFile(buffer, "a") as archive:
            archive.comment = tag.encode()
        return buffer.getvalue()
    proto = onnx.load(str(path))
    proto.doc_string = tag
    return proto.SerializeToString()
