"""Per-node sensitivity: the node INT8 hurts most is ranked first, by the names that
nodes_to_exclude understands, for static QDQ and dynamic graphs alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.context import RunContext
from core.formats import inspect_model, load_model
from core.quantize.modes import get_mode
from core.quantize.sensitivity import quantized_nodes, quantizer_input, rank_quantized_nodes
from core.registry import StepData
from core.spec import DynamicQuantize, StaticQuantize, TaskSpec

FEATURES, HIDDEN, CLASSES = 16, 32, 10
DAMAGED = "mm2"


def mlp_with_a_damaged_node(path: Path, *, damaged: bool = True) -> Path:
    """x -> mm1 -> Relu -> mm2 -> Relu -> mm3. Hidden unit 0 is dead (its weights are 0
    and its bias -1, so it is 0 after the Relu); mm2 gives that dead unit's row weights of
    1000. The output does not change, but every column's INT8 weight scale becomes
    1000/127, rounding mm2's real weights to zero: INT8 breaks mm2 and only mm2."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (FEATURES, HIDDEN))
    b1 = rng.normal(0, 0.1, HIDDEN)
    w1[:, 0], b1[0] = 0.0, -1.0
    w2 = rng.normal(0, 0.3, (HIDDEN, HIDDEN))
    if damaged:
        w2[0, :] = 1000.0
    w3 = rng.normal(0, 0.3, (HIDDEN, CLASSES))
    weights = {"w1": w1, "b1": b1, "w2": w2, "w3": w3}
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h1"], name="mm1"),
        helper.make_node("Add", ["h1", "b1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["logits"], name="mm3"),
    ]
    graph = helper.make_graph(
        nodes,
        "damaged",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def step_data(model: Path) -> StepData:
    x = np.random.default_rng(1).uniform(0, 1, (128, FEATURES)).astype(np.float32)
    return StepData({"input": x}, {"input": x}, inspect_model(model).inputs, TaskSpec())


def batches(data: StepData) -> list[dict[str, np.ndarray]]:
    feeds = data.calibration_feeds(rows=64)
    return [{"input": feeds["input"][i : i + 16]} for i in range(0, 64, 16)]


def config_for(mode: str, **options: object) -> StaticQuantize | DynamicQuantize:
    spec = {"method": "quantize", "mode": mode, **options}
    if mode == "static":
        return StaticQuantize.model_validate(spec | {"calibration_samples": 64})
    return DynamicQuantize.model_validate(spec)


def quantize(mode: str, model: Path, folder: Path, data: StepData, **options: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / "model.onnx"
    get_mode(mode)(model, output, config_for(mode, **options), data, RunContext(work_dir=folder))
    return output


def reference(mode: str, model: Path, folder: Path) -> Path:
    return quantizer_input(model, config_for(mode), folder / "reference")


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp_with_a_damaged_node(tmp_path_factory.mktemp("sensitivity") / "damaged.onnx")


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_the_node_int8_breaks_ranks_first(damaged: Path, tmp_path: Path, mode: str) -> None:
    data = step_data(damaged)
    quantized = quantize(mode, damaged, tmp_path / mode, data)
    # the static quantizer sees the pre-processed graph (MatMul + Add fused into a Gemm)
    ranking = rank_quantized_nodes(reference(mode, damaged, tmp_path), quantized, batches(data))

    assert ranking[0].node == DAMAGED
    assert ranking[0].output_error > 0.5  # mm2's output is mostly gone
    # mm3 inherits the damage but adds little of its own: the score blames mm2, not mm3
    mm3 = next(item for item in ranking if item.node == "mm3")
    assert mm3.output_error > 0.5
    assert mm3.score < ranking[0].score / 5
    assert {item.node for item in ranking} >= {DAMAGED, "mm3"}


def test_an_excluded_node_is_no_longer_counted_as_quantized(damaged: Path, tmp_path: Path) -> None:
    data = step_data(damaged)
    quantized = quantize("static", damaged, tmp_path / "q", data)
    kept = quantize("static", damaged, tmp_path / "kept", data, nodes_to_exclude=[DAMAGED])
    float_graph = load_model(reference("static", damaged, tmp_path))

    assert DAMAGED in quantized_nodes(float_graph, load_model(quantized))
    assert DAMAGED not in quantized_nodes(float_graph, load_model(kept))
    assert "mm3" in quantized_nodes(float_graph, load_model(kept))


def test_keeping_the_top_ranked_node_in_float32_repairs_the_model(
    damaged: Path, tmp_path: Path
) -> None:
    data = step_data(damaged)
    kept = quantize("static", damaged, tmp_path / "kept", data, nodes_to_exclude=[DAMAGED])
    ranking = rank_quantized_nodes(reference("static", damaged, tmp_path), kept, batches(data))

    assert DAMAGED not in {item.node for item in ranking}
    assert max(item.output_error for item in ranking) < 0.1


def test_a_model_compared_with_itself_has_nothing_to_rank(damaged: Path) -> None:
    data = step_data(damaged)
    assert rank_quantized_nodes(damaged, damaged, batches(data)) == []
