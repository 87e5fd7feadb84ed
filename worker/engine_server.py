"""A fork server that starts the engine's children cheaply (worker/engine_process.py).

A fresh interpreter importing numpy, onnxruntime, torch and core's step modules costs
seconds of CPU per job. So each pool process starts, on its first job, one fresh
interpreter (`python -m worker.engine_server`) that imports them once and then forks one
engine child per request. The server is a fresh interpreter, so nothing of the pool
process (its database connections, threads, a CUDA context) is in it or its children;
the server itself runs no ONNX Runtime or torch code, so no thread pool of theirs exists
when it forks (importing starts only idle threads: OpenBLAS's pool and one of ONNX
Runtime's, as in the Celery parent that forks the pool processes).

The protocol (an AF_UNIX SOCK_SEQPACKET pair, JSON messages, file descriptors passed with
SCM_RIGHTS; nothing is pickled):

- request, on the server's control socket: {"request", "outcome", "cwd", "environment"}
  (the pool process's, which the child takes; a server started with another one, but
  for VOLATILE_ENVIRONMENT, is replaced: libraries read some variables when they load)
  with five fds: a reply socket of the request's own, the progress pipe's writing end,
  the reading end of the candidate store's answers, stdout, stderr;
- replies, on the request's socket: {"pid"} with a pidfd of the child (the parent kills
  through it: a pid the server has reaped and the system reused is never signalled),
  then {"returncode"} once the server has reaped the child.

The child dies with the server and the server with the pool process (PR_SET_PDEATHSIG,
set from a thread of the pool process that lives as long as the server), and the server
ends when its control socket closes. A server that has died, or was started in another
process or with another environment, is replaced on the next request.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import importlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Imported by the server before it forks: what a job's engine would import anyway.
PRELOAD = (
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime.quantization",
    "torch",
    "core.pipeline",
    "core.search",
    "core.spec",
    "core.quantize",
    "core.prune",
    "core.distill",
    "core.recipe",
    "worker.engine_process",
    "worker.limits",
)
SERVER_MODULE = "worker.engine_server"  # what the server's interpreter runs
# The name the engine's children carry (/proc/PID/comm), the server's is its command line.
CHILD_NAME = b"squeeze-engine"
_MAX_MESSAGE = 256 * 1024
# Variables that change while a process runs and no library reads when it loads: a
# server started before they changed still serves (the child gets the current values).
VOLATILE_ENVIRONMENT = frozenset({"PYTEST_CURRENT_TEST"})
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


class ServerLost(Exception):
    """The fork server ended before it started the child."""


def send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    ancillary = (
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    )
    sock.sendmsg([json.dumps(message).encode()], ancillary)


def receive(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any], list[int]] | None:
    """One message and the fds that came with it; None at the end of the stream."""
    data, ancillary, _, _ = sock.recvmsg(_MAX_MESSAGE, socket.CMSG_SPACE(max_fds * 4))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % 4])
            fds.extend(received)
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return json.loads(data), fds


# --- in the pool process -----------------------------------------------------------------


class ForkedEngine:
    """The parent's handle on a child the server forked: what run_engine needs of a Popen
    (pid, poll, wait, kill), plus whether the server died under it."""

    def __init__(self, reply: socket.socket, pid: int, pidfd: int) -> None:
        self._reply = reply
        self.pid = pid
        self._pidfd = pidfd
        self.returncode: int | None = None
        self.server_lost = False

    def _take_replies(self, timeout_s: float) -> None:
        if self.returncode is not None:
            return
        if not self.server_lost:
            # the server reports how the child ended, or its end of the socket closes
            if not _readable(self._reply.fileno(), timeout_s):
                return
            got = receive(self._reply)
            if got is not None:
                self.returncode = int(got[0]["returncode"])
                self._close()
                return
            self.server_lost = True
        # the server died: its PR_SET_PDEATHSIG ends the child, nobody can reap it here
        if _readable(self._pidfd, timeout_s):
            self.returncode = -signal.SIGKILL
            self._close()

    def poll(self) -> int | None:
        self._take_replies(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired("engine", timeout or 0)
            self._take_replies(min(left, 1.0))
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def alive(self) -> bool:
        """The child has not ended (a pid read before this said yes was the child's)."""
        return self.returncode is None and not _readable(self._pidfd, 0)

    def _close(self) -> None:
        self._reply.close()
        with contextlib.suppress(OSError):
            os.close(self._pidfd)
        self._pidfd = -1


def _readable(fd: int, timeout_s: float) -> bool:
    if fd < 0:
        return True
    return bool(select.select([fd], [], [], timeout_s)[0])


class EngineServer:
    """The pool process's side of one fork server."""

    def __init__(self, python_path: str) -> None:
        self.environment = dict(os.environ)
        self.owner_pid = os.getpid()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control = ours
        self._lock = threading.Lock()
        started = threading.Event()
        box: dict[str, Any] = {}

        def keep() -> None:
            # The server's PR_SET_PDEATHSIG fires when the thread that started it ends:
            # this one, which lives until the server does (and reaps it).
            try:
                box["process"] = subprocess.Popen(
                    [sys.executable, "-m", SERVER_MODULE, str(theirs.fileno()),
                     str(os.getpid())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONPATH": python_path},
                )  # fmt: skip
            except BaseException as error:  # the caller raises it
                box["error"] = error
                return
            finally:
                started.set()
            box["process"].wait()

        threading.Thread(target=keep, name="engine-fork-server", daemon=True).start()
        started.wait()
        theirs.close()
        if "error" in box:
            ours.close()
            raise box["error"]
        self.process: subprocess.Popen[bytes] = box["process"]
        self.served = False  # it started a child once

    @property
    def pid(self) -> int:
        return self.process.pid

    def usable(self) -> bool:
        return (
            self.process.returncode is None
            and self.owner_pid == os.getpid()
            and _stable(self.environment) == _stable(os.environ)
        )

    def start(
        self,
        request_path: Path,
        outcome_path: Path,
        sending_fd: int,
        answers_fd: int,
        give_up: Callable[[], None],
        poll_interval_s: float,
    ) -> ForkedEngine:
        """Ask for a child; wait for its pid (the first request waits for the server's
        imports), calling `give_up` every poll interval: what it raises is raised here,
        after the server is killed (it may be forking the child)."""
        reply, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            message = {"request": str(request_path), "outcome": str(outcome_path),
                       "cwd": os.getcwd(), "environment": dict(os.environ)}  # fmt: skip
            with self._lock:
                try:
                    send(self._control, message, [theirs.fileno(), sending_fd, answers_fd, 1, 2])
                except OSError as error:
                    raise ServerLost(f"the engine's fork server is gone ({error})") from error
            theirs.close()
            while True:
                try:
                    give_up()
                except BaseException:
                    forget(self)  # it may be forking the child: it goes, and the child too
                    raise
                if not _readable(reply.fileno(), poll_interval_s):
                    continue
                got = receive(reply, max_fds=1)
                if got is None or not got[1]:
                    if not self.served:  # it never could: this process starts fresh ones
                        with _servers_lock:
                            _broken_in.add(self.owner_pid)
                    raise ServerLost("the engine's fork server ended before starting the engine")
                self.served = True
                return ForkedEngine(reply, int(got[0]["pid"]), got[1][0])
        except BaseException:
            theirs.close()
            reply.close()
            raise

    def kill(self) -> None:
        if self.owner_pid == os.getpid():
            with contextlib.suppress(OSError):
                self.process.kill()
            self._control.close()

    def close(self) -> None:
        """No more requests: the server ends once the children it runs have ended."""
        if self.owner_pid == os.getpid():
            self._control.close()


def _stable(environment: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environment.items() if k not in VOLATILE_ENVIRONMENT}


_servers: dict[str, EngineServer] = {}
_servers_lock = threading.Lock()
# pids of processes whose fork server died before serving once: they start fresh children
_broken_in: set[int] = set()


def server(python_path: str) -> EngineServer:
    """This process's fork server, started (again) when there is none that can serve."""
    with _servers_lock:
        if os.getpid() in _broken_in:
            raise ServerLost("the engine's fork server could not start in this process")
        current = _servers.get("server")
        if current is not None and current.usable():
            return current
        if current is not None:
            current.close()
            log.info("starting a new engine fork server (the last one ended or is stale)")
        _servers["server"] = EngineServer(python_path)
        return _servers["server"]


def forget(dead: EngineServer) -> None:
    """`dead` cannot serve (or must go): the next request starts another."""
    with _servers_lock:
        if _servers.get("server") is dead:
            del _servers["server"]
    dead.kill()


def current_server_pid() -> int | None:
    """The pid of this process's fork server, if it has one (for tests)."""
    current = _servers.get("server")
    return current.pid if current is not None and current.usable() else None


# --- in the server -----------------------------------------------------------------------


def serve(control: socket.socket) -> None:
    """Fork a child per request; reap children and report how they ended."""
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception as error:  # an optional one (torch on a slim worker)
            print(f"engine fork server: not preloading {module}: {error}", file=sys.stderr)
    from worker.engine_process import child_main

    running: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, reply socket)
    accepting = True
    while accepting or running:
        watched = [control.fileno(), *running] if accepting else [*running]
        readable, _, _ = select.select(watched, [], [])
        for ready in readable:
            if accepting and ready == control.fileno():
                got = receive(control, max_fds=5)
                if got is None:  # no more requests: end once the running children have
                    accepting = False
                    continue
                message, fds = got
                if len(fds) != 5:
                    for fd in fds:
                        os.close(fd)
                    continue
                pid, pidfd, reply = _fork(message, fds, control, running, child_main)
                running[pidfd] = (pid, reply)
                with contextlib.suppress(OSError):
                    send(reply, {"pid": pid}, [pidfd])
            else:
                pid, reply = running.pop(ready)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    send(reply, {"returncode": os.waitstatus_to_exitcode(status)})
                reply.close()
                os.close(ready)


def _fork(
    message: dict[str, Any],
    fds: list[int],
    control: socket.socket,
    running: dict[int, tuple[int, socket.socket]],
    child_main: Callable[..., None],
) -> tuple[int, int, socket.socket]:
    reply_fd, pipe_fd, answers_fd, stdout_fd, stderr_fd = fds
    reply = socket.socket(fileno=reply_fd)
    server_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # nothing of the server's other requests stays open in the child
            control.close()
            reply.close()
            for pidfd, (_, other) in running.items():
                os.close(pidfd)
                other.close()
            os.dup2(stdout_fd, 1)
            os.dup2(stderr_fd, 2)
            os.close(stdout_fd)
            os.close(stderr_fd)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            os.chdir(message["cwd"])
            python_path = os.environ.get("PYTHONPATH", "")  # the package, as for a fresh child
            os.environ.clear()  # the pool process's environment now, as a fresh child's
            os.environ.update(message["environment"], PYTHONPATH=python_path)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter
            libc = ctypes.CDLL(None)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            libc.prctl(_PR_SET_NAME, ctypes.c_char_p(CHILD_NAME))
            if os.getppid() == server_pid:
                from multiprocessing.connection import Connection

                child_main(
                    message["request"],
                    message["outcome"],
                    Connection(pipe_fd, readable=False),
                    Connection(answers_fd, writable=False),
                )
                code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:  # the child's end, whatever happened
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    for fd in (pipe_fd, answers_fd, stdout_fd, stderr_fd):
        os.close(fd)
    return pid, os.pidfd_open(pid), reply


if __name__ == "__main__":
    # python -m worker.engine_server CONTROL_FD PARENT_PID
    control_arg, parent_arg = sys.argv[1:3]
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(parent_arg):  # the pool process died before the above
        raise SystemExit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool process decides when it ends
    serve(socket.socket(fileno=int(control_arg)))
