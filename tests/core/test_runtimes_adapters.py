"""The runtime adapters: ONNX Runtime and OpenVINO behind one interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import EngineError
from core.runtimes import (
    DeploymentSettings,
    RunSettings,
    get_runtime,
    register_runtime,
    registered_runtimes,
    runtime_devices,
)
from core.runtimes.openvino_runtime import compile_config
from core.runtimes.ort_runtime import providers, session_options
from service.examples import digits_arrays, digits_sequences
from tests.core.runtime_models import if_weights_onnx, interleaved_ms, transformer_onnx
from tests.factories import export_onnx

ONE_THREAD = RunSettings(threads=1)
RUNTIMES = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def cnn_file(digits_cnn: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, _ = digits_arrays("test")
    return export_onnx(digits_cnn, images[:1], tmp_path_factory.mktemp("rt") / "cnn.onnx")


@pytest.fixture(scope="module")
def transformer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return transformer_onnx(tmp_path_factory.mktemp("rt") / "transformer.onnx")


def outputs_of(
    runtime_name: str, model: Path, folder: Path, feeds: dict[str, np.ndarray]
) -> list[np.ndarray]:
    runtime = get_runtime(runtime_name)
    runner = runtime.open(runtime.prepare(model, folder / runtime_name), ONE_THREAD)
    return runner.run(feeds)


def test_both_runtimes_are_registered_and_run_on_the_cpu_here() -> None:
    assert set(RUNTIMES) <= set(registered_runtimes())
    devices = runtime_devices()
    assert "cpu" in devices["onnxruntime"]
    assert devices["openvino"] == ["cpu"]


def test_onnx_runtime_and_openvino_agree_on_a_small_cnn(cnn_file: Path, tmp_path: Path) -> None:
    images, _ = digits_arrays("test")
    feeds = {"input": images[:32]}
    (ort_logits,) = outputs_of("onnxruntime", cnn_file, tmp_path, feeds)
    (ov_logits,) = outputs_of("openvino", cnn_file, tmp_path, feeds)
    assert ov_logits.shape == ort_logits.shape == (32, 10)
    np.testing.assert_allclose(ov_logits, ort_logits, rtol=1e-4, atol=1e-4)


def test_onnx_runtime_and_openvino_agree_on_an_attention_model(
    transformer_file: Path, tmp_path: Path
) -> None:
    sequences, _ = digits_sequences("test")
    feeds = {"input": sequences[:16]}
    (ort_logits,) = outputs_of("onnxruntime", transformer_file, tmp_path, feeds)
    (ov_logits,) = outputs_of("openvino", transformer_file, tmp_path, feeds)
    np.testing.assert_allclose(ov_logits, ort_logits, rtol=1e-4, atol=1e-4)


def test_a_runner_names_its_inputs_and_outputs_in_model_order(
    cnn_file: Path, tmp_path: Path
) -> None:
    for name in RUNTIMES:
        runtime = get_runtime(name)
        runner = runtime.open(runtime.prepare(cnn_file, tmp_path / name), ONE_THREAD)
        assert runner.input_names == ["input"]
        assert runner.output_names == ["logits"]


def test_openvino_ir_is_xml_and_bin_saved_as_an_artifact_that_reloads(
    cnn_file: Path, tmp_path: Path
) -> None:
    runtime = get_runtime("openvino")
    prepared = runtime.prepare(cnn_file, tmp_path / "ir")
    saved = runtime.save_artifact(prepared, tmp_path / "download")
    assert [path.name for path in saved] == ["model.xml", "model.bin"]
    assert runtime.size_bytes(prepared) == sum(path.stat().st_size for path in saved)
    # FP32 weights: the .bin holds every float of the ONNX model's weights
    assert saved[1].stat().st_size >= 0.95 * (cnn_file.stat().st_size - 2000)
    reloaded = type(prepared)(
        runtime="openvino", files=tuple(saved), open_config=prepared.open_config
    )
    images, _ = digits_arrays("test")
    np.testing.assert_array_equal(
        runtime.open(reloaded, ONE_THREAD).run({"input": images[:4]})[0],
        runtime.open(prepared, ONE_THREAD).run({"input": images[:4]})[0],
    )


def test_the_onnx_runtime_artifact_is_the_model_itself(cnn_file: Path, tmp_path: Path) -> None:
    runtime = get_runtime("onnxruntime")
    prepared = runtime.prepare(cnn_file, tmp_path / "ort")
    assert prepared.entry.read_bytes() == cnn_file.read_bytes()
    assert runtime.size_bytes(prepared) == cnn_file.stat().st_size
    (copy,) = runtime.save_artifact(prepared, tmp_path / "out")
    assert copy.read_bytes() == cnn_file.read_bytes()


def test_runners_are_zero_argument_callables_for_interleaved_timing(
    cnn_file: Path, tmp_path: Path
) -> None:
    images, _ = digits_arrays("test")
    feeds = {"input": images[:1]}
    runners = [
        get_runtime(name).open(get_runtime(name).prepare(cnn_file, tmp_path / name), ONE_THREAD)
        for name in RUNTIMES
    ]
    times = interleaved_ms([lambda r=runner: r.run(feeds) for runner in runners], runs=5)
    assert [len(t) for t in times] == [5, 5]
    assert all(value > 0 for t in times for value in t)


def test_outputs_belong_to_the_caller_and_are_not_overwritten_by_the_next_run(
    cnn_file: Path, tmp_path: Path
) -> None:
    images, _ = digits_arrays("test")
    runtime = get_runtime("openvino")
    runner = runtime.open(runtime.prepare(cnn_file, tmp_path), ONE_THREAD)
    first = runner.run({"input": images[:2]})[0]
    kept = first.copy()
    runner.run({"input": images[2:4]})
    np.testing.assert_array_equal(first, kept)


def scalar_input_onnx(path: Path) -> Path:
    """y = x * gain, with `gain` a 0-d input (a sample rate, a temperature)."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "gain"], ["y"])],
        "scaled",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("gain", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_a_scalar_input_stays_a_scalar(runtime_name: str, tmp_path: Path) -> None:
    model = scalar_input_onnx(tmp_path / "scaled.onnx")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    gain = np.array(2.0, dtype=np.float32)
    (y,) = outputs_of(runtime_name, model, tmp_path, {"x": x, "gain": gain})
    np.testing.assert_allclose(y, x * 2)


def test_openvino_cannot_compile_weights_inside_if_branches_and_says_so(tmp_path: Path) -> None:
    model = if_weights_onnx(tmp_path / "if.onnx")
    # ONNX Runtime runs it: the model is valid
    (out,) = outputs_of("onnxruntime", model, tmp_path, {"x": np.ones((2, 4), np.float32)})
    assert out.shape == (2, 3)
    with pytest.raises(EngineError) as caught:
        get_runtime("openvino").prepare(model, tmp_path / "ov")
    assert caught.value.code == "runtime_unsupported_model"
    assert "If" in str(caught.value) and "Exception from" not in str(caught.value)


def test_an_unknown_runtime_is_unavailable() -> None:
    with pytest.raises(EngineError) as caught:
        get_runtime("tensorflow-lite")
    assert caught.value.code == "runtime_unavailable"


def test_a_runtime_name_registers_once() -> None:
    class Another:
        name = "onnxruntime"

    with pytest.raises(ValueError, match="already registered"):
        register_runtime(Another())  # type: ignore[arg-type]


# --- deployment settings, as each runtime applies them ---------------------------------------


def test_default_deployment_measures_at_the_workers_threads_and_at_one() -> None:
    sessions = DeploymentSettings().resolve(worker_threads=4)
    assert [s.threads for s in sessions] == [4, 1]
    assert all(s.runtime_defaults for s in sessions)


def test_a_one_core_worker_measures_one_session_not_two_identical_ones() -> None:
    assert [s.threads for s in DeploymentSettings().resolve(worker_threads=1)] == [1]


def test_repeated_thread_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="once"):
        DeploymentSettings(threads=[2, 2])


def test_onnx_runtime_keeps_its_thread_spinning_under_runtime_defaults() -> None:
    options = session_options(RunSettings(threads=3, runtime_defaults=True))
    assert options.intra_op_num_threads == 3
    # nothing set: ONNX Runtime's default, spinning on
    with pytest.raises(RuntimeError, match="does not have configuration"):
        options.get_session_config_entry("session.intra_op.allow_spinning")


def test_onnx_runtime_turns_spinning_off_for_fair_interleaved_timing() -> None:
    options = session_options(RunSettings(threads=2, runtime_defaults=False))
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_openvino_gets_its_threads_hint_and_fp32_precision(cnn_file: Path, tmp_path: Path) -> None:
    prepared = get_runtime("openvino").prepare(cnn_file, tmp_path)
    config = compile_config(prepared, RunSettings(threads=2))
    assert config["INFERENCE_NUM_THREADS"] == "2"
    assert config["PERFORMANCE_HINT"] == "LATENCY"
    assert config["INFERENCE_PRECISION_HINT"] == "f32"
    runner = get_runtime("openvino").open(prepared, RunSettings(threads=2))
    assert int(runner.compiled.get_property("INFERENCE_NUM_THREADS")) == 2  # type: ignore[attr-defined]
    assert str(runner.compiled.get_property("INFERENCE_PRECISION_HINT")) in (
        "f32",
        "<Type: 'float32'>",
    )  # type: ignore[attr-defined]


def test_cuda_needs_onnx_runtime_with_the_cuda_provider() -> None:
    with pytest.raises(EngineError) as caught:
        providers(RunSettings(device="cuda"), available=["CPUExecutionProvider"])
    assert caught.value.code == "runtime_unavailable"
    assert "onnxruntime-gpu" in str(caught.value)


def test_cuda_sessions_keep_the_cpu_provider_as_fallback_and_tensorrt_first_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.runtimes import ort_runtime

    monkeypatch.setattr(ort_runtime, "tensorrt_installed", lambda: True)
    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers(RunSettings(device="cuda"), offered) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert providers(RunSettings(device="cuda", use_tensorrt=True), offered)[0] == (
        "TensorrtExecutionProvider"
    )
    with pytest.raises(EngineError, match="TensorRT"):
        providers(RunSettings(device="cuda", use_tensorrt=True), offered[1:])


def test_a_listed_tensorrt_provider_without_tensorrts_libraries_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.runtimes import ort_runtime

    monkeypatch.setattr(ort_runtime, "tensorrt_installed", lambda: False)
    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(EngineError) as caught:
        providers(RunSettings(device="cuda", use_tensorrt=True), offered)
    assert caught.value.code == "runtime_unavailable" and "tensorrt" in str(caught.value)
