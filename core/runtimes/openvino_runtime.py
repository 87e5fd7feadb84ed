"""OpenVINO as a runtime adapter: the CPU plugin, on IR converted from the ONNX file.

`prepare` runs OpenVINO's own converter (`ov.convert_model` on the ONNX file), saves IR
(`model.xml` + `model.bin`, weights kept FP32: `compress_to_fp16=False`) and compiles it
once, because some graphs convert and then fail in the plugin (weights inside `If`
branches whose outputs differ in rank: "CPU plug-in doesn't support If operation with
dynamic rank"); either failure is a RuntimeUnsupportedModel with OpenVINO's reason.

The CPU plugin computes in bfloat16 by default on CPUs that have it (AVX-512 BF16, AMX):
an "FP32" IR then does not give FP32 numbers. The FP32 artifact is therefore opened with
`INFERENCE_PRECISION_HINT=f32` (its `open_config`); a bf16 artifact is a separate,
measured candidate (core.runtimes.openvino_compress).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import RuntimeUnavailable, RuntimeUnsupportedModel, short_reason
from core.runtimes.base import Feeds, PreparedModel, copy_files
from core.runtimes.settings import RunSettings

NAME = "openvino"
# The precision an artifact is opened with, unless it says otherwise.
FP32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeUnavailable("OpenVINO is not installed here (pip install openvino)") from exc
    return openvino


def compile_config(prepared: PreparedModel, settings: RunSettings) -> dict[str, str]:
    """The CPU plugin's properties for one session (see core.runtimes.settings)."""
    config = {
        "INFERENCE_NUM_THREADS": str(settings.threads),
        "PERFORMANCE_HINT": settings.performance_hint,
    }
    if not settings.runtime_defaults:
        config["NUM_STREAMS"] = "1"
        config["ENABLE_CPU_PINNING"] = "NO"
    config.update(prepared.open_config)
    return config


class OpenVinoRunner:
    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self._inputs = [port.get_any_name() for port in compiled.inputs]
        self._outputs = [port.get_any_name() for port in compiled.outputs]

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        # share_outputs=False: the arrays are copies, not views a later run overwrites
        # share_inputs: no copy of a contiguous array (a strided one is made contiguous;
        # np.asarray, not np.ascontiguousarray, which turns a 0-d input into shape (1,))
        inputs = {name: np.asarray(array, order="C") for name, array in feeds.items()}
        results = self.request.infer(inputs, share_inputs=True, share_outputs=False)
        return [np.asarray(results[port]) for port in self.compiled.outputs]


class OpenVinoRuntime:
    name = NAME

    def available(self) -> bool:
        return importlib.util.find_spec("openvino") is not None

    def devices(self) -> list[str]:
        if not self.available():
            return []
        return ["cpu"] if "CPU" in _openvino().Core().available_devices else []

    def prepare(
        self, onnx_path: Path, out_dir: Path, settings: Mapping[str, Any] | None = None
    ) -> PreparedModel:
        """FP32 IR of the ONNX model, checked to compile on the CPU plugin."""
        ov = _openvino()
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as exc:
            raise RuntimeUnsupportedModel(
                f"OpenVINO cannot convert {onnx_path.name}: {short_reason(exc)}"
            ) from exc
        return save_ir(model, out_dir, details={"converted": True, "format": "openvino-ir"})

    def open(self, prepared: PreparedModel, settings: RunSettings) -> OpenVinoRunner:
        if settings.device != "cpu":
            raise RuntimeUnavailable(
                f"the OpenVINO adapter runs on the CPU plugin only, not {settings.device!r}"
            )
        ov = _openvino()
        try:
            compiled = ov.Core().compile_model(
                str(prepared.entry), "CPU", compile_config(prepared, settings)
            )
        except Exception as exc:
            raise RuntimeUnsupportedModel(
                f"OpenVINO's CPU plugin cannot compile {prepared.entry.name}: {_reason(exc)}"
            ) from exc
        return OpenVinoRunner(compiled)

    def size_bytes(self, prepared: PreparedModel) -> int:
        return prepared.size_bytes()

    def save_artifact(self, prepared: PreparedModel, dest_dir: Path) -> list[Path]:
        return copy_files(prepared, dest_dir)


def save_ir(
    model: Any,
    out_dir: Path,
    *,
    details: dict[str, Any],
    open_config: Mapping[str, str] | None = None,
    stem: str = "model",
) -> PreparedModel:
    """Save an `ov.Model` as IR (weights as they are: no FP16 compression) and check the
    CPU plugin compiles it; RuntimeUnsupportedModel naming OpenVINO's reason if not."""
    ov = _openvino()
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / f"{stem}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    prepared = PreparedModel(
        runtime=NAME,
        files=(xml, xml.with_suffix(".bin")),
        details=details,
        open_config=dict(FP32_CONFIG if open_config is None else open_config),
    )
    try:
        ov.Core().compile_model(str(xml), "CPU", dict(prepared.open_config))
    except Exception as exc:
        raise RuntimeUnsupportedModel(
            f"OpenVINO converted the model but its CPU plugin cannot compile it: {_reason(exc)}"
        ) from exc
    return prepared


def _reason(exc: BaseException) -> str:
    """OpenVINO's messages chain "Exception from src/...cpp:117:" and "Check '...' failed
    at src/...:108:" prefixes before the sentence that says what is wrong: keep that."""
    text = " ".join(str(exc).split())
    text = _OV_NOISE.sub("", text).strip()
    return text[:500] if text else short_reason(exc)


_OV_NOISE = re.compile(r"(Exception from \S+:\d+:\s*|Check '.*?' failed at \S+:\d+:\s*)")
