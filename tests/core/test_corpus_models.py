"""The corpus itself: it spans what issue 14 names (exporters, opsets 7 to 21, control
flow with weights inside, fixed and symbolic dims, a stateful model), and a job can be
written for its stateful model, except the (layers, batch, hidden) one that waits for
per-input sample axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core.context import MeasureSettings, RunContext
from core.formats import model_opset, subgraphs
from core.pipeline import run
from core.spec import JobSpec
from tests.corpus.models import CORPUS, GRU_HIDDEN, GRU_LAYERS, OPSETS, arrays
from tests.corpus.run import Corpus

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
# target opset -> the opset skl2onnx 1.20 writes for the MLP
SKLEARN_OPSETS = {7: 7, 9: 9, 11: 11, 13: 13, 15: 14, 17: 16, 19: 19, 21: 21}


def graph(corpus: Corpus, name: str) -> onnx.ModelProto:
    return onnx.load(str(corpus.model(name).path))


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_the_corpus_has_five_exporters() -> None:
    assert {model.exporter for model in CORPUS.values()} == {
        "torch.onnx (TorchScript)",
        "torch.onnx (dynamo, onnxscript)",
        "skl2onnx",
        "onnx.helper",
        "onnxscript",
    }


@pytest.mark.parametrize("opset", OPSETS)
def test_the_same_cnn_and_mlp_come_at_every_opset_from_7_to_21(
    corpus: Corpus, opset: int
) -> None:
    assert model_opset(graph(corpus, f"torch_cnn@{opset}")) == opset
    # skl2onnx writes the lowest opset its ops need, never above the target
    assert model_opset(graph(corpus, f"sklearn_mlp@{opset}")) == SKLEARN_OPSETS[opset]


def test_control_flow_models_hold_their_weights_inside_the_branches_and_body(
    corpus: Corpus,
) -> None:
    for name, op in (("helper_if", "If"), ("helper_loop", "Loop")):
        (node,) = [n for n in graph(corpus, name).graph.node if n.op_type == op]
        assert all(len(sub.initializer) >= 2 for sub in subgraphs(node))


def test_fixed_and_symbolic_dims(corpus: Corpus) -> None:
    assert dims(graph(corpus, "torch_fixed_batch").graph.input[0]) == [1, 1, 8, 8]
    batch, sequence, features = dims(graph(corpus, "torch_symbolic_sequence").graph.input[0])
    assert isinstance(batch, str) and isinstance(sequence, str) and features == 8


def test_the_stateful_gru_takes_a_state_and_gives_the_new_one(corpus: Corpus) -> None:
    model = graph(corpus, "torch_gru_state")
    assert [v.name for v in model.graph.input] == ["input", "state"]
    assert [v.name for v in model.graph.output] == ["logits", "new_state"]
    assert dims(model.graph.input[1])[1:] == [GRU_LAYERS, GRU_HIDDEN]
    session = ort.InferenceSession(str(corpus.model("torch_gru_state").path))
    data = arrays("gru_state", "test", 4)
    logits, state = session.run(None, {"input": data["input"], "state": data["state"]})
    assert logits.shape == (4, 10) and state.shape == (4, GRU_LAYERS, GRU_HIDDEN)
    assert np.any(state != 0)


def test_a_job_can_be_written_for_the_stateful_gru_with_its_state_batch_first(
    corpus: Corpus, tmp_path: Path
) -> None:
    data = arrays("gru_state", "test", 128)
    np.savez(tmp_path / "eval.npz", **data)  # type: ignore[arg-type]
    spec = JobSpec.model_validate(
        {
            "model_id": "gru",
            "eval_dataset_id": "eval",
            "task": {"output": "logits"},
            "steps": [{"method": "quantize", "mode": "dynamic"}],
        }
    )
    ctx = RunContext(work_dir=tmp_path / "job", measure=MeasureSettings(1, 0, 3))

    result, final = run(
        corpus.model("torch_gru_state").path, {"eval": tmp_path / "eval.npz"}, spec, ctx
    )

    assert result.final.metric_name == "accuracy"
    assert result.steps[0].details["quantized_node_counts"].get("DynamicQuantizeLinear")
    outputs = [o.name for o in ort.InferenceSession(str(final)).get_outputs()]
    assert outputs == ["logits", "new_state"]


def test_the_layers_first_gru_runs_with_its_state_on_axis_1(corpus: Corpus) -> None:
    session = ort.InferenceSession(str(CORPUS["torch_gru_state_layers_first"].build(
        corpus.folder / "pending" / "gru_layers_first.onnx"
    )))  # fmt: skip
    rows = arrays("sequences", "test", 3)["input"]
    state = np.zeros((GRU_LAYERS, 3, GRU_HIDDEN), np.float32)
    logits, new_state = session.run(None, {"input": rows, "state": state})
    assert logits.shape == (3, 10) and new_state.shape == (GRU_LAYERS, 3, GRU_HIDDEN)


def test_a_job_for_the_layers_first_gru_binds_its_state_on_axis_1(
    corpus: Corpus, tmp_path: Path
) -> None:
    path = CORPUS["torch_gru_state_layers_first"].build(tmp_path / "gru.onnx")
    data = arrays("gru_state_layers_first", "test", 64)
    np.savez(tmp_path / "eval.npz", **data)  # type: ignore[arg-type]
    spec = JobSpec.model_validate(
        {
            "model_id": "gru",
            "eval_dataset_id": "eval",
            "task": {
                "output": "logits",
                "inputs": {"state": {"array": "state", "sample_axis": 1}},
            },
            "steps": [{"method": "quantize", "mode": "dynamic"}],
            "targets": {"allow_slower": True},
        }
    )
    ctx = RunContext(work_dir=tmp_path / "job", measure=MeasureSettings(1, 0, 3))
    result, _ = run(path, {"eval": tmp_path / "eval.npz"}, spec, ctx)
    assert result.final.metric_name == "accuracy"
    # the new state is not read by the metric and still compared with the original's
    assert result.final.other_outputs["new_state"].rows > 0
