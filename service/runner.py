"""The service on one machine: the API (uvicorn) and Celery workers as child processes.

`squeeze serve`, `make demo` (scripts/demo.py) and the benchmarks start the embedded
default through this module: a data dir (SQLite, the file-system broker, local blob
files), one API process and `workers` worker processes. Each child runs in its own
session, so a Ctrl-C at the terminal reaches only the parent, which then stops them in
order (workers first, then the API): SIGTERM to the child's process group, SIGKILL after
`stop_timeout_s`. `Service.revive_workers()` starts a worker that died again, with the
supervisor's backoff (service/backoff.py); `squeeze serve` calls it.

Only the standard library and httpx are imported here: the CLI imports this module lazily
and must be able to say "install squeeze[server]" when the service's libraries are absent
(`missing_server_libraries`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from service.backoff import Backoff

# The source tree (a checkout) or site-packages (an installed distribution): the children
# import api/ and worker/ from there.
ROOT = Path(__file__).resolve().parent.parent
# what the API and the worker cannot start without (the `server` extra)
SERVER_MODULES = ("fastapi", "uvicorn", "celery", "sqlalchemy", "onnxruntime", "torch")
DEFAULT_QUEUE = "cpu"


class ServiceError(RuntimeError):
    """A child process did not start (or died); the message names it and its log."""


def missing_server_libraries() -> list[str]:
    """The server libraries this interpreter lacks (empty when `squeeze[server]` is in)."""
    return [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on host:port already (then /readyz there would answer for
    another service, and this one's API would fail to bind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def api_command(port: int, *extra: str, host: str = "127.0.0.1") -> list[str]:
    """The API on the embedded default: what the demo, `squeeze serve` and
    bench/load.py run."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.app:create_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra,
    ]


def worker_command(
    queue: str, hostname: str, concurrency: int = 1, loglevel: str = "INFO"
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.main",
        "worker",
        "-Q",
        queue,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--hostname",
        hostname,
    ]


def stop(process: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    """SIGTERM to the child's process group (a Celery worker and its pool, uvicorn and
    its workers), SIGKILL if it is still there after `timeout_s`."""
    stop_together([process], timeout_s)


def stop_together(processes: list[subprocess.Popen[bytes]], timeout_s: float = 20) -> None:
    """`stop` for several children at once: all are asked first, then all get the same
    `timeout_s`, so N workers take one warm shutdown's time, not N of them."""
    asked = []
    for process in processes:
        if process.poll() is not None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        asked.append(process)
    deadline = time.monotonic() + timeout_s
    for process in asked:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError("the API exited during start-up; see its log")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise ServiceError("the API did not become ready in time")


def live_workers(base_url: str, queue: str) -> int:
    """Live workers on `queue` as /readyz counts them (0 when it does not answer)."""
    try:
        answer = httpx.get(f"{base_url}/readyz", timeout=2)
        return int(answer.json().get("workers", {}).get(queue, 0))
    except (httpx.HTTPError, ValueError):
        return 0


@dataclass
class Child:
    """One started process: its name (api, worker-1...), command and log file."""

    name: str
    command: list[str]
    log: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Service:
    """The API and `workers` Celery workers on `data_dir`; a context manager that stops
    them on exit, whatever happened."""

    data_dir: Path
    port: int
    workers: int = 1
    host: str = "127.0.0.1"
    queue: str = DEFAULT_QUEUE
    # where api.log and worker-N.log go (default: data_dir/logs)
    log_dir: Path | None = None
    api_args: Sequence[str] = ()
    # extra environment for the children (SQUEEZE_* settings)
    env: Mapping[str, str] = field(default_factory=dict)
    start_timeout_s: float = 120
    stop_timeout_s: float = 20
    children: list[Child] = field(default_factory=list)
    backoff: Backoff = field(default_factory=Backoff)
    # worker name -> (its current backoff, when it is due to start again; monotonic)
    _revivals: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    _started_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.log_dir = (self.log_dir or self.data_dir / "logs").resolve()

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def admin_key_file(self) -> Path:
        """Where the embedded default keeps the admin key it made on its first start
        (service.settings.Settings.admin_key_file)."""
        return self.data_dir / "admin-api-key"

    def child_env(self) -> dict[str, str]:
        python_path = os.pathsep.join(
            part for part in (str(ROOT), os.environ.get("PYTHONPATH", "")) if part
        )
        return {
            **os.environ,
            "SQUEEZE_DATA_DIR": str(self.data_dir),
            "PYTHONPATH": python_path,
            **self.env,
        }

    # --- start and stop -------------------------------------------------------------------

    def start(self) -> None:
        """The API, once it answers /readyz the workers, once /readyz counts them all."""
        if port_in_use(self.host, self.port):
            raise ServiceError(
                f"port {self.port} on {self.host} is in use (another service, or another "
                "`squeeze serve`?): stop it or choose another port (--port)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        assert self.log_dir is not None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            api = self._spawn("api", api_command(self.port, *self.api_args, host=self.host))
            try:
                wait_ready(self.base_url, api.process, timeout_s=self.start_timeout_s)
            except ServiceError as error:
                raise ServiceError(f"{error} ({api.log}):\n{api.log_tail()}") from None
            for index in range(1, self.workers + 1):
                self._spawn_worker(index)
            self.wait_for_workers(self.workers)
        except BaseException:
            self.stop()
            raise

    def _spawn_worker(self, index: int) -> Child:
        name = f"worker-{index}"
        return self._spawn(name, worker_command(self.queue, f"serve-{index}@%h"))

    def _spawn(self, name: str, command: list[str]) -> Child:
        assert self.log_dir is not None
        log = self.log_dir / f"{name}.log"
        handle: IO[bytes] = log.open("ab")
        try:
            process = subprocess.Popen(
                command,
                env=self.child_env(),
                # kombu's file-system transport and Celery write relative files here
                cwd=self.data_dir,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            handle.close()  # the child has its own copy
        child = Child(name=name, command=command, log=log, process=process)
        self._started_at[name] = time.monotonic()
        self.children = [c for c in self.children if c.name != name] + [child]
        return child

    def wait_for_workers(self, count: int) -> None:
        """Until /readyz counts `count` live workers on the queue (each registers once
        it is ready); jobs are refused before (absent_worker_policy)."""
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            for child in self.children:
                if child.name.startswith("worker") and child.process.poll() is not None:
                    raise ServiceError(
                        f"{child.name} exited during start-up ({child.log}):\n{child.log_tail()}"
                    )
            if live_workers(self.base_url, self.queue) >= count:
                return
            time.sleep(0.5)
        raise ServiceError(
            f"no {count} live worker(s) on queue {self.queue!r} within "
            f"{self.start_timeout_s:.0f} s; see {self.log_dir}"
        )

    def stop(self) -> None:
        """Workers first (no new job starts), all at once, then the API; each of the two
        rounds gets `stop_timeout_s`."""
        workers = [child.process for child in self.children if child.name != "api"]
        stop_together(workers, timeout_s=self.stop_timeout_s)
        stop_together(
            [child.process for child in self.children if child.name == "api"],
            timeout_s=self.stop_timeout_s,
        )

    # --- for a supervisor -----------------------------------------------------------------

    def dead(self) -> list[Child]:
        """The children that exited (the caller decides: stop everything, or restart)."""
        return [child for child in self.children if child.process.poll() is not None]

    def revive_workers(self, now: float | None = None) -> list[str]:
        """One pass: a worker that exited is started again after its backoff (the API's
        death is the caller's to handle). Returns what happened, in words."""
        now = time.monotonic() if now is None else now
        said: list[str] = []
        for child in self.dead():
            if child.name == "api":
                continue
            delay, due = self._revivals.get(child.name, (0.0, None))
            if due is None:
                ran_s = now - self._started_at.get(child.name, now)
                delay = self.backoff.next_delay(delay, ran_s)
                self._revivals[child.name] = (delay, now + delay)
                said.append(
                    f"{child.name} exited (code {child.process.returncode}); starting it again "
                    f"in {delay:g} s. Its log ({child.log}) ends:\n{child.log_tail(5)}"
                )
            elif now >= due:
                self.restart(child)
                self._revivals[child.name] = (delay, None)
                said.append(f"{child.name} started again")
        return said

    def restart(self, child: Child) -> Child:
        """Start `child`'s command again under the same name and log file."""
        stop(child.process, timeout_s=self.stop_timeout_s)
        return self._spawn(child.name, child.command)

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
