"""The corpus's models: small, built here from code (nothing committed), each with the
data and task a job would give it.

What the corpus spans (issue 14, "robust on other toolchains' exports"):
- exporters: torch.onnx's TorchScript and dynamo exporters, skl2onnx (scikit-learn),
  ONNX's own `onnx.helper`, onnxscript;
- opsets 7 to 21: the same small CNN exported by torch at 7, 9, 11, 13, 15, 17, 19, 21
  and the same scikit-learn MLP converted at the same target opsets (skl2onnx writes the
  lowest opset its ops need: 14 for 15, 16 for 17);
- control flow with weights inside: an `If` whose branches hold their heads, a `Loop`
  whose body holds its layer;
- fixed and symbolic dims: a model pinning batch 1, one with symbolic batch and sequence;
- ONNX-ML ops (skl2onnx's LinearRegressor, ArgMax + ArrayFeatureExtractor labels);
- a stateful GRU (torch-exported) with an explicit state input and a new-state output:
  batch-first and [layers, batch, hidden] (its state bound with its samples on axis 1:
  `task.inputs`).

Every model reads digits: images (N, 1, 8, 8), flattened (N, 64) or rows as a sequence
(N, 8, 8); classifiers give 10 class scores.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from service.examples import DigitsCNN, digits_arrays, export_onnx, train_classifier
from tests.core import zoo

Inputs = Literal["images", "flat", "sequences", "gru_state", "gru_state_layers_first"]
OPSETS = (7, 9, 11, 13, 15, 17, 19, 21)
GRU_HIDDEN, GRU_LAYERS = 16, 2
# Rows per dataset: enough for a metric and a split, few enough to stay fast.
EVAL_ROWS, TRAIN_ROWS = 128, 256


@dataclass(frozen=True)
class CorpusModel:
    """How to build one model, and what a job for it looks like."""

    name: str
    exporter: str
    what: str  # what this model stands for in the corpus
    inputs: Inputs
    build: Callable[[Path], Path]
    task: dict[str, Any] = field(default_factory=dict)  # TaskSpec fields
    pending: str | None = None  # why its jobs cannot be written yet
    # fewer rows for a model that runs one row at a time (batch pinned to 1)
    train_rows: int = TRAIN_ROWS
    eval_rows: int = EVAL_ROWS


# --- torch --------------------------------------------------------------------------------


def _trained_cnn() -> nn.Module:
    torch.manual_seed(0)
    images, labels = digits_arrays("train")
    model = DigitsCNN(width=8, hidden=16)
    return train_classifier(model, images[:512], labels[:512], epochs=2, lr=3e-3, seed=0)


_CACHE: dict[str, nn.Module] = {}


def _cached(name: str, make: Callable[[], nn.Module]) -> nn.Module:
    if name not in _CACHE:
        _CACHE[name] = make()
    return _CACHE[name]


def torch_cnn(opset: int | Literal["dynamo"]) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        module = _cached("cnn", _trained_cnn)
        example, _ = digits_arrays("test")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old opsets warn; exporting at them is the point
            if opset == "dynamo":
                return export_onnx(module, example[:1], path, opset=18, dynamo=True)
            return export_onnx(module, example[:1], path, opset=opset)

    return build


def torch_fixed_batch(path: Path) -> Path:
    """The CNN with its batch pinned to 1 (exported without dynamic axes)."""
    example, _ = digits_arrays("test")
    return export_onnx(_cached("cnn", _trained_cnn), example[:1], path, dynamic_batch=False)


def torch_symbolic_sequence(path: Path) -> Path:
    """A per-step MLP over sequences whose batch and length are both symbolic."""

    def make() -> nn.Module:
        torch.manual_seed(0)
        rows, labels = _sequences("train")
        return train_classifier(zoo.SequenceMLP(hidden=16), rows[:512], labels[:512], epochs=2)

    rows, _ = _sequences("test")
    return zoo.export_with_symbolic_sequence(_cached("sequence_mlp", make), rows[:2], path)


class StatefulGRU(nn.Module):
    """A 2-layer GRU classifier with its state as an explicit input and output.

    `layers_first=False` takes and returns the state as (batch, layers, hidden): a
    wrapper transposes it around the GRU, which wants (layers, batch, hidden). Streaming
    models upload the latter, which `layers_first=True` keeps.
    """

    def __init__(self, layers_first: bool) -> None:
        super().__init__()
        self.layers_first = layers_first
        self.gru = nn.GRU(8, GRU_HIDDEN, num_layers=GRU_LAYERS, batch_first=True)
        self.head = nn.Linear(GRU_HIDDEN, 10)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = state if self.layers_first else state.transpose(0, 1).contiguous()
        outputs, new_state = self.gru(x, hidden)
        logits = self.head(outputs[:, -1])
        return logits, new_state if self.layers_first else new_state.transpose(0, 1)


class _FromZeroState(nn.Module):
    """Trains a StatefulGRU as a plain classifier: every sequence starts from zeros."""

    def __init__(self, gru: StatefulGRU) -> None:
        super().__init__()
        self.gru = gru

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (GRU_LAYERS, len(x), GRU_HIDDEN) if self.gru.layers_first else (
            len(x), GRU_LAYERS, GRU_HIDDEN
        )  # fmt: skip
        return self.gru(x, torch.zeros(shape))[0]


def _trained_gru(layers_first: bool) -> StatefulGRU:
    torch.manual_seed(0)
    gru = StatefulGRU(layers_first)
    rows, labels = _sequences("train")
    train_classifier(_FromZeroState(gru), rows[:512], labels[:512], epochs=2, lr=1e-2, seed=0)
    return gru.eval()


def torch_stateful_gru(layers_first: bool) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        module = _cached(f"gru-{layers_first}", lambda: _trained_gru(layers_first))
        rows, _ = _sequences("test")
        x = torch.from_numpy(rows[:2])
        state_shape = (GRU_LAYERS, 2, GRU_HIDDEN) if layers_first else (2, GRU_LAYERS, GRU_HIDDEN)
        batch_axis = 1 if layers_first else 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter warns about RNN batch sizes
            torch.onnx.export(
                module,
                (x, torch.zeros(state_shape)),
                str(path),
                input_names=["input", "state"],
                output_names=["logits", "new_state"],
                dynamic_axes={
                    "input": {0: "batch"},
                    "state": {batch_axis: "batch"},
                    "logits": {0: "batch"},
                    "new_state": {batch_axis: "batch"},
                },
                opset_version=17,
                dynamo=False,
            )
        return path

    return build


# --- scikit-learn via skl2onnx -------------------------------------------------------------


def _flat(split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = digits_arrays(split)
    return images.reshape(len(images), -1), labels


def sklearn_mlp(opset: int) -> Callable[[Path], Path]:
    """MLPClassifier (one hidden layer of 32) on flattened digits; outputs "label"
    (ArgMax + ai.onnx.ml ArrayFeatureExtractor) and "probabilities" (Softmax)."""

    def build(path: Path) -> Path:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
        from sklearn.neural_network import MLPClassifier

        def fit() -> Any:
            x, y = _flat("train")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # not converged in 40 iterations: fine here
                return MLPClassifier(hidden_layer_sizes=(32,), max_iter=40, random_state=0).fit(
                    x[:600], y[:600]
                )

        classifier = _cached("sklearn_mlp", fit)
        model = convert_sklearn(
            classifier,
            initial_types=[("input", FloatTensorType([None, 64]))],
            target_opset={"": opset, "ai.onnx.ml": 1},
            options={id(classifier): {"zipmap": False}},  # probabilities as a tensor
        )
        return zoo.save(model, path)

    return build


def sklearn_linear_regression(path: Path) -> Path:
    """LinearRegression on flattened digits (the digit as a number): one ai.onnx.ml
    LinearRegressor node, no ONNX-domain op at all."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    x, y = _flat("train")
    regression = LinearRegression().fit(x, y.astype(np.float32))
    model = to_onnx(regression, x[:1], target_opset={"": 17, "ai.onnx.ml": 1})
    model.graph.input[0].name = "input"
    for node in model.graph.node:
        node.input[:] = ["input" if name == "X" else name for name in node.input]
    return zoo.save(model, path)


# --- ONNX's own helpers --------------------------------------------------------------------


def helper_mlp(path: Path) -> Path:
    """Written by hand with onnx.helper at opset 13: Flatten, Gemm (transB), Relu, MatMul
    + Add, Softmax; named nodes, a symbolic batch."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        values = rng.normal(0, 1 / np.sqrt(shape[-1]), shape).astype(np.float32)
        return numpy_helper.from_array(values, name)

    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Add", ["h2", "b2"], ["logits"], name="fc2_bias"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    initializers = [
        weight("w1", 32, 64),
        numpy_helper.from_array(np.zeros(32, np.float32), "b1"),
        weight("w2", 32, 10),
        numpy_helper.from_array(np.zeros(10, np.float32), "b2"),
    ]
    graph = helper.make_graph(
        nodes,
        "helper_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return zoo.save(model, path)


def helper_graph(make: Callable[[], onnx.ModelProto]) -> Callable[[Path], Path]:
    return lambda path: zoo.save(make(), path)


# --- onnxscript ----------------------------------------------------------------------------


def onnxscript_mlp(path: Path) -> Path:
    from tests.corpus.onnxscript_models import mlp_model

    return zoo.save(mlp_model(), path)


# --- data --------------------------------------------------------------------------------


def _sequences(split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = digits_arrays(split)
    return images[:, 0], labels


def arrays(inputs: Inputs, split: Literal["train", "test"], rows: int) -> dict[str, np.ndarray]:
    """A dataset for `inputs`: every array's samples on axis 0, labels as "label" and, for
    regression, "target"."""
    if inputs == "images":
        x, y = digits_arrays(split)
    elif inputs == "flat":
        x, y = _flat(split)
    else:
        x, y = _sequences(split)
    data: dict[str, np.ndarray] = {
        "input": np.ascontiguousarray(x[:rows]),
        "label": y[:rows],
        "target": y[:rows].astype(np.float32).reshape(-1, 1),
    }
    if inputs == "gru_state":
        data["state"] = np.zeros((len(data["input"]), GRU_LAYERS, GRU_HIDDEN), np.float32)
    if inputs == "gru_state_layers_first":
        # the samples on axis 1, as the model takes its state (task.inputs binds it)
        data["state"] = np.zeros((GRU_LAYERS, len(data["input"]), GRU_HIDDEN), np.float32)
    return data


def _corpus() -> list[CorpusModel]:
    models = [
        CorpusModel(
            f"torch_cnn@{opset}",
            "torch.onnx (TorchScript)",
            f"small CNN (Conv, Relu, Flatten, Gemm) at opset {opset}",
            "images",
            torch_cnn(opset),
        )
        for opset in OPSETS
    ]
    models.append(
        CorpusModel(
            "torch_cnn@dynamo",
            "torch.onnx (dynamo, onnxscript)",
            "the same CNN through torch.export (opset 18)",
            "images",
            torch_cnn("dynamo"),
        )
    )
    models += [
        CorpusModel(
            f"sklearn_mlp@{opset}",
            "skl2onnx",
            f"MLPClassifier, target opset {opset}; label and probabilities outputs",
            "flat",
            sklearn_mlp(opset),
            task={"output": "probabilities"},
        )
        for opset in OPSETS
    ]
    models += [
        CorpusModel(
            "sklearn_linear_regression",
            "skl2onnx",
            "LinearRegression: one ai.onnx.ml LinearRegressor",
            "flat",
            sklearn_linear_regression,
            task={"kind": "regression", "labels": "target"},
        ),
        CorpusModel(
            "helper_mlp",
            "onnx.helper",
            "hand-written MLP, Gemm transB, Softmax output, opset 13",
            "images",
            helper_mlp,
        ),
        CorpusModel(
            "helper_if",
            "onnx.helper",
            "If whose branches hold their own (32, 10) heads",
            "images",
            helper_graph(zoo.if_model),
        ),
        CorpusModel(
            "helper_loop",
            "onnx.helper",
            "Loop whose body holds a (32, 32) layer",
            "images",
            helper_graph(zoo.loop_model),
        ),
        CorpusModel(
            "onnxscript_mlp",
            "onnxscript",
            "MLP as an onnxscript function (opset 18), weights bound as initializers",
            "flat",
            onnxscript_mlp,
        ),
        CorpusModel(
            "torch_fixed_batch",
            "torch.onnx (TorchScript)",
            "the CNN with batch pinned to 1",
            "images",
            torch_fixed_batch,
            train_rows=16,
            eval_rows=32,
        ),
        CorpusModel(
            "torch_symbolic_sequence",
            "torch.onnx (TorchScript)",
            "per-step MLP, symbolic batch and sequence length",
            "sequences",
            torch_symbolic_sequence,
        ),
        CorpusModel(
            "torch_gru_state",
            "torch.onnx (TorchScript)",
            "2-layer GRU, state input and new-state output as (batch, layers, hidden)",
            "gru_state",
            torch_stateful_gru(layers_first=False),
            task={"output": "logits"},
        ),
        CorpusModel(
            "torch_gru_state_layers_first",
            "torch.onnx (TorchScript)",
            "2-layer GRU, state input and new-state output as (layers, batch, hidden)",
            "gru_state_layers_first",
            torch_stateful_gru(layers_first=True),
            task={"output": "logits", "inputs": {"state": {"array": "state", "sample_axis": 1}}},
        ),
    ]
    return models


CORPUS: dict[str, CorpusModel] = {model.name: model for model in _corpus()}
