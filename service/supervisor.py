"""The embedded profile under supervision: the API and one Celery worker as child
processes, each restarted with backoff when it exits.

    python -m service.supervisor --port 8000 [--queues cpu] [--concurrency 1]

A worker's main process can die on its own (an unrecoverable broker error, the kernel's
OOM killer, a stray signal); nothing else would start it again and its jobs would sit
queued. Here a program that exits is started again after `backoff_initial_s`, doubled
after each exit that came sooner than `stable_after_s` after its start, at most
`backoff_max_s`. The API it starts counts a live worker on the supervised queues as a
readiness condition (SQUEEZE_READY_REQUIRES_WORKERS_FOR, unless the environment sets it),
so `/readyz` answers 503 while no worker is alive.

The state of every program (pid, starts, last exit) is written to
`<data_dir>/supervisor.json` after every change, for operators and tests. SIGTERM or
SIGINT stops the children (SIGTERM to each process group, SIGKILL after a grace period)
and then the supervisor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from service.backoff import Backoff
from service.logs import configure_logging
from service.settings import get_settings

log = logging.getLogger("squeeze.supervisor")
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Program:
    """A command kept running, and what the supervisor knows of it."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    # at the first start, the next program waits until this URL answers (the API has
    # upgraded the database schema: two processes must not migrate one SQLite file at once)
    ready_url: str | None = None
    pid: int | None = None
    starts: int = 0
    last_exit_code: int | None = None
    last_exit_at: float | None = None
    started_at: float | None = None  # monotonic
    # when the next start is due while it is down (monotonic), and the current backoff
    restart_at: float | None = None
    backoff_s: float = 0.0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def status(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "running": self.process is not None and self.process.poll() is None,
            "starts": self.starts,
            "last_exit_code": self.last_exit_code,
            "last_exit_at": self.last_exit_at,
            "backoff_s": self.backoff_s,
        }


class Supervisor:
    def __init__(
        self,
        programs: Sequence[Program],
        state_file: Path,
        backoff: Backoff | None = None,
        grace_s: float = 20.0,
    ) -> None:
        self.programs = list(programs)
        self.state_file = state_file
        self.backoff = backoff or Backoff()
        self.grace_s = grace_s
        self._stopping = False

    def run(self, poll_s: float = 0.5) -> None:
        """Start every program and keep them running until SIGTERM or SIGINT."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for program in self.programs:
            self._start(program)
            if program.ready_url is not None:
                _wait_answering(program, timeout_s=180)
        try:
            while not self._stopping:
                self.check_once()
                time.sleep(poll_s)
        finally:
            self.stop_all()

    def check_once(self) -> None:
        """Notice exits and start what is due; one pass of the loop."""
        now = time.monotonic()
        for program in self.programs:
            process = program.process
            if process is not None and process.poll() is not None:
                ran_s = now - (program.started_at or now)
                program.last_exit_code = process.returncode
                program.last_exit_at = time.time()
                program.process = None
                program.pid = None
                program.backoff_s = self.backoff.next_delay(program.backoff_s, ran_s)
                program.restart_at = now + program.backoff_s
                log.error(
                    "supervisor: %s exited with code %s after %.1f s; starting it again in "
                    "%.1f s",
                    program.name,
                    process.returncode,
                    ran_s,
                    program.backoff_s,
                )
                self._write_state()
            due = program.restart_at is not None and now >= program.restart_at
            if program.process is None and due and not self._stopping:
                self._start(program)

    def _start(self, program: Program) -> None:
        output = program.log_path.open("ab") if program.log_path is not None else None
        program.process = subprocess.Popen(
            program.command,
            env={**os.environ, **program.env},
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,  # its own process group: a stop reaches its children
        )
        if output is not None:
            output.close()
        program.pid = program.process.pid
        program.starts += 1
        program.started_at = time.monotonic()
        program.restart_at = None
        log.info("supervisor: started %s (pid %d, start %d)", program.name, program.pid,
                 program.starts)  # fmt: skip
        self._write_state()

    def stop_all(self) -> None:
        """SIGTERM to each program's group (the worker first), then SIGKILL the rest."""
        self._stopping = True
        for program in reversed(self.programs):
            if program.process is not None and program.process.poll() is None:
                _signal_group(program.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for program in reversed(self.programs):
            process = program.process
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            program.process = None
            program.pid = None
        self._write_state()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("supervisor: signal %d, stopping", signum)
        self._stopping = True

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "programs": {program.name: program.status() for program in self.programs},
        }
        partial = self.state_file.with_suffix(".json.partial")
        partial.write_text(json.dumps(state, indent=2))
        os.replace(partial, self.state_file)


def _wait_answering(program: Program, timeout_s: float) -> None:
    assert program.ready_url is not None and program.process is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and program.process.poll() is None:
        try:
            with urllib.request.urlopen(program.ready_url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (a 503 from /readyz is still an answer)
        except OSError:
            time.sleep(0.3)
    log.warning("supervisor: %s did not answer at %s", program.name, program.ready_url)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def embedded_programs(
    *, host: str, port: int, queues: list[str], concurrency: int, log_dir: Path
) -> list[Program]:
    """The API and one worker on the embedded default (the environment's settings)."""
    python = sys.executable
    api_env = {}
    if "SQUEEZE_READY_REQUIRES_WORKERS_FOR" not in os.environ:
        api_env["SQUEEZE_READY_REQUIRES_WORKERS_FOR"] = json.dumps(queues)
    return [
        Program(
            name="api",
            command=[
                python, "-m", "uvicorn", "api.app:create_app", "--factory",
                "--host", host, "--port", str(port), "--log-level", "warning",
            ],
            env=api_env,
            log_path=log_dir / "api.log",
            ready_url=f"http://{host}:{port}/healthz",
        ),
        Program(
            name="worker",
            command=[
                python, "-m", "celery", "-A", "worker.main", "worker",
                "-Q", ",".join(queues), "--concurrency", str(concurrency),
                "--loglevel", "INFO", "--hostname", "embedded@%h",
                "--without-mingle", "--without-gossip",
            ],
            log_path=log_dir / "worker.log",
        ),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--queues", default=None, help="comma-separated (default: the cpu queue)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--backoff-initial-s", type=float, default=1.0)
    parser.add_argument("--backoff-max-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_format)
    settings.ensure_dirs()
    queues = args.queues.split(",") if args.queues else [settings.queue_cpu]
    log_dir = settings.data_dir.resolve() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    programs = embedded_programs(
        host=args.host,
        port=args.port,
        queues=queues,
        concurrency=args.concurrency,
        log_dir=log_dir,
    )
    backoff = Backoff(initial_s=args.backoff_initial_s, max_s=args.backoff_max_s)
    Supervisor(programs, settings.data_dir.resolve() / "supervisor.json", backoff).run()


if __name__ == "__main__":
    main()
