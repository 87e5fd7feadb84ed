"""Live progress: a redrawn bar on a terminal, one line per change otherwise."""

from __future__ import annotations

from typing import Any, TextIO

from squeeze.cli.render import size
from squeeze.client import Client
from squeeze.client.models import Batch, Job

BAR_WIDTH = 30
# without a terminal, a new line is printed when the progress moved this much
PLAIN_STEP = 0.05


def bar(fraction: float) -> str:
    filled = round(max(0.0, min(fraction, 1.0)) * BAR_WIDTH)
    return "[" + "#" * filled + " " * (BAR_WIDTH - filled) + "]"


def metric_of(data: dict[str, Any]) -> str | None:
    """The metric an event reports, if any: a step's measured metric, a training epoch's
    eval metric or loss, a search trial's metric."""
    metrics = data.get("metrics")
    if isinstance(metrics, dict) and isinstance(metrics.get("metric_value"), int | float):
        return f"{metrics.get('metric_name', 'metric')} {metrics['metric_value']:.4f}"
    for key in ("eval_metric", "accuracy", "metric", "loss"):
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return f"{key} {value:.4g}"
    trial = data.get("trial")
    if isinstance(trial, dict) and isinstance(trial.get("metric"), int | float):
        return f"trial {trial.get('number')} metric {trial['metric']:.4f}"
    return None


class Display:
    """Writes status lines to `stream`: redrawn in place when `live`, else appended
    when they change enough to say something new."""

    def __init__(self, stream: TextIO, live: bool) -> None:
        self.stream = stream
        self.live = live
        self._last_key: object = None
        self._drawn = False

    def show(self, line: str, key: object) -> None:
        if self.live:
            self.stream.write("\r\033[K" + line)
            self._drawn = True
        elif key != self._last_key:
            self.stream.write(line + "\n")
        self._last_key = key
        self.stream.flush()

    def done(self) -> None:
        if self.live and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False


class JobWatcher:
    """`on_update` for `Client.wait`: the bar, state, current step and latest metric,
    the metric read from the job's events as they come."""

    def __init__(self, client: Client, display: Display) -> None:
        self.client = client
        self.display = display
        self.after = 0
        self.metric: str | None = None
        self.progress = Monotonic()

    def __call__(self, job: Job) -> None:
        page = self.client.list_events(job, after=self.after, limit=1000)
        for event in page.items:
            self.metric = metric_of(event.data) or self.metric
        self.after = page.next_after
        step = job.current_step or ""
        shown = self.progress(job.progress)
        line = f"{bar(shown)} {shown:4.0%}  {job.state:<9} {step}".rstrip()
        if self.metric:
            line += f"  ({self.metric})"
        bucket = int(shown / PLAIN_STEP)
        self.display.show(line, (job.state, step, bucket, self.metric))
        if job.is_final:
            self.display.done()


class Monotonic:
    """The highest progress seen so far: a bar never moves back, even when the service
    reports less (a retried attempt starts again from 0, or a step's own estimate was
    revised down)."""

    def __init__(self) -> None:
        self.highest = 0.0

    def __call__(self, progress: float) -> float:
        self.highest = max(self.highest, min(progress, 1.0))
        return self.highest


class BatchWatcher:
    def __init__(self, display: Display) -> None:
        self.display = display
        self.progress = Monotonic()

    def __call__(self, batch: Batch) -> None:
        finished = sum(batch.counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
        active = ", ".join(
            f"{batch.counts[s]} {s}" for s in ("running", "queued") if batch.counts.get(s)
        )
        shown = self.progress(batch.progress)
        line = f"{bar(shown)} {shown:4.0%}  {finished}/{batch.total} done"
        if active:
            line += f" ({active})"
        self.display.show(line, (finished, active, int(shown / PLAIN_STEP)))
        if batch.is_final:
            self.display.done()


class TransferBar:
    """A `progress(done, total)` callback drawing a byte bar (on a terminal only)."""

    def __init__(self, display: Display, label: str) -> None:
        self.display = display
        self.label = label

    def __call__(self, done: int, total: int | None) -> None:
        if not self.display.live:
            return
        fraction = done / total if total else 0.0
        shown = f"{size(done)}" + (f" / {size(total)}" if total else "")
        self.display.show(f"{self.label} {bar(fraction)} {fraction:4.0%}  {shown}", done)
        if total is not None and done >= total:
            self.display.done()
