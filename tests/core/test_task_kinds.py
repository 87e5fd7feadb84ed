"""Real model kinds through the pipeline: a CTC recogniser (scored by decoded exact match and
character accuracy, also time-major), a per-pixel segmenter (IoU, AUC), and a stateful
streaming model whose state is [layers, batch, hidden] and whose sample rate is a scalar
fed as a constant (its new-state output compared with the original's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from core.context import MeasureSettings, RunContext
from core.pipeline import run
from core.spec import JobSpec

FAST = MeasureSettings(threads=1, warmup_runs=0, runs=3)
ROWS = 96  # 48 selection and 48 held-out rows


def job(task: dict[str, Any], **overrides: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model_id": "m",
            "eval_dataset_id": "eval",
            "task": task,
            "steps": [{"method": "quantize", "mode": "dynamic"}],
            # these tests are about the metrics, not speed (timing noise must not decide)
            "targets": {"allow_slower": True, "metric_guard": False},
        }
        | overrides
    )


def context(tmp_path: Path) -> RunContext:
    return RunContext(work_dir=tmp_path / "work", measure=FAST)


def export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, **kw: Any) -> Path:
    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), opset_version=17, dynamo=False, **kw)
    return path


class Recogniser(nn.Module):
    """Features (N, T, F) -> per-timestep class log-probs (N, T, C); C 0 is the blank."""

    def __init__(self, features: int = 12, classes: int = 6, time_major: bool = False) -> None:
        super().__init__()
        self.time_major = time_major
        self.body = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.log_softmax(self.body(x), dim=-1)
        return scores.transpose(0, 1) if self.time_major else scores


def recogniser_data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(ROWS, 10, 12)).astype(np.float32)
    lengths = rng.integers(1, 5, size=ROWS)
    labels = np.full((ROWS, 4), -1, np.int64)  # padded with -1
    for row, length in enumerate(lengths):
        labels[row, :length] = rng.integers(1, 6, size=length)
    return {"features": features, "label": labels}


@pytest.mark.parametrize("time_major", [False, True])
def test_a_ctc_recogniser_is_judged_by_decoded_exact_match(
    tmp_path: Path, time_major: bool
) -> None:
    torch.manual_seed(0)
    model = export(
        Recogniser(time_major=time_major),
        (torch.zeros(2, 10, 12),),
        tmp_path / "ctc.onnx",
        input_names=["features"],
        output_names=["logprobs"],
        dynamic_axes={"features": {0: "batch"}, "logprobs": {1 if time_major else 0: "batch"}},
    )
    data = tmp_path / "eval.npz"
    np.savez(data, **recogniser_data())
    task = {"kind": "sequence", "ctc": {"blank": 0}, "output_sample_axis": int(time_major)}
    result, _ = run(model, {"eval": data}, job(task), context(tmp_path))

    original = result.original
    assert original.metric_name == "exact_match"
    assert {"exact_match", "char_accuracy", "cer", "position_agreement"} <= set(original.metrics)
    assert "position_accuracy" not in original.metrics  # CTC labels are sequences
    # an untrained recogniser rarely decodes exactly; what matters: the metric is the
    # task's, computed on label sequences, and the original's value shows its scale
    assert 0.0 <= original.metric_value <= 1.0
    assert original.metrics["char_accuracy"] == pytest.approx(
        max(0.0, 1.0 - original.metrics["cer"])
    )
    assert result.final.metric_name == "exact_match"
    assert result.final.metric_rows == result.evaluation.held_out_rows  # type: ignore[union-attr]


class Segmenter(nn.Module):
    """Images (N, 1, H, W) -> a per-pixel probability map (N, 1, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


def test_a_segmenter_is_judged_by_mask_iou_with_auc_reported(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = export(
        Segmenter(),
        (torch.zeros(2, 1, 16, 16),),
        tmp_path / "seg.onnx",
        input_names=["image"],
        output_names=["mask"],
        dynamic_axes={"image": {0: "batch"}, "mask": {0: "batch"}},
    )
    rng = np.random.default_rng(0)
    images = rng.random((ROWS, 1, 16, 16), dtype=np.float32)
    masks = (images > 0.5).astype(np.uint8)
    data = tmp_path / "eval.npz"
    np.savez(data, image=images, label=masks)
    result, _ = run(
        model, {"eval": data}, job({"kind": "mask"}), context(tmp_path)
    )
    assert result.original.metric_name == "iou"
    assert {"iou", "auc", "decision_agreement"} <= set(result.original.metrics)
    assert 0.0 <= result.final.metrics["auc"] <= 1.0
    # the held-out IoU against labels, not a cosine of probability maps
    assert result.final.metrics["decision_agreement"] > 0.9  # INT8 keeps the decisions


class Streaming(nn.Module):
    """A VAD-like streaming model: a chunk of audio, a GRU state [layers, batch, hidden]
    and a scalar sample rate in; a speech probability and the new state out."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(64, 32)
        self.gru = nn.GRU(32, 16, num_layers=2)
        self.head = nn.Linear(16, 1)

    def forward(
        self, audio: torch.Tensor, state: torch.Tensor, sr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = audio * (sr.to(torch.float32) / 16000.0)
        out, new_state = self.gru(torch.relu(self.encode(scaled)).unsqueeze(0), state)
        return torch.sigmoid(self.head(out[0])), new_state


@pytest.fixture()
def streaming(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = export(
        Streaming(),
        (torch.zeros(2, 64), torch.zeros(2, 2, 16), torch.tensor(16000)),
        tmp_path / "vad.onnx",
        input_names=["audio", "state", "sr"],
        output_names=["prob", "new_state"],
        dynamic_axes={
            "audio": {0: "batch"},
            "state": {1: "batch"},
            "prob": {0: "batch"},
            "new_state": {1: "batch"},
        },
    )
    rng = np.random.default_rng(0)
    data = tmp_path / "eval.npz"
    np.savez(
        data,
        audio=rng.normal(size=(ROWS, 64)).astype(np.float32),
        state=rng.normal(scale=0.1, size=(2, ROWS, 16)).astype(np.float32),
    )
    return model, data


STREAMING_TASK = {
    "kind": "mask",  # a probability per chunk, thresholded at 0.5
    "output": "prob",
    "inputs": {"state": {"array": "state", "sample_axis": 1}, "sr": {"constant": 16000}},
}


def test_a_stateful_streaming_model_is_fed_its_state_axis_and_constant(
    tmp_path: Path, streaming: tuple[Path, Path]
) -> None:
    model, data = streaming
    result, _final = run(
        model, {"eval": data}, job(STREAMING_TASK), context(tmp_path)
    )
    assert result.original.metric_name == "iou_agreement"  # no labels: vs the original
    assert result.original.metric_value == 1.0
    # the state output is not read by the metric, and still compared with the original's
    state = result.final.other_outputs["new_state"]
    assert state.rows > 0 and state.max_abs_diff < 0.5
    assert 0.0 <= state.agreement <= 1.0
    assert result.steps[0].details["quantized_node_counts"]  # the MatMuls / GRU were quantized
    # latency at batch 1 fed the state at [2, 1, 16] and the scalar sample rate
    assert [lat.batch_size for lat in result.final.latency] == [1]


def test_a_state_transposed_to_batch_first_is_refused(
    tmp_path: Path, streaming: tuple[Path, Path]
) -> None:
    from core.errors import IncompatibleData

    model, data = streaming
    arrays = dict(np.load(data))
    transposed = tmp_path / "transposed.npz"
    np.savez(transposed, audio=arrays["audio"], state=arrays["state"].transpose(1, 0, 2))
    task = {"kind": "mask", "output": "prob", "inputs": {"sr": {"constant": 16000}}}
    with pytest.raises(IncompatibleData, match="fixes axis 0 to 2"):
        run(model, {"eval": transposed}, job(task), context(tmp_path))


def test_training_steps_refuse_inputs_they_cannot_feed_yet() -> None:
    with pytest.raises(ValueError, match="prune runs the model in PyTorch"):
        job(
            STREAMING_TASK,
            train_dataset_id="train",
            steps=[{"method": "prune", "fine_tune": {"epochs": 0}}],
        )


def distill_job(task: dict[str, Any]) -> JobSpec:
    return job(
        task,
        train_dataset_id="train",
        steps=[{"method": "distill", "student": {"source": "step_input"}, "epochs": 1}],
    )


def test_a_segmenter_distils_on_the_teachers_maps_not_on_its_label_masks(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = export(
        Segmenter(),
        (torch.zeros(2, 1, 16, 16),),
        tmp_path / "seg.onnx",
        input_names=["image"],
        output_names=["mask"],
        dynamic_axes={"image": {0: "batch"}, "mask": {0: "batch"}},
    )
    rng = np.random.default_rng(0)
    images = rng.random((ROWS, 1, 16, 16), dtype=np.float32)
    # label masks (N, H, W): class maps, not targets for the (N, 1, H, W) probabilities
    np.savez(tmp_path / "eval.npz", image=images, label=(images[:, 0] > 0.5).astype(np.uint8))
    train = rng.random((ROWS, 1, 16, 16), dtype=np.float32)
    np.savez(tmp_path / "train.npz", image=train, label=(train[:, 0] > 0.5).astype(np.uint8))
    datasets = {"eval": tmp_path / "eval.npz", "train": tmp_path / "train.npz"}
    result, _ = run(model, datasets, distill_job({"kind": "mask"}), context(tmp_path))

    (step,) = result.steps
    assert step.details["loss"]["labels_used"] is False
    assert any("mask task's labels are no target" in note for note in step.details["notes"])
    assert result.final.metric_name == "iou"


def test_a_ctc_recogniser_distils_without_reading_label_sequences_as_targets(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = export(
        Recogniser(),
        (torch.zeros(2, 10, 12),),
        tmp_path / "ctc.onnx",
        input_names=["features"],
        output_names=["logprobs"],
        dynamic_axes={"features": {0: "batch"}, "logprobs": {0: "batch"}},
    )
    np.savez(tmp_path / "eval.npz", **recogniser_data())
    np.savez(tmp_path / "train.npz", **recogniser_data(seed=1))
    datasets = {"eval": tmp_path / "eval.npz", "train": tmp_path / "train.npz"}
    task = {"kind": "sequence", "ctc": {"blank": 0}}
    result, _ = run(model, datasets, distill_job(task), context(tmp_path))

    (step,) = result.steps
    assert step.details["loss"]["labels_used"] is False
    assert result.final.metric_name == "exact_match"
