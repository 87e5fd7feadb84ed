"""Attention-head pruning by ONNX surgery: blocks are found in the graphs exporters
write, the surgery is exact (the pruned model computes what the original does with those
heads masked), and the result is physically smaller."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from core.context import RunContext
from core.errors import UnsupportedModel
from core.families import TransformerFamily, build
from core.formats import inspect_model
from core.measure import score
from core.prune.heads import find_attention_blocks, prune_heads
from core.registry import StepData, StepOutput, get_step
from core.spec import PruneConfig, StructuredPrune, TaskSpec, UnstructuredPrune
from tests.factories import export_onnx

LENGTH, FEATURES, CLASSES = 6, 5, 3
FEEDS = {"input": np.random.default_rng(0).random((2, LENGTH, FEATURES), dtype=np.float32)}
# another batch size than the one the surgery saw: the batch stays dynamic
CHECK = np.random.default_rng(1).random((3, LENGTH, FEATURES), dtype=np.float32)


class SelfAttention(nn.Module):
    """BERT-style attention: separate q/k/v projections, view to (B, S, H, dh)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query, self.key, self.value, self.out = (nn.Linear(hidden, hidden) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        context = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2)
        return x + self.out(context.reshape(batch, length, self.heads * self.head_dim))


class BertStyle(nn.Module):
    """(N, L, F) -> embed -> `layers` self-attention blocks -> mean over L -> classes."""

    def __init__(self, hidden: int = 24, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, hidden)
        self.blocks = nn.Sequential(*(SelfAttention(hidden, heads) for _ in range(layers)))
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)).mean(dim=1))

    def attention(self) -> list[SelfAttention]:
        return [block for block in self.blocks if isinstance(block, SelfAttention)]


def family_transformer() -> nn.Module:
    """nn.TransformerEncoder (packed in_proj) as core.families builds it; dh 6 != H 4."""
    torch.manual_seed(0)
    config = TransformerFamily(layers=2, heads=4, hidden=24, feed_forward=32)
    module = build(config, (LENGTH, FEATURES), CLASSES).eval()
    with torch.no_grad():  # as trained: layers differ (TorchScript shares equal weights)
        for parameter in module.parameters():
            parameter.normal_(std=0.2)
    return module


def bert_style() -> BertStyle:
    torch.manual_seed(0)
    return BertStyle().eval()


def out_projections(module: nn.Module) -> list[nn.Linear]:
    """Each block's output projection, in graph order."""
    if isinstance(module, BertStyle):
        return [block.out for block in module.attention()]
    return [
        layer.out_proj for layer in module.modules() if isinstance(layer, nn.MultiheadAttention)
    ]


Exporter = tuple[Callable[[], nn.Module], bool]
MODELS: dict[str, Exporter] = {
    "transformer-encoder": (family_transformer, False),
    "transformer-encoder-dynamo": (family_transformer, True),
    "bert-style": (bert_style, False),
}


def export(module: nn.Module, path: Path, *, dynamo: bool = False) -> Path:
    return export_onnx(module, FEEDS["input"], path, opset=18 if dynamo else 17, dynamo=dynamo)


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[nn.Module, onnx.ModelProto, bool]:
    make, dynamo = MODELS[request.param]
    module = make()
    path = export(module, tmp_path_factory.mktemp("heads") / "model.onnx", dynamo=dynamo)
    return module, onnx.load(path), dynamo


def run(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": inputs})[0])


def weight_elements(model: onnx.ModelProto) -> int:
    """Elements of the 2-D float initializers: the projections' weights (biases are
    left out, exporters share equal ones)."""
    arrays = (numpy_helper.to_array(init) for init in model.graph.initializer)
    return sum(array.size for array in arrays if array.dtype.kind == "f" and array.ndim == 2)


def test_each_block_is_found_with_its_heads_and_projections(
    exported: tuple[nn.Module, onnx.ModelProto, bool],
) -> None:
    module, model, _ = exported
    blocks = find_attention_blocks(model, FEEDS)

    assert [(block.heads, block.head_dim) for block in blocks] == [(4, 6), (4, 6)]
    packed = not isinstance(module, BertStyle)
    expected = [3] if packed else [1, 1, 1]  # one in_proj packing q, k, v; or three
    assert all(sorted(c for _, c in block.projections) == expected for block in blocks)


def test_removing_no_head_leaves_the_model_as_it_was(
    exported: tuple[nn.Module, onnx.ModelProto, bool],
) -> None:
    _, model, _ = exported
    result = prune_heads(model, 0.1, "l1", FEEDS)  # round(0.4) = 0 heads

    assert [(r.heads_before, r.heads_after, r.removed_heads) for r in result.blocks] == [
        (4, 4, []),
        (4, 4, []),
    ]
    np.testing.assert_allclose(run(result.model, CHECK), run(model, CHECK), atol=1e-5)


def test_the_pruned_model_computes_the_original_with_those_heads_masked(
    exported: tuple[nn.Module, onnx.ModelProto, bool], tmp_path: Path
) -> None:
    module, model, dynamo = exported
    result = prune_heads(model, 0.5, "l2", FEEDS)

    masked = copy.deepcopy(module)
    with torch.no_grad():
        for record, projection in zip(result.blocks, out_projections(masked), strict=True):
            assert (record.heads_before, record.heads_after) == (4, 2)
            for head in record.removed_heads:
                projection.weight[:, head * 6 : (head + 1) * 6] = 0
    reference = onnx.load(export(masked, tmp_path / "masked.onnx", dynamo=dynamo))
    pruned = run(result.model, CHECK)
    assert pruned.shape == (3, CLASSES)
    np.testing.assert_allclose(pruned, run(reference, CHECK), atol=1e-4)
    assert not np.allclose(pruned, run(model, CHECK), atol=1e-4)  # heads really mattered


def test_the_pruned_model_is_physically_smaller(
    exported: tuple[nn.Module, onnx.ModelProto, bool],
) -> None:
    _, model, _ = exported
    result = prune_heads(model, 0.5, "l1", FEEDS)

    onnx.checker.check_model(result.model)
    hidden, head_dim, removed = 24, 6, 2
    # per block and removed head: q/k/v weight columns and output projection rows
    per_head = 4 * hidden * head_dim
    assert weight_elements(model) - weight_elements(result.model) == 2 * removed * per_head
    assert len(result.model.SerializeToString()) < len(model.SerializeToString())


def test_the_least_important_heads_go(tmp_path: Path) -> None:
    module = bert_style()
    with torch.no_grad():  # head 2 of block 0 and head 0 of block 1 barely contribute
        for block, head in zip(module.attention(), (2, 0), strict=True):
            for layer in (block.query, block.key, block.value):
                layer.weight[head * 6 : (head + 1) * 6] *= 0.01
                layer.bias[head * 6 : (head + 1) * 6] *= 0.01
            block.out.weight[:, head * 6 : (head + 1) * 6] *= 0.01
    model = onnx.load(export(module, tmp_path / "model.onnx"))

    result = prune_heads(model, 0.25, "l1", FEEDS)

    assert [record.removed_heads for record in result.blocks] == [[2], [0]]
    for record in result.blocks:
        assert min(record.importance) == record.importance[record.removed_heads[0]]


def test_at_least_one_head_is_kept_and_taylor_falls_back_to_l2(
    exported: tuple[nn.Module, onnx.ModelProto, bool],
) -> None:
    _, model, _ = exported
    result = prune_heads(model, 0.99, "taylor", FEEDS)

    assert [record.heads_after for record in result.blocks] == [1, 1]
    assert result.importance == "l2"
    assert "l2" in result.notes[0]
    assert run(result.model, CHECK).shape == (3, CLASSES)


def test_a_model_without_attention_is_refused_with_the_reason(cnn_onnx: Path) -> None:
    images = np.zeros((2, 1, 8, 8), np.float32)

    with pytest.raises(UnsupportedModel, match="no attention blocks found") as raised:
        prune_heads(onnx.load(cnn_onnx), 0.5, "l1", {"input": images})

    assert raised.value.code == "no_attention_blocks"


def sequence_data(model_path: Path, rows: int = 64) -> StepData:
    rng = np.random.default_rng(0)
    inputs = rng.random((rows, LENGTH, FEATURES), dtype=np.float32)
    labels = rng.integers(0, CLASSES, rows)
    return StepData(
        eval_arrays={"input": inputs, "label": labels},
        calibration_arrays={"input": inputs},
        inputs=inspect_model(model_path).inputs,
        task=TaskSpec(),
        train_arrays={"input": inputs, "label": labels},
    )


def structured(**fields: object) -> StructuredPrune:
    return StructuredPrune.model_validate({"method": "prune", "kind": "structured", **fields})


def prune_step(path: Path, config: PruneConfig, tmp_path: Path) -> StepOutput:
    return get_step("prune")(path, config, sequence_data(path), RunContext(tmp_path / "run"))


def assert_runs_at_any_batch(path: Path) -> None:
    model = onnx.load(path)
    for rows in (1, 3):
        assert run(model, CHECK[:rows]).shape == (rows, CLASSES)


def test_the_structured_kind_prunes_heads_before_fine_tuning(tmp_path: Path) -> None:
    # a dynamic batch: the step writes the fine-tuned weights into the head-pruned graph,
    # whose run-time reshapes torch.export could not capture
    path = export(bert_style(), tmp_path / "m.onnx")
    config = structured(sparsity=0.0, head_sparsity=0.5, fine_tune={"epochs": 1})

    output = prune_step(path, config, tmp_path)

    details = output.details
    assert [(r["heads_before"], r["heads_after"]) for r in details["attention_heads"]] == [
        (4, 2),
        (4, 2),
    ]
    assert details["head_sparsity"] == 0.5 and len(details["epochs"]) == 1
    assert details["export"] == "weights_written_back"
    assert details["parameters"]["total"] < details["parameters_original"]["total"]
    assert {(24, 12), (12, 24)} <= {
        tuple(numpy_helper.to_array(init).shape)
        for init in onnx.load(output.model_path).graph.initializer
    }
    assert_runs_at_any_batch(output.model_path)


def test_heads_of_a_dynamic_batch_transformer_encoder_are_pruned(tmp_path: Path) -> None:
    path = export(family_transformer(), tmp_path / "m.onnx")
    config = structured(sparsity=0.0, head_sparsity=0.5, fine_tune={"epochs": 1})
    # a metric that sees small changes: cosine similarity to the original's outputs
    data = dataclasses.replace(sequence_data(path), task=TaskSpec(kind="embedding"))

    output = get_step("prune")(path, config, data, RunContext(tmp_path / "run"))

    details = output.details
    assert [r["heads_after"] for r in details["attention_heads"]] == [2, 2]
    assert details["export"] == "weights_written_back"
    assert_runs_at_any_batch(output.model_path)
    # per block, 2 heads of 6 go from the in_proj (q, k, v) and the out_proj
    removed = weight_elements(onnx.load(path)) - weight_elements(onnx.load(output.model_path))
    assert removed == 2 * 2 * 4 * 24 * 6
    # measured on the head-pruned model, before fine-tuning
    inputs = data.eval_arrays["input"]
    head_pruned = prune_heads(onnx.load(path), 0.5, config.importance, {"input": inputs[:2]})
    _, expected = score(
        data.task, run(head_pruned.model, inputs), None, run(onnx.load(path), inputs)
    )
    assert details["eval_metric_name"] == "cosine_similarity"
    assert details["metric_after_pruning"] == pytest.approx(expected, abs=1e-5)
    assert details["metric_after_fine_tuning"] != details["metric_after_pruning"]


def test_unstructured_pruning_of_a_dynamic_batch_transformer_encoder(tmp_path: Path) -> None:
    path = export(family_transformer(), tmp_path / "m.onnx")
    config = UnstructuredPrune.model_validate(
        {"method": "prune", "kind": "unstructured", "sparsity": 0.5, "fine_tune": {"epochs": 1}}
    )

    output = prune_step(path, config, tmp_path)

    details = output.details
    assert details["export"] == "weights_written_back"
    assert_runs_at_any_batch(output.model_path)
    assert details["pruned_layers_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert details["parameters"]["nonzero"] < details["parameters_original"]["nonzero"]
    assert details["parameters"]["total"] == details["parameters_original"]["total"]


def test_head_sparsity_on_a_model_without_attention_fails_the_step(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    images = np.zeros((8, 1, 8, 8), np.float32)
    data = StepData(
        eval_arrays={"input": images, "label": np.zeros(8, np.int64)},
        calibration_arrays={"input": images},
        inputs=inspect_model(cnn_onnx).inputs,
        task=TaskSpec(),
    )
    config = structured(sparsity=0.0, head_sparsity=0.5, fine_tune={"epochs": 0})

    with pytest.raises(UnsupportedModel, match="no attention blocks found"):
        get_step("prune")(cnn_onnx, config, data, RunContext(tmp_path / "run"))
