"""OpenVINO candidates: FP32/bf16 IR, NNCF INT8 (plain, accuracy control, our fallback),
weight compression; the fallback's decisions with controlled metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import EngineError
from core.runtimes import PreparedModel, Runner, RunSettings, get_runtime
from core.runtimes import openvino_compress as oc
from service.examples import digits_arrays
from tests.core.runtime_models import if_weights_onnx
from tests.factories import export_onnx, make_mlp

ONE_THREAD = RunSettings(threads=1, runtime_defaults=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ovc")


@pytest.fixture(scope="module")
def cnn_file(digits_cnn: torch.nn.Module, folder: Path) -> Path:
    images, _ = digits_arrays("test")
    return export_onnx(digits_cnn, images[:1], folder / "cnn.onnx")


@pytest.fixture(scope="module")
def mlp_file(folder: Path) -> Path:
    return export_onnx(make_mlp(64, 256, 32), np.zeros((1, 64), np.float32), folder / "mlp.onnx")


@pytest.fixture(scope="module")
def calibration() -> list[dict[str, np.ndarray]]:
    images, _ = digits_arrays("train")
    return [{"input": images[i : i + 32]} for i in range(0, 128, 32)]


@pytest.fixture(scope="module")
def samples() -> list[oc.Sample]:
    images, labels = digits_arrays("test")
    return oc.samples_from_arrays({"input": images}, labels, 64)


def accuracy(runner: Runner, samples: Sequence[oc.Sample]) -> float:
    correct = total = 0
    for feeds, labels in samples:
        predicted = runner.run(feeds)[0].argmax(axis=1)
        correct += int((predicted == labels).sum())
        total += len(labels)
    return correct / total


def open_ir(prepared: PreparedModel) -> Runner:
    return get_runtime("openvino").open(prepared, ONE_THREAD)


def test_fp32_ir_keeps_fp32_numbers(cnn_file: Path, tmp_path: Path) -> None:
    candidate = oc.fp32_ir(cnn_file, tmp_path)
    images, _ = digits_arrays("test")
    ort = get_runtime("onnxruntime")
    reference = ort.open(ort.prepare(cnn_file, tmp_path / "ort"), ONE_THREAD).run({"input": images})
    np.testing.assert_allclose(
        open_ir(candidate.prepared).run({"input": images})[0], reference[0], atol=1e-4
    )
    assert candidate.details["precision"] == "f32"


def test_nncf_default_int8_runs_is_smaller_and_keeps_the_predictions(
    cnn_file: Path,
    calibration: list[dict[str, np.ndarray]],
    samples: list[oc.Sample],
    tmp_path: Path,
) -> None:
    fp32 = oc.fp32_ir(cnn_file, tmp_path / "fp32")
    int8 = oc.nncf_int8(cnn_file, calibration, tmp_path / "int8")
    assert int8.name == "nncf-int8"
    assert int8.details["quantized_ops"] == 4  # two convolutions, two Gemms
    assert int8.prepared.size_bytes() < 0.4 * fp32.prepared.size_bytes()
    assert (
        accuracy(open_ir(int8.prepared), samples)
        >= accuracy(open_ir(fp32.prepared), samples) - 0.05
    )


def test_an_ignored_scope_keeps_the_named_op_in_float(
    cnn_file: Path, calibration: list[dict[str, np.ndarray]], tmp_path: Path
) -> None:
    fp32 = oc.fp32_ir(cnn_file, tmp_path / "fp32")
    full = oc.nncf_int8(cnn_file, calibration, tmp_path / "full")
    ranking = oc.rank_by_added_error(fp32.prepared, full.prepared, calibration[:2])
    assert len(ranking) == 4
    top = ranking[0][0]
    partial = oc.nncf_int8(cnn_file, calibration, tmp_path / "partial", ignored=[top])
    assert partial.details["quantized_ops"] == 3
    assert partial.details["ignored"] == [top]


def test_accuracy_control_runs_nncf_with_the_injected_metric(
    cnn_file: Path,
    calibration: list[dict[str, np.ndarray]],
    samples: list[oc.Sample],
    tmp_path: Path,
) -> None:
    calls: list[int] = []

    def validate(runner: Runner, given: Sequence[oc.Sample]) -> float:
        calls.append(len(given))
        return accuracy(runner, given)

    candidate = oc.nncf_int8_accuracy_control(
        cnn_file, calibration, samples, validate, tmp_path, max_drop=0.02
    )
    assert calls, "NNCF never asked the injected metric"
    assert candidate.details["met"] is True
    assert candidate.details["metric_drop"] <= 0.02
    assert candidate.details["reference_metric"] == pytest.approx(accuracy(
        open_ir(oc.fp32_ir(cnn_file, tmp_path / "fp32").prepared), samples))  # fmt: skip


def test_weight_compression_int8_and_int4_run_on_a_matmul_model(
    mlp_file: Path, tmp_path: Path
) -> None:
    assert oc.matmul_weight_share(mlp_file) == pytest.approx(1.0, abs=0.01)
    features = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    fp32 = oc.fp32_ir(mlp_file, tmp_path / "fp32")
    reference = open_ir(fp32.prepared).run({"input": features})[0]
    int8 = oc.compress_weights(mlp_file, tmp_path / "int8", mode="int8")
    int4 = oc.compress_weights(mlp_file, tmp_path / "int4", mode="int4")
    assert (
        int4.prepared.size_bytes() < int8.prepared.size_bytes() < 0.4 * fp32.prepared.size_bytes()
    )
    for candidate in (int8, int4):
        out = open_ir(candidate.prepared).run({"input": features})[0]
        cosine = np.sum(out * reference, 1) / (
            np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1)
        )
        assert cosine.min() > 0.95, candidate.name


def test_a_convolution_model_is_not_matmul_heavy(tmp_path: Path) -> None:
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3)
    )
    path = export_onnx(conv, np.zeros((1, 1, 8, 8), np.float32), tmp_path / "conv.onnx")
    assert oc.matmul_weight_share(path) == 0.0


def test_bf16_compute_is_a_separate_candidate_with_its_own_numbers(
    cnn_file: Path, tmp_path: Path
) -> None:
    try:
        bf16 = oc.bf16_ir(cnn_file, tmp_path / "bf16")
    except EngineError as error:
        pytest.skip(f"no bf16 on this CPU: {error}")
    fp32 = oc.fp32_ir(cnn_file, tmp_path / "fp32")
    images, _ = digits_arrays("test")
    low = open_ir(bf16.prepared).run({"input": images})[0]
    full = open_ir(fp32.prepared).run({"input": images})[0]
    assert not np.array_equal(low, full)
    np.testing.assert_allclose(low, full, atol=0.5)


def test_a_model_openvino_cannot_take_fails_with_runtime_unsupported_model(tmp_path: Path) -> None:
    model = if_weights_onnx(tmp_path / "if.onnx")
    with pytest.raises(EngineError) as caught:
        oc.fp32_ir(model, tmp_path / "ir")
    assert caught.value.code == "runtime_unsupported_model"


# --- the fallback's decisions, with controlled metrics -----------------------------------------


class Controlled:
    """A quantizer whose model's metric is a function of how many ops it keeps in float."""

    def __init__(self, metric_for_ignored: dict[int, float], ranking: list[str]) -> None:
        self.metric_for_ignored = metric_for_ignored
        self.ranking = ranking
        self.asked: list[list[str]] = []

    def quantize(self, names: Sequence[str]) -> PreparedModel:
        self.asked.append(list(names))
        return PreparedModel(runtime="openvino", files=(), details={"ignored": len(names)})

    def rank(self, reference: PreparedModel, quantized: PreparedModel) -> list[str]:
        return list(self.ranking)

    def validate(self, runner: Runner, samples: Sequence[oc.Sample]) -> float:
        ignored = runner.ignored  # type: ignore[attr-defined]
        return 1.0 if ignored is None else self.metric_for_ignored[ignored]

    def open(self, prepared: PreparedModel) -> Runner:
        class Fake:
            input_names: list[str] = []
            output_names: list[str] = []
            ignored = prepared.details.get("ignored")

            def run(self, feeds: object) -> list[np.ndarray]:
                return []

        return Fake()


REFERENCE = PreparedModel(runtime="openvino", files=(), details={})
RANKING = [f"op{i}" for i in range(10)]


def fallback(controlled: Controlled, max_drop: float, **kw: object) -> oc.Candidate:
    return oc.quantize_with_fallback(
        [],
        controlled.validate,
        quantize=controlled.quantize,
        rank=controlled.rank,
        reference=REFERENCE,
        max_drop=max_drop,
        open_runner=controlled.open,
        **kw,  # type: ignore[arg-type]
    )


def test_the_fallback_keeps_everything_int8_when_that_holds() -> None:
    controlled = Controlled({0: 0.995}, RANKING)
    candidate = fallback(controlled, max_drop=0.01)
    assert candidate.details["met"] is True
    assert candidate.details["ignored"] == []
    assert controlled.asked == [[]]


def test_the_fallback_keeps_the_fewest_most_sensitive_ops_in_float_that_meet_the_limit() -> None:
    # drop 0.05 with all ops int8, 0.01 less per op kept in float: 4 ops are needed
    controlled = Controlled({k: 0.95 + 0.01 * k for k in range(11)}, RANKING)
    candidate = fallback(controlled, max_drop=0.011)
    assert candidate.details["met"] is True
    assert candidate.details["ignored"] == RANKING[:4]
    # all int8, then doubling (1, 2, 4), then bisecting between 2 and 4 (3)
    assert [len(names) for names in controlled.asked] == [0, 1, 2, 4, 3]
    assert [row["ignored"] for row in candidate.details["tries"]] == [0, 1, 2, 4, 3]
    assert candidate.prepared.details["ignored"] == 4


def test_the_fallback_says_when_no_ignored_scope_meets_the_limit_and_returns_the_best_try() -> None:
    controlled = Controlled({0: 0.90, 1: 0.93, 2: 0.92, 4: 0.91, 8: 0.91, 10: 0.92}, RANKING)
    candidate = fallback(controlled, max_drop=0.01)
    assert candidate.details["met"] is False
    assert candidate.details["ignored"] == RANKING[:1]
    assert [len(names) for names in controlled.asked] == [0, 1, 2, 4, 8, 10]


def test_the_fallback_never_keeps_more_than_max_ignored_ops_in_float() -> None:
    controlled = Controlled({k: 0.95 + 0.01 * k for k in range(11)}, RANKING)
    candidate = fallback(controlled, max_drop=0.011, max_ignored=3)
    assert candidate.details["met"] is False
    assert max(len(names) for names in controlled.asked) == 3


def test_the_fallback_judges_a_relative_drop_against_the_reference_metric() -> None:
    controlled = Controlled({0: 0.45, 1: 0.496}, RANKING)
    candidate = fallback(controlled, max_drop=0.01, drop_type="relative", reference_metric=0.5)
    assert candidate.details["ignored"] == RANKING[:1]
    assert candidate.details["metric_drop"] == pytest.approx(0.008)


def test_the_fallback_with_nncf_keeps_int8_when_the_limit_allows(
    cnn_file: Path,
    calibration: list[dict[str, np.ndarray]],
    samples: list[oc.Sample],
    tmp_path: Path,
) -> None:
    candidate = oc.nncf_int8_with_fallback(
        cnn_file, calibration, samples, accuracy, tmp_path, max_drop=0.05
    )
    assert candidate.details["met"] is True
    assert candidate.details["metric_drop"] <= 0.05
    assert open_ir(candidate.prepared).run(samples[0][0])[0].shape == (64, 10)
