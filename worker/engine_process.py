"""The engine in a child process that the worker can kill.

Native code cannot be interrupted from Python: an ONNX Runtime session running a `Loop`
of 2^62 iterations ignores both the job's cancel flag (polled between progress reports)
and Celery's soft time limit (an exception raised between bytecodes). So a job's
measurement and steps, and a search helper's trials, run in a child process; the pool
process supervises it. The child is forked by the pool process's fork server
(worker/engine_server.py: a fresh interpreter, started on the first job, that has
imported numpy, onnxruntime, torch and core's steps once, so a job does not pay seconds
of imports), or, with `SQUEEZE_ENGINE_FORK_SERVER=false` or when no server can start, is
a fresh interpreter itself (`python -m worker.engine_process`). Either way nothing of the
pool process, its database connections, its threads or a CUDA context, crosses into it:

- the request goes to the child as a JSON file; progress and requests for search helpers
  come back over a pipe as JSON, the outcome as a JSON file in the work dir: nothing the
  child produces is unpickled;
- the auto recipe's candidate store (core.candidates) is the pool process's: the child
  calls it over the same pipe and reads each answer from a second one, so a finished
  candidate is kept in the job's database before the recipe goes on;
- a cancel, a lost lease, a worker shutdown or the time limit kill the child (SIGKILL,
  through a pidfd for a forked one) within a poll interval; the child dies with the pool
  process (PR_SET_PDEATHSIG; a forked one with its server, which dies with the pool
  process);
- memory: the child's data segment is capped (RLIMIT_DATA, worker.limits) and the parent
  watches its resident set: past the allowance it is killed, and a child killed by
  SIGKILL the parent did not send (the kernel's out-of-memory killer) counts as out of
  memory too. Either way the error carries the peak resident set seen (VmHWM). The
  allowance counts from the resident set the child reports when it starts (a forked child
  starts with its server's preloaded modules in it).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from core.candidates import (
    CandidateStore,
    FetchedModel,
    FinishedCandidate,
    NoCandidateStore,
    RecipeMemory,
)
from core.context import MeasureSettings, RunContext, SearchStore
from core.errors import EngineError, JobCancelled
from worker import engine_server
from worker.engine_server import ForkedEngine

log = logging.getLogger(__name__)

REQUEST_FILE = "engine-request.json"
OUTCOME_FILE = "engine-outcome.json"
# How often the parent looks at the child's memory and at the stop conditions.
POLL_INTERVAL_S = 0.1
_PR_SET_PDEATHSIG = 1

ProgressSink = Callable[[float, str, dict[str, Any]], None]
HelperSink = Callable[[str, int], None]
# (peak resident bytes, growth past the start in bytes): every look at the child's memory
MemorySink = Callable[[int, int], None]


class MemoryLimitExceeded(EngineError):
    """The engine's process went past the job's memory allowance, or the kernel killed it."""

    code = "memory_limit_exceeded"

    def __init__(
        self, message: str, *, peak_rss_bytes: int | None, limit_bytes: int | None
    ) -> None:
        super().__init__(message)
        self.peak_rss_bytes = peak_rss_bytes
        self.limit_bytes = limit_bytes

    @classmethod
    def of(cls, error: BaseException, limit_bytes: int | None) -> MemoryLimitExceeded:
        """A failed allocation seen in this process (outside the engine's child)."""
        use = memory_use(os.getpid())
        return cls(
            f"the job needed more than its memory limit of {limit_bytes} bytes "
            f"({type(error).__name__}: {str(error)[:200]})",
            peak_rss_bytes=use.peak_rss_bytes if use else None,
            limit_bytes=limit_bytes,
        )

    def record(self) -> dict[str, Any]:
        """What the job's log keeps about it (the data of its final event)."""
        return {"peak_rss_bytes": self.peak_rss_bytes, "limit_bytes": self.limit_bytes}


class TimeLimitExceeded(EngineError):
    code = "time_limit_exceeded"


@dataclass(frozen=True)
class EngineRequest:
    """What the child runs: the pipeline of a job, a search helper's trials, or a recipe
    helper's short rounds (core.recipe.helper)."""

    kind: Literal["pipeline", "search", "recipe"]
    work_dir: Path  # the engine's RunContext.work_dir
    model_path: Path
    dataset_paths: dict[str, Path]
    spec: dict[str, Any]  # the validated JobSpec, as JSON
    device: str
    seed: int
    measure: MeasureSettings
    search_store: SearchStore = field(default_factory=SearchStore)
    models: dict[str, Path] = field(default_factory=dict)
    study_name: str | None = None
    helper_index: int = 0
    # growth of the child's memory allowed past what it holds once its modules are loaded
    memory_allowance_bytes: int | None = None
    # the auto recipe keeps its candidates in the parent's store (else nothing is kept)
    keep_candidates: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "work_dir": str(self.work_dir),
            "model_path": str(self.model_path),
            "dataset_paths": {key: str(path) for key, path in self.dataset_paths.items()},
            "spec": self.spec,
            "device": self.device,
            "seed": self.seed,
            "measure": vars(self.measure),
            "search_store": vars(self.search_store),
            "models": {key: str(path) for key, path in self.models.items()},
            "study_name": self.study_name,
            "helper_index": self.helper_index,
            "memory_allowance_bytes": self.memory_allowance_bytes,
            "keep_candidates": self.keep_candidates,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineRequest:
        return cls(
            kind=data["kind"],
            work_dir=Path(data["work_dir"]),
            model_path=Path(data["model_path"]),
            dataset_paths={key: Path(path) for key, path in data["dataset_paths"].items()},
            spec=data["spec"],
            device=data["device"],
            seed=int(data["seed"]),
            measure=MeasureSettings(**data["measure"]),
            search_store=SearchStore(**data["search_store"]),
            models={key: Path(path) for key, path in data["models"].items()},
            study_name=data["study_name"],
            helper_index=int(data["helper_index"]),
            memory_allowance_bytes=data["memory_allowance_bytes"],
            keep_candidates=bool(data.get("keep_candidates", False)),
        )


@dataclass(frozen=True)
class MemoryUse:
    rss_bytes: int
    peak_rss_bytes: int


def memory_use(pid: int) -> MemoryUse | None:
    """The process's resident set now and its high-water mark; None once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    if "VmRSS" not in values:  # a zombie has no memory left to report
        return None
    return MemoryUse(values["VmRSS"], values.get("VmHWM", values["VmRSS"]))


def run_engine(
    request: EngineRequest,
    *,
    on_progress: ProgressSink,
    request_helpers: HelperSink | None = None,
    candidate_store: CandidateStore | None = None,
    should_stop: Callable[[], bool],
    time_limit_s: float | None,
    memory_limit_bytes: int | None = None,
    poll_interval_s: float = POLL_INTERVAL_S,
    on_memory: MemorySink | None = None,
    fork_server: bool = True,
    on_tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run `request` in a child and return its outcome's payload (for a pipeline:
    {"result": PipelineResult JSON, "final_model": path}; for a search: {"trials": n}).

    Raises JobCancelled once `should_stop()` is true (the caller knows why),
    TimeLimitExceeded past `time_limit_s`, MemoryLimitExceeded when the child's resident
    set grows more than `memory_limit_bytes` past its start (or the kernel kills it), and
    EngineError with the child's code for a failure inside the engine. Whatever happens,
    the child is gone when this returns or raises, including for an exception from a
    callback or one raised into this thread (Celery's soft time limit). `on_memory` sees
    every sample of the child's memory once its work began (the peak resident set, and
    its growth past the start, the figure `memory_limit_bytes` applies to). `on_tick` is
    called at every poll while the child lives (the candidate store renews its claims)."""
    request.work_dir.mkdir(parents=True, exist_ok=True)
    request_path = request.work_dir / REQUEST_FILE
    outcome_path = request.work_dir / OUTCOME_FILE
    outcome_path.unlink(missing_ok=True)
    request_path.write_text(json.dumps(request.to_json()))
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s

    def stop_if_asked() -> None:
        if should_stop():
            raise JobCancelled("the job was stopped")
        if deadline is not None and time.monotonic() > deadline:
            raise TimeLimitExceeded(f"the job ran past its time limit ({time_limit_s:g} s)")

    receiving_fd, sending_fd = os.pipe()
    receiver = Connection(receiving_fd, writable=False)
    # the answers to the child's calls of the candidate store
    answers_read_fd, answers_write_fd = os.pipe()
    answers = Connection(answers_write_fd, readable=False)
    try:
        process = _start_child(
            request_path,
            outcome_path,
            sending_fd,
            answers_read_fd,
            fork_server,
            stop_if_asked,
            poll_interval_s,
        )
    except BaseException:
        receiver.close()
        answers.close()
        raise
    finally:
        os.close(sending_fd)  # the child holds its copy: EOF here once it has ended
        os.close(answers_read_fd)
    baseline_rss: int | None = None
    peak_rss = 0
    killed_by_us = False

    def kill() -> None:
        nonlocal killed_by_us
        killed_by_us = True
        if process.poll() is None:
            process.kill()
        process.wait()

    try:
        pipe_open = True
        while True:
            if pipe_open:
                message: dict[str, Any]
                try:
                    # one message at a time: the stop conditions are looked at between them
                    message = (
                        json.loads(receiver.recv_bytes())
                        if receiver.poll(poll_interval_s)
                        else {"type": None}
                    )
                except EOFError:  # the child closed its end: it is ending
                    pipe_open = False
                    message = {"type": None}
                if message["type"] == "started":
                    baseline_rss = int(message["rss_bytes"])
                elif message["type"] == "progress":
                    on_progress(message["progress"], message["message"], message["data"])
                elif message["type"] == "helpers" and request_helpers is not None:
                    request_helpers(message["study_name"], int(message["count"]))
                elif message["type"] == "candidates":
                    _answer(answers, candidate_store or NoCandidateStore(), message)
            else:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(poll_interval_s)
            use = memory_use(process.pid)
            if isinstance(process, ForkedEngine) and not process.alive():
                use = None  # its server may have reaped it: the pid may be another's now
            if use is not None:
                peak_rss = max(peak_rss, use.peak_rss_bytes)
                if on_memory is not None and baseline_rss is not None:
                    on_memory(peak_rss, max(0, peak_rss - baseline_rss))
                if (
                    memory_limit_bytes is not None
                    and baseline_rss is not None
                    and use.rss_bytes - baseline_rss > memory_limit_bytes
                ):
                    kill()
                    raise MemoryLimitExceeded(
                        f"the job needed more than its memory limit of {memory_limit_bytes} "
                        f"bytes (resident memory reached {use.rss_bytes} bytes, "
                        f"{baseline_rss} of them before the job's work began); "
                        f"peak resident memory {peak_rss} bytes",
                        peak_rss_bytes=peak_rss,
                        limit_bytes=memory_limit_bytes,
                    )
            try:
                stop_if_asked()
            except (JobCancelled, TimeLimitExceeded):
                kill()
                raise
            if on_tick is not None:
                on_tick()
            if process.poll() is not None and not (pipe_open and receiver.poll(0)):
                break
    finally:
        if process.poll() is None:
            kill()
        receiver.close()
        answers.close()
    server_lost = isinstance(process, ForkedEngine) and process.server_lost
    return _outcome(
        outcome_path, process.returncode, peak_rss, memory_limit_bytes, killed_by_us, server_lost
    )


Child = subprocess.Popen[bytes] | ForkedEngine


def _start_child(
    request_path: Path,
    outcome_path: Path,
    sending_fd: int,
    answers_fd: int,
    fork_server: bool,
    stop_if_asked: Callable[[], None],
    poll_interval_s: float,
) -> Child:
    """The engine's child: forked by this process's fork server, or a fresh interpreter
    when asked so or when no server can start. A stop while the server starts (its first
    request waits for its imports) is raised here."""
    for _ in range(2 if fork_server else 0):  # a server that died idle is replaced once
        try:
            server = engine_server.server(_python_path())
        except (engine_server.ServerLost, OSError) as error:
            log.warning("no engine fork server (%s): starting a fresh interpreter", error)
            break
        try:
            return server.start(
                request_path, outcome_path, sending_fd, answers_fd, stop_if_asked, poll_interval_s
            )
        except engine_server.ServerLost as error:
            log.warning("%s", error)
            engine_server.forget(server)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.engine_process",
            str(request_path),
            str(outcome_path),
            str(sending_fd),
            str(os.getpid()),
            str(answers_fd),
        ],
        pass_fds=(sending_fd, answers_fd),
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": _python_path()},
    )


def _answer(answers: Connection, store: CandidateStore, call: dict[str, Any]) -> None:
    """Run the child's call of the candidate store and send it the result (or why not)."""
    answer: dict[str, Any]
    try:
        recipe = call["recipe"]
        if call["call"] == "begin":
            memory = store.begin(recipe)
            answer = {
                "started_unix": memory.started_unix,
                "attempt": memory.attempt,
                "finished": [vars(candidate) for candidate in memory.finished.values()],
            }
        elif call["call"] == "record":
            store.record(
                recipe,
                FinishedCandidate(**call["candidate"]),
                model=Path(call["model"]) if call["model"] else None,
                float_model=Path(call["float_model"]) if call["float_model"] else None,
            )
            answer = {}
        elif call["call"] == "claim":
            answer = {"claimed": store.claim(recipe, call["key"])}
        elif call["call"] == "holder":
            answer = {"holder": store.holder()}
        else:
            fetched = store.fetch(recipe, call["key"], Path(call["folder"]))
            answer = {
                "path": str(fetched.path),
                "float_path": str(fetched.float_path) if fetched.float_path else None,
            }
        reply: dict[str, Any] = {"ok": answer}
    except Exception as error:  # the child's recipe decides what a failure costs
        log.warning("the candidate store failed (%s)", call.get("call"), exc_info=True)
        reply = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
    with contextlib.suppress(OSError):  # the child is gone
        answers.send_bytes(json.dumps(reply, default=str).encode())


class PipeCandidateStore:
    """The child's side: each call goes to the parent's store and waits for its answer."""

    def __init__(self, send: Callable[[dict[str, Any]], None], answers: Connection) -> None:
        self.send = send
        self.answers = answers

    def _call(self, **call: Any) -> dict[str, Any]:
        self.send({"type": "candidates", **call})
        reply: dict[str, Any] = json.loads(self.answers.recv_bytes())
        if "error" in reply:
            raise EngineError(
                f"the candidate store failed: {reply['error']}", code="internal_error"
            )
        answer: dict[str, Any] = reply["ok"]
        return answer

    def begin(self, recipe: str) -> RecipeMemory:
        answer = self._call(call="begin", recipe=recipe)
        finished = [FinishedCandidate(**candidate) for candidate in answer["finished"]]
        return RecipeMemory(
            float(answer["started_unix"]),
            int(answer["attempt"]),
            {candidate.key: candidate for candidate in finished},
        )

    def record(
        self,
        recipe: str,
        candidate: FinishedCandidate,
        model: Path | None = None,
        float_model: Path | None = None,
    ) -> None:
        self._call(
            call="record",
            recipe=recipe,
            candidate=vars(candidate),
            model=str(model) if model else None,
            float_model=str(float_model) if float_model else None,
        )

    def fetch(self, recipe: str, key: str, folder: Path) -> FetchedModel:
        answer = self._call(call="fetch", recipe=recipe, key=key, folder=str(folder))
        float_path = answer["float_path"]
        return FetchedModel(Path(answer["path"]), Path(float_path) if float_path else None)

    def claim(self, recipe: str, key: str) -> bool:
        return bool(self._call(call="claim", recipe=recipe, key=key)["claimed"])

    def holder(self) -> str | None:
        if not hasattr(self, "_holder"):
            self._holder: str | None = self._call(call="holder", recipe="")["holder"]
        return self._holder


def warm_fork_server() -> None:
    """Start this process's fork server now (a pool process at its start), so its imports
    overlap the wait for the first job instead of delaying it."""
    try:
        engine_server.server(_python_path())
    except (engine_server.ServerLost, OSError) as error:
        log.warning("no engine fork server (%s): jobs start fresh interpreters", error)


def _python_path() -> str:
    """The child imports this package from where this process did."""
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))


def _outcome(
    outcome_path: Path,
    exitcode: int | None,
    peak_rss: int,
    memory_limit_bytes: int | None,
    killed_by_us: bool,
    server_lost: bool = False,
) -> dict[str, Any]:
    if not outcome_path.exists():
        if server_lost and not killed_by_us:
            raise EngineError(
                "the engine's fork server ended while the engine ran (and the engine with it)",
                code="internal_error",
            )
        if exitcode == -signal.SIGKILL and not killed_by_us:
            raise MemoryLimitExceeded(
                "the job's process was killed by the system (SIGKILL), most likely for "
                f"running out of memory; peak resident memory seen {peak_rss} bytes",
                peak_rss_bytes=peak_rss,
                limit_bytes=memory_limit_bytes,
            )
        how = (
            f"signal {signal.Signals(-exitcode).name}"
            if exitcode is not None and exitcode < 0
            else f"exit code {exitcode}"
        )
        raise EngineError(
            f"the engine's process ended with {how} before reporting an outcome",
            code="internal_error",
        )
    outcome: dict[str, Any] = json.loads(outcome_path.read_text())
    status = outcome["status"]
    if status == "succeeded":
        payload: dict[str, Any] = outcome["payload"]
        return payload
    if status == "cancelled":
        raise JobCancelled(outcome["message"])
    if status == "memory":
        raise MemoryLimitExceeded(
            f"the job needed more than its memory limit of {memory_limit_bytes} bytes "
            f"({outcome['message']}); peak resident memory {max(peak_rss, outcome['peak'])} "
            "bytes",
            peak_rss_bytes=max(peak_rss, int(outcome["peak"])),
            limit_bytes=memory_limit_bytes,
        )
    raise EngineError(outcome["message"], code=outcome["code"])


# --- in the child ----------------------------------------------------------------------


def child_main(
    request_path: str, outcome_path: str, channel: Connection, answers: Connection | None = None
) -> None:
    """The child's work: run the request, write the outcome file."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s engine %(name)s: %(message)s"
    )
    from worker.limits import is_allocation_failure, memory_ceiling

    request = EngineRequest.from_json(json.loads(Path(request_path).read_text()))

    def send(message: dict[str, Any]) -> None:
        channel.send_bytes(json.dumps(message, default=str).encode())

    def progress(value: float, message: str, data: dict[str, Any]) -> None:
        send({"type": "progress", "progress": value, "message": message, "data": data})

    def helpers(study_name: str, count: int) -> None:
        send({"type": "helpers", "study_name": study_name, "count": count})

    outcome: dict[str, Any]
    try:
        rss = memory_use(os.getpid())
        send({"type": "started", "rss_bytes": rss.rss_bytes if rss else 0})
        store: CandidateStore = (
            PipeCandidateStore(send, answers)
            if request.keep_candidates and answers is not None
            else NoCandidateStore()
        )
        with memory_ceiling(request.memory_allowance_bytes):
            payload = _run(request, progress, helpers, store)
        outcome = {"status": "succeeded", "payload": payload}
    except JobCancelled as error:
        outcome = {"status": "cancelled", "message": str(error)}
    except BaseException as error:  # the parent must learn why, whatever went wrong
        if request.memory_allowance_bytes is not None and is_allocation_failure(error):
            use = memory_use(os.getpid())
            outcome = {
                "status": "memory",
                "message": f"{type(error).__name__}: {str(error)[:200]}",
                "peak": use.peak_rss_bytes if use else 0,
            }
        elif isinstance(error, EngineError):
            outcome = {"status": "error", "code": error.code, "message": error.message}
        else:
            log.exception("the engine crashed")
            outcome = {
                "status": "error",
                "code": "internal_error",
                "message": f"{type(error).__name__}: {error}",
            }
    partial = Path(outcome_path + ".partial")
    partial.write_text(json.dumps(outcome, default=str))
    partial.replace(outcome_path)
    channel.close()


def _run(
    request: EngineRequest,
    progress: ProgressSink,
    helpers: HelperSink,
    candidate_store: CandidateStore | None = None,
) -> dict[str, Any]:
    from core import pipeline
    from core.search import join_search
    from core.spec import JobSpec

    spec = JobSpec.model_validate(request.spec)
    ctx = RunContext(
        work_dir=request.work_dir,
        device=request.device,
        seed=request.seed,
        measure=request.measure,
        on_progress=progress,
        search_store=request.search_store,
        request_helpers=helpers,
        candidate_store=candidate_store or NoCandidateStore(),
    )
    if request.kind == "recipe":
        from core.recipe.helper import join_recipe

        assert request.study_name is not None
        produced = join_recipe(
            request.model_path, request.dataset_paths, spec, request.study_name, ctx
        )
        return {"trials": produced}
    if request.kind == "search":
        assert request.study_name is not None
        trials = join_search(
            request.model_path,
            request.dataset_paths,
            spec,
            request.study_name,
            request.helper_index,
            ctx,
        )
        return {"trials": trials}
    result, final_model = pipeline.run(
        request.model_path, request.dataset_paths, spec, ctx, models=request.models
    )
    return {"result": result.model_dump(mode="json"), "final_model": str(final_model)}


def _die_with_parent(parent_pid: int) -> None:
    """The child dies with the pool process that started it: a worker killed outright
    leaves no engine running."""
    # not on Linux: the parent's kill() still applies
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before the request above took effect
        raise SystemExit(1)


if __name__ == "__main__":
    # python -m worker.engine_process REQUEST OUTCOME FD PARENT_PID ANSWERS_FD
    request_arg, outcome_arg, fd_arg, parent_arg, answers_arg = sys.argv[1:6]
    _die_with_parent(int(parent_arg))
    child_main(
        request_arg,
        outcome_arg,
        Connection(int(fd_arg), readable=False),
        Connection(int(answers_arg), writable=False),
    )
