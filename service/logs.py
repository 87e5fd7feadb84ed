"""Logging for the API and the workers: JSON lines (or text) carrying the job id.

`log_context(job_id=...)` sets the job id in a context variable for as long as a job is
handled (the worker's task, the API's job routes, a webhook delivery); a filter on the
handler copies it onto every record, so every line logged meanwhile names the job,
whichever module logged it. Context variables do not follow work into new threads.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, TextIO

LogFormat = Literal["json", "text"]

job_id_var: ContextVar[str | None] = ContextVar("squeeze_job_id", default=None)

# the handler this module installs, recognised so a second configure replaces it
_HANDLER_NAME = "squeeze"
# frameworks whose own handlers are given the same format (when they have handlers)
_FRAMEWORK_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(job_tag)s: %(message)s"
# attributes every LogRecord has; anything else was passed with `extra=` and is kept
_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_STANDARD_ATTRIBUTES |= {"job_id", "job_tag"}


@contextmanager
def log_context(*, job_id: str | None) -> Iterator[None]:
    """Every record logged in this context (this thread or task) carries `job_id`."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


# Celery logs a task's arrival in the worker's parent, outside any job context, with the
# task's arguments in its record: the job id is the first of them.
_CELERY_JOB_ARG = re.compile(r"\b(job_[0-9a-f]{12,})\b")


def _job_id_in_celery_record(record: logging.LogRecord) -> str | None:
    if not record.name.startswith("celery") or not isinstance(record.args, dict):
        return None
    match = _CELERY_JOB_ARG.search(str(record.args.get("args", "")))
    return match.group(1) if match else None


class JobIdFilter(logging.Filter):
    """Copies the context's job id onto the record (`job_id`, and `job_tag` for text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = (
            getattr(record, "job_id", None) or job_id_var.get() or _job_id_in_celery_record(record)
        )
        record.job_id = job_id
        record.job_tag = f" [{job_id}]" if job_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, job_id, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = (
            getattr(record, "job_id", None) or job_id_var.get() or _job_id_in_celery_record(record)
        )
        if job_id:
            entry["job_id"] = job_id
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time (as logging's last resort does), so
    a redirected or captured stderr is followed."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def formatter_for(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(log_format: LogFormat, level: int | str = logging.INFO) -> None:
    """Send the root logger's records to stderr in `log_format`, with the job id.

    Idempotent: a second call replaces this module's handler, and other handlers (a
    test's capture, a framework's) are left alone; the frameworks' own handlers get the
    same formatter and filter so their lines carry the job id too.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = StderrHandler()
    handler.set_name(_HANDLER_NAME)
    _style(handler, log_format)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _FRAMEWORK_LOGGERS:
        for framework_handler in logging.getLogger(name).handlers:
            _style(framework_handler, log_format)


def _style(handler: logging.Handler, log_format: LogFormat) -> None:
    handler.setFormatter(formatter_for(log_format))
    if not any(isinstance(existing, JobIdFilter) for existing in handler.filters):
        handler.addFilter(JobIdFilter())
