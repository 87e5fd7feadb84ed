"""Deployment settings: how a user runs the model, so that latency is measured that way.

`DeploymentSettings` is what a job names per deployment target (the spec refers to it);
`RunSettings` is one resolved session of it (one thread count, one device), what a
runtime adapter's `open` applies. What each runtime honours:

| setting | ONNX Runtime | OpenVINO (CPU plugin) |
| --- | --- | --- |
| `threads` | `intra_op_num_threads` (inter-op 1) | `INFERENCE_NUM_THREADS` |
| `runtime_defaults=True` | spinning left on (ORT's default) | the plugin's own streams, pinning |
| `runtime_defaults=False` | `allow_spinning = 0` (intra, inter) | `NUM_STREAMS=1`, no CPU pinning |
| `performance_hint` | ignored | `PERFORMANCE_HINT` (LATENCY by default) |
| `use_tensorrt` | TensorRT provider first on `cuda` (refused when absent) | ignored |
| the job's `batch_sizes` | the rows per timed run (any batch the model admits) | same |

Why both modes exist: users deploy with the runtime's defaults (ONNX Runtime's spinning
on made a recogniser 1.6x faster alone on this machine), but two sessions timed
interleaved on a small machine with spinning on came out 4-7x too slow (the field
notes): a measurement says which mode it used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# "worker": the threads the worker has, resolved where the model is measured.
ThreadCount = Annotated[int, Field(ge=1, le=1024)] | Literal["worker"]
Device = Literal["cpu", "cuda"]
PerformanceHint = Literal["LATENCY", "THROUGHPUT"]


def _default_threads() -> list[int | Literal["worker"]]:
    return ["worker", 1]


class DeploymentSettings(BaseModel):
    """How the model will be deployed: the sessions latency is measured under."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: list[ThreadCount] = Field(
        default_factory=_default_threads,
        min_length=1,
        max_length=8,
        description='thread counts to measure at; "worker" is what the worker has',
    )
    runtime_defaults: bool = Field(
        default=True,
        description="the runtime's own defaults (ONNX Runtime's thread spinning on), as "
        "users deploy; false: spinning off, one stream (fair interleaved timing)",
    )
    performance_hint: PerformanceHint = "LATENCY"
    use_tensorrt: bool = False

    @field_validator("threads")
    @classmethod
    def _no_repeats(cls, values: list[object]) -> list[object]:
        if len(set(values)) != len(values):
            raise ValueError("each value may appear once")
        return values

    def resolve(
        self, device: Device = "cpu", worker_threads: int | None = None
    ) -> list[RunSettings]:
        """One RunSettings per distinct thread count, "worker" resolved to
        `worker_threads` (default: the CPUs this process may use)."""
        available = worker_threads if worker_threads is not None else usable_cpus()
        counts: list[int] = []
        for value in self.threads:
            count = available if value == "worker" else value
            if count not in counts:
                counts.append(count)
        return [
            RunSettings(
                device=device,
                threads=count,
                runtime_defaults=self.runtime_defaults,
                performance_hint=self.performance_hint,
                use_tensorrt=self.use_tensorrt,
            )
            for count in counts
        ]


Runtime = Literal["onnxruntime", "openvino"]


class DeploymentTarget(DeploymentSettings):
    """Where a job's model will run: a runtime on a device, deployed with these settings
    (the batch sizes are the job's `batch_sizes`). Each target gets its own model, tuned
    and measured in that runtime, with its own verdict."""

    runtime: Runtime = "onnxruntime"
    device: Device = "cpu"

    @model_validator(mode="after")
    def _supported(self) -> DeploymentTarget:
        if self.runtime == "openvino" and self.device != "cpu":
            raise ValueError("the openvino target runs on the cpu device (its CPU plugin)")
        if self.use_tensorrt and (self.runtime != "onnxruntime" or self.device != "cuda"):
            raise ValueError("use_tensorrt needs runtime onnxruntime on device cuda")
        return self

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.device}"


@dataclass(frozen=True)
class RunSettings:
    """One session's settings: what `Runtime.open` applies."""

    device: Device = "cpu"
    threads: int = 1
    runtime_defaults: bool = True
    performance_hint: PerformanceHint = "LATENCY"
    use_tensorrt: bool = False

    def describe(self) -> str:
        mode = "runtime defaults" if self.runtime_defaults else "spinning off, one stream"
        return f"{self.device}, {self.threads} thread(s), {mode}"


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, narrowed by a cgroup CPU quota
    (`docker run --cpus 2` sets the quota, not the affinity)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """CPUs allowed by a cgroup v2 quota ("max 100000" means none), or None."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return float(quota) / float(period)
    except (ValueError, ZeroDivisionError):
        return None
