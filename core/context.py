"""What the pipeline hands every step: where to write, which device, and how to report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import JobCancelled

# progress in 0..1 over the whole job, a short message, structured data for the event log
ProgressCallback = Callable[[float, str, dict[str, Any]], None]


def _no_progress(progress: float, message: str, data: dict[str, Any]) -> None:
    return None


def _never_cancelled() -> bool:
    return False


@dataclass(frozen=True)
class MeasureSettings:
    threads: int = 1
    warmup_runs: int = 5
    runs: int = 30


@dataclass
class RunContext:
    work_dir: Path
    device: str = "cpu"  # resolved: "cpu" or "cuda"
    seed: int = 0
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    on_progress: ProgressCallback = _no_progress
    is_cancelled: Callable[[], bool] = _never_cancelled

    def report(self, progress: float, message: str, **data: Any) -> None:
        """Report progress; raises JobCancelled when the job was cancelled meanwhile."""
        self.check_cancelled()
        self.on_progress(min(max(progress, 0.0), 1.0), message, data)

    def check_cancelled(self) -> None:
        if self.is_cancelled():
            raise JobCancelled("the job was cancelled")
