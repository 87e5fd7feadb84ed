"""Per-job resource limits inside a worker's pool process, and the graceful-shutdown flag.

Memory: the job's data segment (heap and anonymous mappings, RLIMIT_DATA) may grow by at
most the job's allowance above what the process used when the job started; an allocation
past it fails inside the job (MemoryError in Python, an allocation error in ONNX Runtime
or torch), the job fails with `memory_limit_exceeded`, and the limit is lifted again, so
the worker process lives on. File mappings (shared libraries) do not count, which is why
RLIMIT_AS (address space, several GB for torch's libraries alone) is not used.

Shutdown: the worker's parent asks its pool processes to stop (SIGUSR2) when it shuts
down; a running job then stops at its next progress check and goes back to the queue.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.settings import Settings

SHUTDOWN = threading.Event()
SHUTDOWN_SIGNAL = signal.SIGUSR2

# How allocation failures read when they come from native code rather than MemoryError.
_ALLOCATION_FAILURES = (
    "bad_alloc",
    "failed to allocate",
    "can't allocate memory",
    "cannot allocate memory",
    "out of memory",
)


def machine_memory_bytes() -> int:
    """The memory this machine (or the cgroup the worker runs in) offers."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


# How many jobs this worker runs at once (its pool size, `--concurrency`). worker.main
# notes it in the worker's parent just before it forks the pool, so every pool process
# inherits it; 1 outside a worker (tests, jobs run in-process).
_pool_size = 1


def note_pool_size(size: int) -> None:
    """The worker's pool size, for `job_memory_limit`'s default."""
    global _pool_size
    _pool_size = max(1, size)


def pool_size() -> int:
    return _pool_size


def job_memory_limit(settings: Settings, pool: int | None = None) -> int:
    """The per-job memory ceiling: `job_memory_limit_bytes`, else a share of the
    machine's memory (`job_memory_fraction`) divided by the jobs the worker runs at once
    (`pool`, by default the worker's pool size), so that a job which blows up is stopped
    with `memory_limit_exceeded` before the kernel kills a worker process, even while
    the worker's other pool processes run jobs of their own. An explicit
    `job_memory_limit_bytes` is per job and taken as it is."""
    if settings.job_memory_limit_bytes is not None:
        return settings.job_memory_limit_bytes
    jobs_at_once = max(1, pool_size() if pool is None else pool)
    return int(machine_memory_bytes() * settings.job_memory_fraction) // jobs_at_once


def data_bytes_in_use() -> int:
    """The process's data segment now (VmData), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    return 0


@contextmanager
def memory_ceiling(allowance_bytes: int | None) -> Iterator[None]:
    """Within the block, the data segment may grow by at most `allowance_bytes`."""
    if allowance_bytes is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    ceiling = data_bytes_in_use() + allowance_bytes
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


# Error types that, in a job under a memory ceiling, can only mean a failed allocation:
# protobuf's parser reports a refused arena allocation as a decode error, and the model
# it parses was already parsed successfully when it was uploaded.
_ALLOCATION_FAILURE_TYPES = ("DecodeError",)


def causes(error: BaseException | None) -> Iterator[BaseException]:
    """The error, then what it was raised from (or while handling), and so on."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def is_allocation_failure(error: BaseException | None) -> bool:
    """The error, or one it was raised from, is a failed allocation (consulted only for
    jobs that ran under a ceiling)."""
    for seen in causes(error):
        if isinstance(seen, MemoryError) or type(seen).__name__ in _ALLOCATION_FAILURE_TYPES:
            return True
        text = f"{type(seen).__name__}: {seen}".lower()
        if any(marker in text for marker in _ALLOCATION_FAILURES):
            return True
    return False


def _on_shutdown_signal(*_: object) -> None:
    SHUTDOWN.set()


def install_shutdown_handler() -> None:
    """In a pool process, before running a job: the parent's shutdown request sets
    SHUTDOWN. (Installed per task, not at process start: billiard replaces the handlers
    of its children's signals after Celery's process initializer has run.)"""
    if signal.getsignal(SHUTDOWN_SIGNAL) is not _on_shutdown_signal:
        SHUTDOWN.clear()
        signal.signal(SHUTDOWN_SIGNAL, _on_shutdown_signal)
