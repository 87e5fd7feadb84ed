"""A function run every few seconds in a daemon thread of the worker's parent process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, interval_s: float, function: Callable[[], object]) -> None:
        self._name = name
        self._interval_s = interval_s
        self._function = function
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        while True:
            try:
                self._function()
            except Exception:  # it must outlive a database or broker outage
                log.exception("%s pass failed", self._name)
            if self._stopped.wait(self._interval_s):
                return
