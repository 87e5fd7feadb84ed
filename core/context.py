"""What the pipeline hands every step: where to write, which device, and how to report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.candidates import CandidateStore, NoCandidateStore
from core.errors import JobCancelled

# progress in 0..1 over the whole job, a short message, structured data for the event log
ProgressCallback = Callable[[float, str, dict[str, Any]], None]


def _no_progress(progress: float, message: str, data: dict[str, Any]) -> None:
    return None


def _never_cancelled() -> bool:
    return False


def _no_helpers(study_name: str, count: int) -> None:
    return None


@dataclass(frozen=True)
class SearchStore:
    """Where an architecture search keeps its trials, so that a restarted worker resumes
    it and several workers share it.

    `url` is an Optuna storage URL (None keeps the trials in memory: no resume, no
    helpers). A study is named `study_prefix` plus a hash of the step's config. A
    running trial beats every `heartbeat_s`; one silent for `grace_s` belonged to a dead
    worker: it is failed and queued again with the same architecture.
    """

    url: str | None = None
    study_prefix: str = "search"
    heartbeat_s: int = 10
    grace_s: int = 60


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
    # The share of the job's progress (0..1) that the current step owns, set by the
    # pipeline; steps report their own 0..1 through `report_step` and the job's bar stays
    # monotonic.
    progress_span: tuple[float, float] | None = None
    # Architecture search: its trial storage, and how to ask `count` other workers to
    # join the study named `study_name` (a no-op outside the worker).
    search_store: SearchStore = field(default_factory=SearchStore)
    request_helpers: Callable[[str, int], None] = _no_helpers
    # The auto recipe's finished candidates, kept so that a new attempt of the job
    # resumes the recipe (the worker's store; nothing kept outside the worker).
    candidate_store: CandidateStore = field(default_factory=NoCandidateStore)

    def report(self, progress: float, message: str, **data: Any) -> None:
        """Report progress; raises JobCancelled when the job was cancelled meanwhile."""
        self.check_cancelled()
        self.on_progress(min(max(progress, 0.0), 1.0), message, data)

    def report_step(self, fraction: float, message: str, **data: Any) -> None:
        """Report progress within the current step, mapped into its share of the job
        (outside a pipeline the step is the whole job: 0..1)."""
        start, end = self.progress_span or (0.0, 1.0)
        self.report(start + (end - start) * min(max(fraction, 0.0), 1.0), message, **data)

    def check_cancelled(self) -> None:
        if self.is_cancelled():
            raise JobCancelled("the job was cancelled")
