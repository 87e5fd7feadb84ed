"""Attention-head pruning through the REST API: a structured prune step with
`head_sparsity` on an uploaded transformer returns a smaller model and says, per block,
how many heads it had and kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from tests.api.conftest import Api, write_npz
from tests.api.test_quantize_modes_e2e import run_job_through_api
from tests.core.test_prune_heads import CLASSES, FEATURES, FEEDS, LENGTH, bert_style
from tests.factories import export_onnx


def test_a_structured_prune_with_head_sparsity_removes_heads(api: Api, tmp_path: Path) -> None:
    # a dynamic batch: the fine-tuned weights are written back into the head-pruned graph
    model = export_onnx(bert_style(), FEEDS["input"], tmp_path / "bert.onnx")
    rng = np.random.default_rng(0)
    inputs = rng.random((64, LENGTH, FEATURES), dtype=np.float32)
    labels = rng.integers(0, CLASSES, 64)
    # separate splits: training data that is the eval data is refused (data_leakage)
    train = write_npz(tmp_path / "train.npz", input=inputs[:32], label=labels[:32])
    evaluation = write_npz(tmp_path / "eval.npz", input=inputs[32:], label=labels[32:])
    step = {
        "method": "prune",
        "kind": "structured",
        "head_sparsity": 0.5,
        "sparsity": 0.0,
        "fine_tune": {"epochs": 1},
    }
    spec = {
        "model_id": api.model_id(model),
        "eval_dataset_id": api.dataset_id(evaluation),
        "train_dataset_id": api.dataset_id(train),
        "steps": [step],
        "batch_size": len(FEEDS["input"]),
    }

    job = run_job_through_api(api, spec)

    assert job["state"] == "succeeded", job["error"]
    details = job["result"]["steps"][0]["details"]
    assert [(r["heads_before"], r["heads_after"]) for r in details["attention_heads"]] == [
        (4, 2),
        (4, 2),
    ]
    assert all(len(r["removed_heads"]) == 2 for r in details["attention_heads"])
    assert details["export"] == "weights_written_back"
    download = api.client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx")
    assert download.status_code == 200
    session = ort.InferenceSession(download.content, providers=["CPUExecutionProvider"])
    for rows in (1, 3):
        batch = rng.random((rows, LENGTH, FEATURES), dtype=np.float32)
        assert session.run(None, {"input": batch})[0].shape == (rows, CLASSES)
    shapes = [
        numpy_helper.to_array(init).shape
        for init in onnx.load_from_string(download.content).graph.initializer
    ]
    # per block: q, k, v project 24 -> 12 (2 heads of 6), the output projection 12 -> 24
    assert sorted(s for s in shapes if len(s) == 2 and 12 in s) == [(12, 24)] * 2 + [(24, 12)] * 6
    final, original = job["result"]["final"], job["result"]["original"]
    assert final["parameters"] < original["parameters"]
