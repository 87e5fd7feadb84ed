"""Device detection from both ONNX Runtime and torch, and what a job's device resolves to."""

from __future__ import annotations

import pytest

from core.devices import DeviceReport, Gpu, detect, probe_in_subprocess, resolve_device
from core.errors import EngineError

CPU_ONLY = DeviceReport(
    onnxruntime_providers=["CPUExecutionProvider"],
    onnxruntime_cuda=False,
    torch_cuda_build="13.0",
    torch_cuda=False,
)
GPU = DeviceReport(
    onnxruntime_providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
    onnxruntime_cuda=True,
    torch_cuda_build="13.0",
    torch_cuda=True,
    gpus=[Gpu(index=0, name="NVIDIA H200", memory_bytes=141 * 1024**3)],
)


def test_auto_is_the_cpu_where_no_gpu_is_reachable() -> None:
    assert resolve_device("auto", CPU_ONLY) == "cpu"


def test_auto_is_cuda_where_both_libraries_reach_a_gpu() -> None:
    assert resolve_device("auto", GPU) == "cuda"
    assert resolve_device("cuda", GPU) == "cuda"


def test_cuda_without_onnxruntime_gpu_is_refused_naming_the_extra() -> None:
    with pytest.raises(EngineError) as caught:
        resolve_device("cuda", CPU_ONLY)
    assert caught.value.code == "device_unavailable"
    assert "onnxruntime-gpu" in str(caught.value)


def test_cuda_where_only_onnx_runtime_sees_the_gpu_is_refused_naming_torch() -> None:
    report = DeviceReport(
        onnxruntime_providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        onnxruntime_cuda=True,
        torch_cuda_build=None,
        torch_cuda=False,
    )
    assert resolve_device("auto", report) == "cpu"
    with pytest.raises(EngineError, match="torch here is a CPU-only build"):
        resolve_device("cuda", report)


def test_a_listed_cuda_provider_that_cannot_start_does_not_count() -> None:
    report = DeviceReport(
        onnxruntime_providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        onnxruntime_cuda=False,
        torch_cuda_build="13.0",
        torch_cuda=True,
    )
    with pytest.raises(EngineError, match="could not start"):
        resolve_device("cuda", report)


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(EngineError) as caught:
        resolve_device("tpu", CPU_ONLY)
    assert caught.value.code == "device_unavailable"


def test_the_report_round_trips_through_json() -> None:
    assert DeviceReport.from_json(GPU.to_json()) == GPU
    assert GPU.to_json()["devices"] == ["cpu", "cuda"]


def test_the_subprocess_probe_sees_what_this_process_sees() -> None:
    here = detect()
    probed = probe_in_subprocess(timeout_s=120)
    assert probed.error is None
    assert probed.devices() == here.devices()
    assert probed.runtimes == here.runtimes
    assert "openvino" in probed.runtimes


@pytest.mark.gpu
def test_a_gpu_machine_reports_its_gpus_by_name_and_memory() -> None:
    report = detect()
    assert report.cuda
    assert report.gpus and all(gpu.memory_bytes > 0 and gpu.name for gpu in report.gpus)
    assert "cuda" in report.runtimes["onnxruntime"]
