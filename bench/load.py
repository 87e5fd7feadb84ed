"""Load benchmark: the API under many concurrent clients on loopback, and the service's
overhead on top of the engine's own run time.

Starts the API (uvicorn, one process) on a temporary data dir, warms it up with
`--warmup-s` of polls (not measured), then:
1. polls: `--clients` concurrent clients, each on its own keep-alive connection, read one
   job's status every `--interval-s` for `--duration-s` (status polls are what waiting
   clients do all day), with a lean asyncio HTTP client (`bench/lean_http.py`: httpx in
   the load generator timed itself, not the server);
2. overhead: one real Celery worker runs `--jobs` small quantize jobs; each job's
   end-to-end time (submit to final state, polled every 20 ms) is compared with the
   engine's own time for the same spec (`core.pipeline.run` in this process, median of
   the same number of runs);
3. polls and writes: the same pollers while `--writers` clients (httpx, in a second
   process) each upload a small dataset and submit a job every `--writer-interval-s`;
4. write throughput: the writers back to back, without pollers;
5. polls with busy workers (`--busy-workers`, default 2; 0 skips it): that many real
   Celery workers run static-quantization jobs that a feeder (a second process) submits
   so that the queue never empties, while the same pollers read job status and, one in
   ten, list jobs; reports p50/p95/p99 and errors per request kind, the CPU the API
   process used (per cent of one core) and the niceness seen of every process under the
   workers (pool processes and the engine's children). `--busy-only` runs this phase
   alone (appending its section to `--out`).
Prints throughput, p50/p99 latency and errors per phase and writes bench/results/load.md.

    PYTHONPATH=. python bench/load.py [--clients 200] [--duration-s 20] [--profile embedded]

`--profile deployment` uses PostgreSQL and Redis on 127.0.0.1 (a fresh database).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.lean_http import LeanHttpClient, LeanHttpError  # noqa: E402
from scripts.demo import api_command as demo_api_command  # noqa: E402
from scripts.demo import free_port, stop, wait_ready  # noqa: E402
from service import runner  # noqa: E402
from service.examples import digits_arrays, export_onnx, save_npz, train_digits_cnn  # noqa: E402

ADMIN_KEY = "sqz_bench-load-admin-key"
FINAL = {"succeeded", "failed", "cancelled"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--interval-s", type=float, default=1.0, help="each poller's period")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=5.0, help="polls before measuring")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument(
        "--writer-interval-s",
        type=float,
        default=0.25,
        help="each writer's period next to the pollers (the throughput phase runs flat out)",
    )
    parser.add_argument("--jobs", type=int, default=5, help="jobs for the overhead phase")
    parser.add_argument("--profile", choices=["embedded", "deployment"], default="embedded")
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--busy-workers", type=int, default=2, help="workers of phase 5")
    parser.add_argument("--busy-backlog", type=int, default=4, help="queued jobs kept")
    parser.add_argument("--busy-only", action="store_true", help="phase 5 alone, appended")
    parser.add_argument(
        "--busy-control",
        action="store_true",
        help="with --busy-only: then the same pollers with no worker, on the same API",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/load.md"))
    parser.add_argument("--note", default="", help="a sentence on machine conditions")
    return parser.parse_args(argv)


@dataclass
class Phase:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def record(self, started: float, status: int | None, expected: int) -> None:
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        if status != expected:
            key = str(status)
            self.errors[key] = self.errors.get(key, 0) + 1

    def percentiles(self) -> tuple[float, float, float]:
        if not self.latencies_ms:
            return (float("nan"),) * 3
        p50, p95, p99 = np.percentile(self.latencies_ms, [50, 95, 99])
        return float(p50), float(p95), float(p99)

    def row(self) -> str:
        count = len(self.latencies_ms)
        p50, p99 = np.percentile(self.latencies_ms, [50, 99]) if count else (float("nan"),) * 2
        errors = sum(self.errors.values())
        detail = f" ({self.errors})" if self.errors else ""
        return (
            f"| {self.name} | {count} | {count / self.elapsed_s:.0f} | {p50:.1f} | {p99:.1f} "
            f"| {errors}{detail} |"
        )


# --- the service ---------------------------------------------------------------------------


def service_env(data_dir: Path, profile: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SQUEEZE_DATA_DIR": str(data_dir),
        "SQUEEZE_ADMIN_API_KEY": ADMIN_KEY,
        "SQUEEZE_QUOTA_CONCURRENT_JOBS": "100000",
        # the writers share one key and write faster than the per-key rate limit allows
        "SQUEEZE_RATE_LIMIT_PER_S": "0",
        "SQUEEZE_MEASURE_RUNS": "10",
        "SQUEEZE_MEASURE_WARMUP_RUNS": "2",
        # the pollers' and writers' jobs are submitted while no worker runs
        "SQUEEZE_ABSENT_WORKER_POLICY": "off",
    }
    if profile == "deployment":
        sys.path.insert(0, str(ROOT))
        from tests import services

        database = services.create_database()
        env["SQUEEZE_DATABASE_URL"] = services.postgres_url_for(database)
        env["SQUEEZE_BROKER_URL"] = services.REDIS_URL
        env["SQUEEZE_QUEUE_CPU"] = f"bench-{database}"
    return env


@contextmanager
def process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        child = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield child
        finally:
            stop(child)


def api_command(port: int, workers: int) -> list[str]:
    return demo_api_command(port, "--no-access-log", "--workers", str(workers))


def worker_command(queue: str, name: str = "bench") -> list[str]:
    return runner.worker_command(queue, f"{name}@%h", loglevel="WARNING")


# --- inputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    model: Path
    calibration: Path
    evaluation: Path


def build_inputs(folder: Path) -> Inputs:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = train_digits_cnn(seed=0, epochs=4)
    x_test, y_test = digits_arrays("test")
    x_train, _ = digits_arrays("train")
    return Inputs(
        model=export_onnx(model, torch.from_numpy(x_test[:1]), folder / "digits.onnx"),
        calibration=save_npz(folder / "calibration.npz", x_train[:128]),
        evaluation=save_npz(folder / "eval.npz", x_test[:128], y_test[:128]),
    )


def upload(client: httpx.Client, route: str, path: Path) -> str:
    with path.open("rb") as handle:
        response = client.post(route, files={"file": (path.name, handle)})
    response.raise_for_status()
    return str(response.json()["id"])


def job_spec(ids: dict[str, str]) -> dict[str, Any]:
    return {
        "model_id": ids["model"],
        "calibration_dataset_id": ids["calibration"],
        "eval_dataset_id": ids["evaluation"],
        "steps": [{"method": "quantize", "mode": "dynamic"}],
        "batch_size": 8,
    }


# --- phases --------------------------------------------------------------------------------


async def poll_phase(
    port: int,
    job_ids: list[str],
    args: argparse.Namespace,
    duration_s: float | None = None,
    lists: Phase | None = None,
) -> Phase:
    """`--clients` pollers, each on its own connection (as independent clients have),
    with the lean client so that the figures time the server, not the load generator.
    With `lists`, one poller in ten lists jobs (recorded there) instead."""
    polls = Phase("status polls")
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    deadline = time.perf_counter() + (args.duration_s if duration_s is None else duration_s)

    async def poller(index: int) -> None:
        job_url = f"/v1/jobs/{job_ids[index % len(job_ids)]}"
        record = polls
        if lists is not None and index % 10 == 9:
            job_url, record = "/v1/jobs?limit=20", lists
        # Spread the first polls over one interval, as independent clients would be.
        await asyncio.sleep(args.interval_s * index / args.clients)
        async with LeanHttpClient("127.0.0.1", port, headers) as client:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status, _ = await client.get(job_url)
                    record.record(started, status, 200)
                except (OSError, asyncio.IncompleteReadError, LeanHttpError) as error:
                    record.record(started, None, 200)
                    record.errors[type(error).__name__] = (
                        record.errors.get(type(error).__name__, 0) + 1
                    )
                    return  # the connection is in an unknown state
                await asyncio.sleep(max(0.0, args.interval_s - (time.perf_counter() - started)))

    started = time.perf_counter()
    await asyncio.gather(*(poller(index) for index in range(args.clients)))
    polls.elapsed_s = time.perf_counter() - started
    if lists is not None:
        lists.elapsed_s = polls.elapsed_s
    return polls


def write_phase(
    base_url: str,
    dataset: Path,
    ids: dict[str, str],
    writers: int,
    duration_s: float,
    interval_s: float,
) -> Phase:
    """`writers` clients each uploading a dataset and submitting a job every `interval_s`
    (0: back to back). Runs in its own process next to the pollers: httpx's CPU time must
    not delay the pollers' event loop."""
    writes = Phase("upload + submit")
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    content = dataset.read_bytes()

    async def writer(client: httpx.AsyncClient, deadline: float) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                uploaded = await client.post("/v1/datasets", files={"file": ("eval.npz", content)})
                spec = job_spec({**ids, "evaluation": uploaded.json()["id"]})
                submitted = await client.post("/v1/jobs", json=spec)
                writes.record(started, submitted.status_code, 202)
            except (httpx.HTTPError, KeyError) as error:
                writes.record(started, None, 202)
                writes.errors[type(error).__name__] = writes.errors.get(type(error).__name__, 0) + 1
            await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - started)))

    async def run() -> None:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
            started = time.perf_counter()
            await asyncio.gather(*(writer(client, started + duration_s) for _ in range(writers)))
            writes.elapsed_s = time.perf_counter() - started

    asyncio.run(run())
    return writes


def polls_with_writers(
    port: int, job_ids: list[str], args: argparse.Namespace, inputs: Inputs, ids: dict[str, str]
) -> tuple[Phase, Phase]:
    base_url = f"http://127.0.0.1:{port}"
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        writes = pool.apply_async(
            write_phase,
            (
                base_url,
                inputs.evaluation,
                ids,
                args.writers,
                args.duration_s,
                args.writer_interval_s,
            ),
        )
        polls = asyncio.run(poll_phase(port, job_ids, args))
        return polls, writes.get(timeout=args.duration_s + 120)


def engine_seconds(inputs: Inputs, spec: dict[str, Any], runs: int, work: Path) -> list[float]:
    """The engine's own time for the spec: core.pipeline.run in this process."""
    from core import pipeline
    from core.context import MeasureSettings, RunContext
    from core.spec import JobSpec

    job = JobSpec.model_validate(spec)
    datasets = {
        spec["calibration_dataset_id"]: inputs.calibration,
        spec["eval_dataset_id"]: inputs.evaluation,
    }
    times = []
    for run in range(runs + 1):  # the first run warms up imports and caches
        ctx = RunContext(
            work_dir=work / f"engine-{run}",
            measure=MeasureSettings(threads=1, warmup_runs=2, runs=10),
        )
        started = time.perf_counter()
        pipeline.run(inputs.model, datasets, job, ctx)
        if run:
            times.append(time.perf_counter() - started)
    return times


def service_seconds(client: httpx.Client, spec: dict[str, Any], runs: int) -> list[float]:
    """Submit to final state, as a client polling every 20 ms sees it."""
    times = []
    for run in range(runs + 1):  # the first job warms the worker's child process
        started = time.perf_counter()
        response = client.post("/v1/jobs", json=spec)
        response.raise_for_status()
        url = response.headers["location"]
        while (job := client.get(url).json())["state"] not in FINAL:
            time.sleep(0.02)
        if job["state"] != "succeeded":
            raise SystemExit(f"overhead job {job['state']}: {job.get('error')}")
        if run:
            times.append(time.perf_counter() - started)
    return times


# --- phase 5: polls while workers are busy -------------------------------------------------


def busy_spec(ids: dict[str, str]) -> dict[str, Any]:
    """A real job of a few seconds: static quantization, calibrated on 128 rows."""
    return {**job_spec(ids), "steps": [{"method": "quantize", "mode": "static"}]}


def feed_jobs(
    base_url: str, ids: dict[str, str], duration_s: float, backlog: int
) -> dict[str, int]:
    """Keep `backlog` jobs queued for `duration_s` (so no worker ever waits for work),
    then cancel what is still queued; returns how many jobs were submitted and how many
    ended in each state. Runs in its own process, as the writers do."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    submitted: list[str] = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        deadline = time.perf_counter() + duration_s
        while time.perf_counter() < deadline:
            queued = client.get("/v1/jobs", params={"state": "queued", "limit": 100}).json()
            for _ in range(max(0, backlog - len(queued["items"]))):
                response = client.post("/v1/jobs", json=busy_spec(ids))
                response.raise_for_status()
                submitted.append(response.json()["id"])
            time.sleep(0.5)
        states: dict[str, int] = {"submitted": len(submitted)}
        for job_id in submitted:
            state = client.get(f"/v1/jobs/{job_id}").json()["state"]
            if state == "queued":
                client.post(f"/v1/jobs/{job_id}/cancel")
            states[state] = states.get(state, 0) + 1
    return states


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (its own, not its children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of the process and of its live descendants (uvicorn --workers N)."""
    total = 0.0
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(member)
    return total


def run_queue_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (schedstat)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1]) / 1e9
    return total


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine since boot, over all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / os.sysconf("SC_CLK_TCK"), total / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_kind(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "worker.engine_process" in command:
        return "engine child"
    if "celery" in command:
        return "celery process"
    return command.strip()[:80] or "exited"


def niceness(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return None


async def watch_niceness(worker_pids: list[int], until: float, seen: dict[str, set[int]]) -> None:
    """Every 0.5 s: the niceness of every process under the workers, by kind (the
    worker's main process included, which runs at the API's priority)."""
    while time.perf_counter() < until:
        for worker_pid in worker_pids:
            for pid in [worker_pid, *descendants(worker_pid)]:
                value = niceness(pid)
                if value is not None:
                    kind = "worker main" if pid == worker_pid else process_kind(pid)
                    seen.setdefault(kind, set()).add(value)
        await asyncio.sleep(0.5)


@dataclass
class BusyResult:
    polls: Phase
    lists: Phase
    api_cpu_share: float  # of one core, over the measured window
    api_wait_share: float  # time its threads waited for a CPU, per second
    machine_busy_share: float  # of all cores
    jobs: dict[str, int]
    niceness_seen: dict[str, set[int]]
    workers: int


def polls_with_busy_workers(
    api_pid: int,
    port: int,
    job_ids: list[str],
    args: argparse.Namespace,
    ids: dict[str, str],
    env: dict[str, str],
    queue: str,
    work: Path,
    workers_count: int,
) -> BusyResult:
    base_url = f"http://127.0.0.1:{port}"
    context = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(
                process(worker_command(queue, f"busy{n}"), env, work / f"busy-worker-{n}.log")
            )
            for n in range(workers_count)
        ]
        pool = stack.enter_context(context.Pool(1))
        # the workers' start-up and first jobs (imports, engine child) are not measured
        feed_s = args.warmup_s + 15 + args.duration_s
        backlog = args.busy_backlog if workers_count else 0  # the control: no jobs at all
        fed = pool.apply_async(feed_jobs, (base_url, ids, feed_s, backlog))
        time.sleep(15)
        asyncio.run(poll_phase(port, job_ids, args, duration_s=args.warmup_s))
        seen: dict[str, set[int]] = {}
        lists = Phase("job lists")
        api_before, (busy_before, total_before) = tree_cpu_seconds(api_pid), machine_busy_seconds()
        wait_before = run_queue_wait_seconds(api_pid)
        started = time.perf_counter()

        async def measured() -> Phase:
            watcher = asyncio.create_task(
                watch_niceness([worker.pid for worker in workers], started + args.duration_s, seen)
            )
            polls = await poll_phase(port, job_ids, args, lists=lists)
            await watcher
            return polls

        polls = asyncio.run(measured())
        wall = time.perf_counter() - started
        api_share = (tree_cpu_seconds(api_pid) - api_before) / wall
        wait_share = (run_queue_wait_seconds(api_pid) - wait_before) / wall
        busy_after, total_after = machine_busy_seconds()
        machine_share = (busy_after - busy_before) / max(1e-9, total_after - total_before)
        jobs = fed.get(timeout=feed_s + 300)
    return BusyResult(polls, lists, api_share, wait_share, machine_share, jobs, seen, workers_count)


def render_busy(args: argparse.Namespace, result: BusyResult) -> str:
    def row(phase: Phase) -> str:
        p50, p95, p99 = phase.percentiles()
        count = len(phase.latencies_ms)
        errors = sum(phase.errors.values())
        detail = f" ({phase.errors})" if phase.errors else ""
        return (
            f"| {phase.name} | {count} | {count / max(phase.elapsed_s, 1e-9):.0f} "
            f"| {p50:.1f} | {p95:.1f} | {p99:.1f} | {errors}{detail} |"
        )

    nice = ", ".join(
        f"{kind} {sorted(values)}" for kind, values in sorted(result.niceness_seen.items())
    )
    p99 = max(result.polls.percentiles()[2], result.lists.percentiles()[2])
    load1, _, _ = os.getloadavg()
    return "\n".join(
        [
            "",
            f"## Polls with {result.workers} busy workers ({args.profile})"
            + (" (the control: the same pollers, no worker)" if not result.workers else ""),
            "",
            f"`PYTHONPATH=. python bench/load.py --busy-only --busy-workers {result.workers} "
            f"--busy-backlog {args.busy_backlog} --clients {args.clients} --interval-s "
            f"{args.interval_s} --warmup-s {args.warmup_s} --duration-s {args.duration_s} "
            f"--profile {args.profile} --api-workers {args.api_workers}`",
            "",
            f"API: {args.api_workers} uvicorn process(es). "
            f"{result.workers} Celery workers (concurrency 1 each) ran static-quantization "
            f"jobs of the digits CNN, fed so that {args.busy_backlog} stayed queued; "
            f"{args.clients} pollers, one request every {args.interval_s} s each, nine in "
            f"ten reading a job's status, one in ten listing jobs. Machine: "
            f"{os.cpu_count()} cores, load average {load1:.1f} at the end. "
            f"{args.note}".strip(),
            "",
            "| requests | count | per second | p50 ms | p95 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|",
            row(result.polls),
            row(result.lists),
            "",
            f"- API process CPU: {100 * result.api_cpu_share:.0f}% of one core; its threads "
            f"waited for a CPU {100 * result.api_wait_share:.0f}% of the time (schedstat, "
            f"summed over threads); the machine "
            f"{100 * result.machine_busy_share:.0f}% busy (all cores, everything on it)",
            f"- jobs: {result.jobs}",
            f"- niceness seen: {nice}",
            f"- target p99 <= 1000 ms: {'met' if p99 <= 1000 else 'NOT met'} ({p99:.1f} ms)",
            "",
        ]
    )


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="squeeze-load-"))
    data_dir = work / "data"
    env = service_env(data_dir, args.profile)
    queue = env.get("SQUEEZE_QUEUE_CPU", "cpu")
    print(f"building inputs in {work}")
    inputs = build_inputs(work)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    busy: BusyResult | None = None
    try:
        with process(api_command(port, args.api_workers), env, work / "api.log") as api:
            wait_ready(base_url, api)
            with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
                ids = {
                    "model": upload(client, "/v1/models", inputs.model),
                    "calibration": upload(client, "/v1/datasets", inputs.calibration),
                    "evaluation": upload(client, "/v1/datasets", inputs.evaluation),
                }
                job_ids = [
                    client.post("/v1/jobs", json=job_spec(ids)).json()["id"] for _ in range(20)
                ]
            if args.busy_only:
                print(f"phase 5 alone: {args.clients} pollers, {args.busy_workers} busy workers")
                with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
                    for job_id in job_ids:  # the workers run the feeder's static jobs
                        client.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()
                counts = [args.busy_workers, 0] if args.busy_control else [args.busy_workers]
                section = "".join(
                    render_busy(
                        args,
                        polls_with_busy_workers(
                            api.pid, port, job_ids, args, ids, env, queue, work, count
                        ),
                    )
                    for count in counts
                )
                print(section)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                previous = args.out.read_text() if args.out.exists() else ""
                args.out.write_text(previous + section)
                return
            print(f"phase 1: {args.clients} pollers, one poll every {args.interval_s}s each")
            # Connections to the database, caches and lazy imports are made by the first
            # requests after start-up: measured from the second on, as a running service.
            asyncio.run(poll_phase(port, job_ids, args, duration_s=args.warmup_s))
            polls_only = asyncio.run(poll_phase(port, job_ids, args))
            print(polls_only.row())

            # Before the writers: their thousands of queued jobs would run first.
            print(f"phase 2: overhead over the engine, {args.jobs} jobs")
            with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
                for job_id in job_ids:  # the pollers' jobs would run first
                    client.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()
                spec = job_spec(ids)
                with process(worker_command(queue), env, work / "worker.log"):
                    service = service_seconds(client, spec, args.jobs)

            # Before the writers, for the same reason: their queued jobs would run first.
            if args.busy_workers > 0:
                print(f"phase 5: the pollers with {args.busy_workers} busy workers")
                busy = polls_with_busy_workers(
                    api.pid, port, job_ids, args, ids, env, queue, work, args.busy_workers
                )
                print(busy.polls.row())
                print(busy.lists.row())

            print(
                f"phase 3: the same pollers with {args.writers} writers, one upload+submit "
                f"every {args.writer_interval_s}s each"
            )
            polls_mixed, writes = polls_with_writers(port, job_ids, args, inputs, ids)
            print(polls_mixed.row())
            print(writes.row())
            print(f"phase 4: {args.writers} writers back to back, no pollers (throughput)")
            writes_flat_out = write_phase(
                base_url, inputs.evaluation, ids, args.writers, args.duration_s, 0.0
            )
            print(writes_flat_out.row())
            engine = engine_seconds(inputs, spec, args.jobs, work)
    finally:
        if args.profile == "deployment":
            from tests import services

            services.drop_database(env["SQUEEZE_DATABASE_URL"].rsplit("/", 1)[1])
    overhead = statistics.median(service) - statistics.median(engine)
    report = render(
        args, polls_only, polls_mixed, writes, writes_flat_out, service, engine, overhead
    )
    if busy is not None:
        report += render_busy(args, busy)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    shutil.rmtree(work, ignore_errors=True)


def render(
    args: argparse.Namespace,
    polls_only: Phase,
    polls_mixed: Phase,
    writes: Phase,
    writes_flat_out: Phase,
    service: list[float],
    engine: list[float],
    overhead: float,
) -> str:
    p99 = float(np.percentile(polls_only.latencies_ms, 99))
    p99_mixed = float(np.percentile(polls_mixed.latencies_ms, 99))
    errors = (
        sum(polls_only.errors.values())
        + sum(polls_mixed.errors.values())
        + sum(writes.errors.values())
        + sum(writes_flat_out.errors.values())
    )
    lines = [
        "# Load benchmark",
        "",
        f"`PYTHONPATH=. python bench/load.py --clients {args.clients} --interval-s "
        f"{args.interval_s} --warmup-s {args.warmup_s} --duration-s {args.duration_s} "
        f"--writers {args.writers} "
        f"--writer-interval-s {args.writer_interval_s} "
        f"--jobs {args.jobs} --profile {args.profile} --api-workers {args.api_workers}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"API: {args.api_workers} uvicorn process(es); load generator in the same machine. "
        f"{args.note}".strip(),
        "",
        "| phase | requests | per second | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
        polls_only.row().replace("status polls", "status polls alone"),
        polls_mixed.row().replace("status polls", "status polls with writers"),
        writes.row().replace("upload + submit", "upload + submit, next to the polls"),
        writes_flat_out.row().replace("upload + submit", "upload + submit back to back, alone"),
        "",
        "| job overhead | seconds |",
        "|---|---:|",
        f"| service, submit to succeeded (median of {len(service)}) "
        f"| {statistics.median(service):.3f} |",
        f"| engine alone, core.pipeline.run (median of {len(engine)}) "
        f"| {statistics.median(engine):.3f} |",
        f"| overhead | {overhead:.3f} |",
        "",
        "Targets: status polls p99 <= 20 ms at 200 concurrent clients, 0 errors; "
        "overhead <= 0.5 s.",
        f"- p99 alone {p99:.1f} ms, with writers {p99_mixed:.1f} ms: "
        f"{'met' if max(p99, p99_mixed) <= 20 else 'NOT met'}",
        f"- errors {errors}: {'met' if errors == 0 else 'NOT met'}",
        f"- overhead {overhead:.3f} s: {'met' if overhead <= 0.5 else 'NOT met'}",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
