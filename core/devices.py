"""Which devices this machine can run a job on, asked of both ONNX Runtime and torch.

A job on "cuda" needs both: ONNX Runtime's CUDA provider measures the models, torch's
CUDA trains them (QAT, fine-tuning, distillation, search trials). The lock's torch is
the CUDA build; ONNX Runtime's CPU build has no CUDA provider (the `gpu` extra installs
onnxruntime-gpu), and onnxruntime-gpu lists its provider even where no GPU is visible,
so the provider is probed with a one-node session.

`detect()` initialises CUDA when there is one: call it where a job runs (a pool process)
or in a subprocess (`probe_in_subprocess`, which runs `python -m core.devices`); never
in a Celery parent that forks afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from core.errors import EngineError

CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class DeviceReport:
    """What each library sees. `onnxruntime_cuda` and `torch_cuda` are probes that ran
    (a session kept the CUDA provider; torch.cuda.is_available()), not build flags."""

    onnxruntime_providers: list[str]
    onnxruntime_cuda: bool
    torch_cuda_build: str | None
    torch_cuda: bool
    gpus: list[Gpu] = field(default_factory=list)
    # per runtime adapter: the devices it offers here (core.runtimes)
    runtimes: dict[str, list[str]] = field(default_factory=dict)
    # why the probe could not run, when it could not (the report then says CPU only)
    error: str | None = None

    @property
    def cuda(self) -> bool:
        """A job may run on "cuda": measurement and training both reach the GPU."""
        return self.onnxruntime_cuda and self.torch_cuda

    # TensorRT's own libraries are installed (the provider alone is always listed)
    tensorrt_libraries: bool = False

    @property
    def tensorrt(self) -> bool:
        return (
            self.onnxruntime_cuda
            and TENSORRT_PROVIDER in self.onnxruntime_providers
            and self.tensorrt_libraries
        )

    def devices(self) -> list[str]:
        return ["cpu", "cuda"] if self.cuda else ["cpu"]

    def missing_for_cuda(self) -> list[str]:
        """Why "cuda" is not available, in words (empty when it is)."""
        reasons = []
        if CUDA_PROVIDER not in self.onnxruntime_providers:
            reasons.append(
                "ONNX Runtime here is the CPU build (no CUDAExecutionProvider; the gpu "
                "extra installs onnxruntime-gpu)"
            )
        elif not self.onnxruntime_cuda:
            reasons.append("ONNX Runtime's CUDA provider could not start (no usable GPU)")
        if self.torch_cuda_build is None:
            reasons.append("torch here is a CPU-only build")
        elif not self.torch_cuda:
            reasons.append(f"torch (CUDA {self.torch_cuda_build}) sees no GPU")
        return reasons

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cuda"] = self.cuda
        data["tensorrt"] = self.tensorrt
        data["devices"] = self.devices()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceReport:
        return cls(
            onnxruntime_providers=list(data.get("onnxruntime_providers", [])),
            onnxruntime_cuda=bool(data.get("onnxruntime_cuda", False)),
            torch_cuda_build=data.get("torch_cuda_build"),
            torch_cuda=bool(data.get("torch_cuda", False)),
            gpus=[Gpu(**gpu) for gpu in data.get("gpus", [])],
            runtimes={k: list(v) for k, v in data.get("runtimes", {}).items()},
            error=data.get("error"),
            tensorrt_libraries=bool(data.get("tensorrt_libraries", False)),
        )


def detect(*, with_runtimes: bool = True) -> DeviceReport:
    """Ask ONNX Runtime and torch (this initialises CUDA where there is a GPU)."""
    providers = list(ort.get_available_providers())
    ort_cuda = CUDA_PROVIDER in providers and _ort_cuda_works()
    build, torch_cuda, gpus = _torch_cuda()
    runtimes: dict[str, list[str]] = {}
    if with_runtimes:
        from core.runtimes import runtime_devices

        runtimes = runtime_devices()
    return DeviceReport(
        onnxruntime_providers=providers,
        onnxruntime_cuda=ort_cuda,
        torch_cuda_build=build,
        torch_cuda=torch_cuda,
        gpus=gpus,
        runtimes=runtimes,
        tensorrt_libraries=tensorrt_installed(),
    )


def resolve_device(requested: str, report: DeviceReport | None = None) -> str:
    """ "auto" -> "cuda" when both ONNX Runtime and torch reach a GPU, else "cpu";
    "cuda" must be available. EngineError code "device_unavailable" says what is missing.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise EngineError(f"unknown device {requested!r}", code="device_unavailable")
    if requested == "cpu":
        return "cpu"
    found = report if report is not None else detect(with_runtimes=False)
    if requested == "auto":
        return "cuda" if found.cuda else "cpu"
    if not found.cuda:
        raise EngineError(
            "the job asks for device 'cuda' but this worker cannot run it: "
            + "; ".join(found.missing_for_cuda())
            + "; use device 'cpu' or 'auto'",
            code="device_unavailable",
        )
    return "cuda"


def probe_in_subprocess(timeout_s: float = 120.0) -> DeviceReport:
    """`detect()` in a fresh interpreter, so the caller's process never touches CUDA
    (a Celery parent forks its pool after this). A probe that fails or hangs reports the
    CPU only, with ONNX Runtime's providers as this process sees them."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "core.devices"],
            capture_output=True,
            timeout=timeout_s,
            check=True,
            text=True,
            env=env,
        )
        return DeviceReport.from_json(json.loads(completed.stdout.strip().splitlines()[-1]))
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
        from core.runtimes import available_runtimes

        stderr = getattr(exc, "stderr", None) or ""
        return DeviceReport(
            onnxruntime_providers=list(ort.get_available_providers()),
            onnxruntime_cuda=False,
            torch_cuda_build=None,
            torch_cuda=False,
            runtimes={name: ["cpu"] for name in available_runtimes()},
            error=f"{type(exc).__name__}: {str(stderr).strip()[-300:] or exc}",
        )


def tensorrt_installed() -> bool:
    from core.runtimes.ort_runtime import tensorrt_installed as installed

    return installed()


def _ort_cuda_works() -> bool:
    from core.runtimes.ort_runtime import cuda_session_works

    return cuda_session_works()


def _torch_cuda() -> tuple[str | None, bool, list[Gpu]]:
    try:
        import torch
    except ImportError:
        return None, False, []
    build = torch.version.cuda
    if build is None or not torch.cuda.is_available():
        return build, False, []
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        gpus.append(
            Gpu(index=index, name=str(properties.name), memory_bytes=int(properties.total_memory))
        )
    return build, True, gpus


if __name__ == "__main__":
    print(json.dumps(detect().to_json()))
