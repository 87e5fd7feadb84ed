"""What the engine returns: measured metrics per model, per step, and the verdict.

Everything here is a measured value (never assumed); these models are stored as JSON
with the job and served to clients as they are.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Latency(BaseModel):
    batch_size: int
    median_ms: float
    p95_ms: float
    runs: int


class ModelMetrics(BaseModel):
    size_bytes: int
    parameters: int
    latency: list[Latency]
    metric_name: Literal["accuracy", "agreement", "cosine_similarity", "neg_mse"]
    metric_value: float
    # Change vs the original model (metric_value - original); 0 for the original itself.
    metric_change: float = 0.0


class StepResult(BaseModel):
    index: int
    method: str
    metrics: ModelMetrics
    duration_s: float
    # Method-specific facts, e.g. the quantization mode, op types, opset upgrade.
    details: dict[str, Any] = Field(default_factory=dict)


class TargetCheck(BaseModel):
    target: Literal["max_metric_drop", "max_latency_ms", "max_size_bytes", "not_slower"]
    limit: float
    measured: float
    met: bool


class Verdict(BaseModel):
    targets_met: bool
    checks: list[TargetCheck]
    # Speed/size/metric of the final model relative to the original, for people.
    size_ratio: float
    latency_ratio: float
    metric_change: float


class PipelineResult(BaseModel):
    original: ModelMetrics
    steps: list[StepResult]
    final: ModelMetrics
    verdict: Verdict
    manifest: dict[str, Any]
