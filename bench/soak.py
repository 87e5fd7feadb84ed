"""Soak test: mixed traffic on the deployment profile while a worker is killed and the
broker restarted on a schedule; nothing may be lost or done twice.

Starts, on this machine: its OWN redis-server on a free port (never the shared one; it
runs without persistence, so a restart loses every message it held), a fresh PostgreSQL
database, one API process (uvicorn) and two Celery workers (local blob files in one
data dir; `--s3` uses the object store of tests/services.py instead). Then, for
`--duration-s`:
- every `--submit-interval-s` a job (dynamic or static INT8 quantization, in turn),
  submitted with an Idempotency-Key and retried with the same key on any error, and a
  dataset upload now and then; every fifth job is cancelled a moment later;
- status polls and job listings between submissions;
- every `--kill-every-s` the second worker is SIGKILLed (its pool too) and started again;
- every `--redis-restart-every-s` Redis is stopped for `--redis-down-s` and started
  again, empty.
Then it waits (`--drain-s` at most) for every job to end and reports: jobs submitted,
finished (by state), lost (submitted but not final, or gone: must be 0), duplicated
artifacts (one job's artifact stored twice, or a job that succeeded twice: must be 0)
and the RSS growth of the API process and of the worker that was never killed (its main
process and pool): the median of the samples in the first and in the last minute of
traffic, and the peak.

    PYTHONPATH=. python bench/soak.py --duration-s 600 [--note "shared machine"]

Writes bench/results/soak.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import Inputs, build_inputs, upload  # noqa: E402
from scripts.demo import api_command, free_port, stop, wait_ready  # noqa: E402

ADMIN_KEY = "sqz_bench-soak-admin-key"
FINAL = {"succeeded", "failed", "cancelled"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--submit-interval-s", type=float, default=3.0)
    parser.add_argument("--kill-every-s", type=float, default=120.0)
    parser.add_argument("--redis-restart-every-s", type=float, default=150.0)
    parser.add_argument("--redis-down-s", type=float, default=10.0)
    parser.add_argument("--drain-s", type=float, default=600.0)
    parser.add_argument("--sample-every-s", type=float, default=10.0, help="RSS samples")
    parser.add_argument("--s3", action="store_true", help="blobs in the S3 object store")
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.md"))
    parser.add_argument("--note", default="", help="a sentence on machine conditions")
    return parser.parse_args(argv)


# --- processes -----------------------------------------------------------------------------


# The engine's processes (a fork server, and a child per job that lives for that job only,
# ~800 MiB while it runs) are not the worker's own memory: counting them would read "a job
# was running in the last minute" as growth.
ENGINE_PROCESSES = ("worker.engine_process", "worker.engine_server", "squeeze-engine")


def _is_engine(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return any(marker in command or marker == name for marker in ENGINE_PROCESSES)


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its descendants (/proc), leaving out the engine's
    processes and theirs; 0 when it is gone."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        if current != pid and _is_engine(current):
            continue
        todo.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


@dataclass
class Redis:
    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
            stdout=(self.folder / "redis.log").open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                import redis

                if redis.Redis(port=self.port, socket_connect_timeout=1).ping():
                    return
            except Exception:
                time.sleep(0.2)
        raise SystemExit("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@dataclass
class Worker:
    index: int
    env: dict[str, str]
    queue: str
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    kills: int = 0

    def start(self) -> None:
        command = [
            sys.executable, "-m", "celery", "-A", "worker.main", "worker", "-Q", self.queue,
            "--concurrency", "1", "--loglevel", "INFO",
            "--hostname", f"soak{self.index}-{uuid.uuid4().hex[:4]}@%h",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, env=self.env, cwd=ROOT, start_new_session=True,
            stdout=(self.log_dir / f"worker{self.index}.log").open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)
        self.kills += 1


# --- traffic -------------------------------------------------------------------------------


@dataclass
class Traffic:
    client: httpx.Client
    ids: dict[str, str]
    inputs: Inputs
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> idempotency key
    cancelled: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    uploads: int = 0
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response | None:
        self.requests += 1
        try:
            response = self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1
            return None
        if response.status_code >= 500:
            self.errors[f"http {response.status_code}"] += 1
        return response

    def submit(self) -> None:
        number = next(self.counter)
        mode = "dynamic" if number % 2 == 0 else "static"
        spec = {
            "model_id": self.ids["model"],
            "calibration_dataset_id": self.ids["calibration"],
            "eval_dataset_id": self.ids["evaluation"],
            "steps": [{"method": "quantize", "mode": mode}],
            "batch_size": 8,
        }
        key = f"soak-{uuid.uuid4().hex}"
        for _ in range(20):  # the same key: a retry can never create a second job
            answer = self.call("POST", "/v1/jobs", json=spec, headers={"Idempotency-Key": key})
            if answer is not None and answer.status_code == 202:
                job_id = str(answer.json()["id"])
                self.jobs[job_id] = key
                if number % 5 == 4:
                    cancel = self.call("POST", f"/v1/jobs/{job_id}/cancel")
                    if cancel is not None and cancel.status_code == 202:
                        self.cancelled.add(job_id)
                return
            time.sleep(1.0)
        self.errors["submission given up"] += 1

    def upload_dataset(self) -> None:
        try:
            upload(self.client, "/v1/datasets", self.inputs.evaluation)
            self.uploads += 1
        except httpx.HTTPError as exc:
            self.errors[f"upload {type(exc).__name__}"] += 1

    def poll(self) -> None:
        for job_id in list(self.jobs)[-5:]:
            self.call("GET", f"/v1/jobs/{job_id}")
        self.call("GET", "/v1/jobs", params={"limit": 20})


def states(client: httpx.Client, job_ids: list[str]) -> dict[str, str]:
    found = {}
    for job_id in job_ids:
        try:
            answer = client.get(f"/v1/jobs/{job_id}")
        except httpx.HTTPError:
            found[job_id] = "unknown"
            continue
        found[job_id] = answer.json()["state"] if answer.status_code == 200 else "gone"
    return found


WINDOW_S = 60.0


def memory_growth(
    samples: list[tuple[float, int, int]], traffic_s: float
) -> dict[str, tuple[float, float, float]]:
    """Per process: the median RSS of the first and of the last WINDOW_S of traffic, and
    the peak. Medians, because the worker's pool child holds a job's tensors or not
    depending on the instant."""
    result = {}
    for who, column in (("the API", 1), ("worker 0 (never killed; main + pool)", 2)):
        values = [(sample[0], sample[column]) for sample in samples]
        first = [v for at, v in values if at <= WINDOW_S] or [values[0][1]]
        last = [v for at, v in values if at >= traffic_s - WINDOW_S] or [values[-1][1]]
        result[who] = (
            float(statistics.median(first)),
            float(statistics.median(last)),
            float(max(v for _, v in values)),
        )
    return result


def duplicates(database_url: str, job_ids: list[str]) -> dict[str, int]:
    """Artifacts stored twice for one job and name, and jobs that succeeded twice."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as connection:
        artifacts = connection.execute(
            text(
                "SELECT count(*) FROM (SELECT job_id, name FROM artifacts "
                "WHERE job_id = ANY(:ids) GROUP BY job_id, name HAVING count(*) > 1) d"
            ),
            {"ids": job_ids},
        ).scalar_one()
        succeeded = connection.execute(
            text(
                "SELECT count(*) FROM (SELECT job_id FROM job_events WHERE kind = 'succeeded' "
                "AND job_id = ANY(:ids) GROUP BY job_id HAVING count(*) > 1) d"
            ),
            {"ids": job_ids},
        ).scalar_one()
        sent_twice = connection.execute(
            text(
                "SELECT count(*) FROM (SELECT job_id, attempt FROM job_events "
                "WHERE kind = 'started' AND job_id = ANY(:ids) GROUP BY job_id, attempt "
                "HAVING count(*) > 1) d"
            ),
            {"ids": job_ids},
        ).scalar_one()
        outbox_left = connection.execute(text("SELECT count(*) FROM job_outbox")).scalar_one()
    engine.dispose()
    return {
        "artifacts stored twice": int(artifacts),
        "jobs that succeeded twice": int(succeeded),
        "attempts started twice": int(sent_twice),
        "outbox rows left": int(outbox_left),
    }


# --- the run -------------------------------------------------------------------------------


@contextmanager
def deployment(args: argparse.Namespace, work: Path) -> Any:
    from tests import services

    database = services.create_database()
    database_url = services.postgres_url_for(database)
    redis_server = Redis(port=free_port(), folder=work)
    redis_server.start()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SQUEEZE_DATA_DIR": str(work / "data"),
        "SQUEEZE_DATABASE_URL": database_url,
        "SQUEEZE_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "SQUEEZE_QUEUE_CPU": f"soak-{database}",
        "SQUEEZE_ADMIN_API_KEY": ADMIN_KEY,
        "SQUEEZE_QUOTA_CONCURRENT_JOBS": "100000",
        "SQUEEZE_MEASURE_RUNS": "5",
        "SQUEEZE_MEASURE_WARMUP_RUNS": "1",
        "SQUEEZE_LEASE_S": "20",
        "SQUEEZE_HEARTBEAT_S": "2",
        "SQUEEZE_REAPER_INTERVAL_S": "5",
        "SQUEEZE_REQUEUE_QUEUED_AFTER_S": "60",
        "SQUEEZE_WORKER_HEARTBEAT_S": "2",
        "SQUEEZE_WORKER_DEAD_AFTER_S": "10",
        "SQUEEZE_ABSENT_WORKER_POLICY": "off",
        "SQUEEZE_LOG_FORMAT": "text",
    }
    store = None
    if args.s3:
        store = services.ObjectStore(work / "seaweedfs").start()
        for name, value in store.settings_overrides().items():
            env[f"SQUEEZE_{name.upper()}"] = str(value)
    port = free_port()
    with ExitStack() as stack:
        api = subprocess.Popen(
            api_command(port, "--no-access-log"), env=env, cwd=ROOT, start_new_session=True,
            stdout=(work / "api.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(stop, api)
        wait_ready(f"http://127.0.0.1:{port}", api)
        workers = [Worker(i, env, env["SQUEEZE_QUEUE_CPU"], work) for i in range(2)]
        for worker in workers:
            worker.start()
            stack.callback(lambda w=worker: w.process and stop(w.process))
        stack.callback(redis_server.stop)
        if store is not None:
            stack.callback(store.stop)
        stack.callback(services.drop_database, database)
        yield port, api, workers, redis_server, database_url


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="squeeze-soak-"))
    inputs = build_inputs(work)
    with deployment(args, work) as (port, api, workers, redis_server, database_url):
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        ids = {
            "model": upload(client, "/v1/models", inputs.model),
            "calibration": upload(client, "/v1/datasets", inputs.calibration),
            "evaluation": upload(client, "/v1/datasets", inputs.evaluation),
        }
        traffic = Traffic(client, ids, inputs)
        warmup_until = time.monotonic() + args.warmup_s
        while time.monotonic() < warmup_until:
            traffic.submit()
            traffic.poll()
            time.sleep(args.submit_interval_s)
        samples: list[tuple[float, int, int]] = []  # (s since start, API RSS, worker RSS)
        next_sample = 0.0
        events: list[str] = []
        started = time.monotonic()
        next_kill = started + args.kill_every_s
        next_redis = started + args.redis_restart_every_s
        tick = 0
        while time.monotonic() - started < args.duration_s:
            tick += 1
            now = time.monotonic()
            if now - started >= next_sample:
                assert workers[0].process is not None
                samples.append(
                    (now - started, rss_bytes(api.pid), rss_bytes(workers[0].process.pid))
                )
                next_sample += args.sample_every_s
            if now >= next_kill:
                workers[1].kill()
                events.append(f"{now - started:.0f} s: worker 1 killed (SIGKILL) and restarted")
                workers[1].start()
                next_kill += args.kill_every_s
            if now >= next_redis:
                redis_server.stop()
                events.append(
                    f"{now - started:.0f} s: Redis stopped for {args.redis_down_s:g} s, "
                    "restarted empty"
                )
                down_until = time.monotonic() + args.redis_down_s
                while time.monotonic() < down_until:  # traffic goes on during the outage
                    traffic.submit()
                    traffic.poll()
                    time.sleep(args.submit_interval_s)
                redis_server.start()
                redis_server.restarts += 1
                next_redis += args.redis_restart_every_s
            traffic.submit()
            traffic.poll()
            if tick % 7 == 0:
                traffic.upload_dataset()
            time.sleep(args.submit_interval_s)
        traffic_s = time.monotonic() - started
        rss = memory_growth(samples, traffic_s)
        job_ids = list(traffic.jobs)
        drain_started = time.monotonic()
        final: dict[str, str] = {}
        finished, last_progress = -1, drain_started
        while time.monotonic() - drain_started < args.drain_s:
            final = states(client, job_ids)
            done = sum(state in FINAL for state in final.values())
            if done == len(final):
                break
            if done > finished:
                finished, last_progress = done, time.monotonic()
            time.sleep(5)
        drain_s = time.monotonic() - drain_started
        # jobs still ending when the drain stopped are a backlog the workers had not
        # reached; with nothing ending for a minute, the jobs left are stuck
        still_draining = time.monotonic() - last_progress < 60
        doubles = duplicates(database_url, job_ids)
        codes = Counter(
            (client.get(f"/v1/jobs/{job_id}").json().get("error") or {}).get("code", "?")
            for job_id, state in final.items()
            if state == "failed"
        )
    by_state = Counter(final.values())
    unfinished = sum(count for state, count in by_state.items() if state not in FINAL)
    backlog = unfinished if still_draining and not by_state.get("gone") else 0
    lost = unfinished - backlog
    report = render(
        args, traffic, traffic_s, drain_s, by_state, lost, backlog, doubles, codes, rss,
        events, workers, redis_server,
    )  # fmt: skip
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    if lost or doubles["artifacts stored twice"] or doubles["jobs that succeeded twice"]:
        raise SystemExit("soak: jobs lost or done twice")
    if backlog:
        raise SystemExit("soak: the drain ended before every job did (see --drain-s)")


def render(
    args: argparse.Namespace,
    traffic: Traffic,
    traffic_s: float,
    drain_s: float,
    by_state: Counter[str],
    lost: int,
    backlog: int,
    doubles: dict[str, int],
    codes: Counter[str],
    rss: dict[str, tuple[float, float, float]],
    events: list[str],
    workers: list[Worker],
    redis_server: Redis,
) -> str:
    mib = 1024 * 1024
    lines = [
        "# Soak: deployment profile (PostgreSQL + Redis + local blobs) under faults",
        "",
        f"`PYTHONPATH=. python bench/soak.py {shlex.join(sys.argv[1:])}` on "
        f"{platform.node()} ({os.cpu_count()} cores). {args.note}".rstrip(),
        "",
        f"- traffic: {traffic_s:.0f} s after {args.warmup_s:g} s warm-up; a job every "
        f"{args.submit_interval_s:g} s (dynamic and static INT8 in turn, every 5th cancelled),"
        f" {traffic.requests} API requests, {traffic.uploads} extra dataset uploads",
        f"- faults: worker 1 SIGKILLed {workers[1].kills} times, Redis (own server, no "
        f"persistence) restarted {redis_server.restarts} times",
        f"- jobs submitted: {len(traffic.jobs)}; finished: "
        + ", ".join(f"{state} {count}" for state, count in sorted(by_state.items()))
        + (
            f" ({backlog} not final when the {drain_s:.0f} s drain ended, the workers still "
            "ending jobs: a backlog the machine had not caught up with, not counted lost)"
            if backlog
            else f" ({'all final' if not lost else 'the rest stuck'} {drain_s:.0f} s after "
            "the traffic stopped)"
        ),
        f"- failures by code: {dict(codes) or 'none'}",
        f"- **lost: {lost}** (not final, and nothing ended in the drain's last minute; or "
        f"gone); **duplicated artifacts: {doubles['artifacts stored twice']}**; "
        f"jobs that succeeded twice: {doubles['jobs that succeeded twice']}; attempts started "
        f"twice: {doubles['attempts started twice']}; outbox rows left: "
        f"{doubles['outbox rows left']}",
        f"- client-side errors during the faults: {dict(traffic.errors) or 'none'}",
        *(
            f"- RSS of {who}, engine processes not counted (median of the samples every "
            f"{args.sample_every_s:g} s in the "
            f"first and in the last {WINDOW_S:g} s of traffic): {first / mib:.0f} MiB -> "
            f"{last / mib:.0f} MiB ({(last - first) / mib:+.0f} MiB), peak {peak / mib:.0f} MiB"
            for who, (first, last, peak) in rss.items()
        ),
        "",
        "Faults:",
        *(f"- {event}" for event in events),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
