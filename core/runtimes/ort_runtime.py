"""ONNX Runtime as a runtime adapter: CPU, CUDA, and TensorRT where it is installed.

The artifact is the ONNX file itself (with its external data files). Sessions follow
`RunSettings` (see core.runtimes.settings for what is honoured); on "cuda" the CPU
provider stays as the fallback for ops the GPU providers lack, as ONNX Runtime does.
"""

from __future__ import annotations

import ctypes.util
import functools
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from core.errors import RuntimeUnavailable, RuntimeUnsupportedModel, short_reason
from core.formats import copy_model, model_files
from core.runtimes.base import Feeds, PreparedModel, copy_files
from core.runtimes.settings import RunSettings

NAME = "onnxruntime"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"


def providers(settings: RunSettings, available: list[str] | None = None) -> list[str]:
    """The providers for a session, best first; RuntimeUnavailable when the device (or
    TensorRT, when asked for) is not in this ONNX Runtime build."""
    offered = ort.get_available_providers() if available is None else available
    if settings.device == "cpu":
        return [CPU]
    if CUDA not in offered:
        raise RuntimeUnavailable(
            "ONNX Runtime here has no CUDA provider (the CPU build is installed; the gpu "
            f"extra installs onnxruntime-gpu); available: {offered}"
        )
    chosen = [CUDA, CPU]
    if settings.use_tensorrt:
        if TENSORRT not in offered or not tensorrt_installed():
            raise RuntimeUnavailable(
                f"TensorRT was asked for but ONNX Runtime here has no usable {TENSORRT} "
                f"(listed: {TENSORRT in offered}; the TensorRT libraries, pip package "
                "`tensorrt`, must be installed too)"
            )
        chosen.insert(0, TENSORRT)
    return chosen


def tensorrt_installed() -> bool:
    """onnxruntime-gpu lists the TensorRT provider whether or not TensorRT's own libraries
    (libnvinfer) are there; they come from the `tensorrt` package or the system."""
    return (
        importlib.util.find_spec("tensorrt") is not None
        or ctypes.util.find_library("nvinfer") is not None
    )


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of the nvidia-* wheels (which the lock's torch
    pulls in) before the CUDA provider looks for them: onnxruntime-gpu finds them there
    only through `preload_dlls` (or after torch was imported)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # a CPU build or no nvidia wheels: the session reports it
            return


def session_options(settings: RunSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not settings.runtime_defaults:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OrtRunner:
    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self._inputs = [arg.name for arg in session.get_inputs()]
        self._outputs = [arg.name for arg in session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        return [np.asarray(output) for output in self.session.run(None, dict(feeds))]


class OnnxRuntime:
    name = NAME

    def available(self) -> bool:
        return True  # a dependency of core itself

    def devices(self) -> list[str]:
        """ "cpu", and "cuda" when this build has the CUDA provider and a session on it
        really runs there (onnxruntime-gpu lists the provider on machines with no GPU)."""
        found = ["cpu"]
        if CUDA in ort.get_available_providers() and cuda_session_works():
            found.append("cuda")
        return found

    def prepare(
        self, onnx_path: Path, out_dir: Path, settings: Mapping[str, Any] | None = None
    ) -> PreparedModel:
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / "model.onnx"
        if onnx_path.resolve() != target.resolve():
            copy_model(onnx_path, target)
        return PreparedModel(
            runtime=NAME,
            files=tuple(model_files(target)),
            details={"converted": False, "format": "onnx"},
        )

    def open(self, prepared: PreparedModel, settings: RunSettings) -> OrtRunner:
        chosen = providers(settings)
        if settings.device == "cuda":
            preload_cuda_libraries()
        try:
            session = ort.InferenceSession(
                str(prepared.entry), session_options(settings), providers=chosen
            )
        except Exception as exc:
            raise RuntimeUnsupportedModel(
                f"ONNX Runtime cannot load {prepared.entry.name}: {short_reason(exc)}"
            ) from exc
        if settings.device == "cuda" and session.get_providers()[0] not in (CUDA, TENSORRT):
            raise RuntimeUnavailable(
                "ONNX Runtime could not start its CUDA provider here (no usable GPU?); "
                f"the session fell back to {session.get_providers()}"
            )
        return OrtRunner(session)

    def size_bytes(self, prepared: PreparedModel) -> int:
        return prepared.size_bytes()

    def save_artifact(self, prepared: PreparedModel, dest_dir: Path) -> list[Path]:
        return copy_files(prepared, dest_dir)


def cuda_session_works() -> bool:
    """Whether a one-node session on the CUDA provider keeps it (initialises CUDA)."""
    import onnx
    import onnx.helper as helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    preload_cuda_libraries()
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[CUDA, CPU])
    except Exception:
        return False
    return session.get_providers()[0] == CUDA
