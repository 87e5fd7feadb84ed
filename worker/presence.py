"""A worker says what it can do: its row in `workers`, registered and beaten from the
parent process's periodic pass (worker/main.py), marked stopped on a clean shutdown.

The devices come from `core.devices.probe_in_subprocess`: the parent forks its pool
after this, and CUDA must never be initialised in it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
import tomllib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from core.devices import DeviceReport, probe_in_subprocess
from service.settings import Settings
from store import workers
from store.db import transaction

log = logging.getLogger(__name__)
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def service_version() -> str:
    """The installed distribution's version, else the checkout's pyproject.toml's."""
    try:
        return importlib.metadata.version("squeeze")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return str(tomllib.loads(_PYPROJECT.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def capabilities(
    name: str, queues: list[str], concurrency: int, report: DeviceReport
) -> workers.Capabilities:
    return workers.Capabilities(
        name=name,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        queues=queues,
        concurrency=concurrency,
        runtimes=report.runtimes,
        devices=report.devices(),
        gpus=[asdict(gpu) for gpu in report.gpus],
        version=service_version(),
    )


class WorkerPresence:
    """`run_once` registers (the first time, or again if the row was forgotten) or
    beats; it also forgets workers dead for `worker_forget_after_s`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        *,
        name: str,
        queues: list[str],
        concurrency: int,
        active: Callable[[], int],
        probe: Callable[[], DeviceReport] = probe_in_subprocess,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.name = name
        self.queues = queues
        self.concurrency = concurrency
        self.active = active
        self.probe = probe
        self.report: DeviceReport | None = None
        self.worker_id: str | None = None

    def run_once(self) -> str:
        if self.report is None:
            self.report = self.probe()
            if self.report.error:
                log.warning("device probe failed (%s): registering the CPU only", self.report.error)
        with transaction(self.sessions) as session:
            if self.worker_id is None or not workers.heartbeat(
                session, self.worker_id, active=self.active()
            ):
                self.worker_id = workers.register(
                    session, capabilities(self.name, self.queues, self.concurrency, self.report)
                )
                log.info(
                    "worker %s registered as %s: queues %s, devices %s, runtimes %s",
                    self.name,
                    self.worker_id,
                    self.queues,
                    self.report.devices(),
                    self.report.runtimes,
                )
            workers.forget_dead(session, older_than_s=self.settings.worker_forget_after_s)
        return self.worker_id

    def stop(self) -> None:
        if self.worker_id is None:
            return
        try:
            with transaction(self.sessions) as session:
                workers.mark_stopped(session, self.worker_id)
        except Exception:  # the database may be gone at shutdown: the row then times out
            log.warning("could not mark worker %s stopped", self.worker_id, exc_info=True)
