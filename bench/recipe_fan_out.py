"""Benchmark: an auto recipe's wall time with its short rounds fanned out to a helper
worker (`parallel_workers: 2`) against the same recipe on one worker (`parallel_workers: 1`),
both with the same two real Celery workers running, on the deployment profile
(PostgreSQL and Redis on 127.0.0.1, a fresh database).

The job: `auto` on the digits CNN with structured pruning recovered by distillation at
`--ratios`, `--short-epochs` each, no long rounds, no quantization of the results (so the
short rounds are most of the work). The two settings alternate (1, 2, 1, 2, ...) for
`--repeats` pairs; the table gives each job's wall time (submitted to finished, from the
job's own timestamps), how many short rounds the helper produced, the chosen candidate and
its measured latency ratio and metric. The ratio that matters is the median wall time of
`parallel_workers: 2` over that of 1, measured in this run.

    PYTHONPATH=. python bench/recipe_fan_out.py [--repeats 2] [--ratios 0.2,0.35,0.5,0.65]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import (  # noqa: E402
    ADMIN_KEY,
    FINAL,
    api_command,
    process,
    service_env,
    upload,
    worker_command,
)
from scripts.demo import free_port, wait_ready  # noqa: E402
from service.examples import digits_arrays, export_onnx, save_npz, train_digits_cnn  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "recipe-fan-out.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="pairs of jobs (1 then 2)")
    parser.add_argument("--ratios", default="0.2,0.35,0.5,0.65")
    parser.add_argument("--short-epochs", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="a sentence for the header (machine load)")
    return parser.parse_args(argv)


def build_inputs(folder: Path, train_rows: int) -> dict[str, Path]:
    import torch

    torch.manual_seed(0)
    model = train_digits_cnn(seed=0, epochs=4)
    x_test, y_test = digits_arrays("test")
    x_train, y_train = digits_arrays("train")
    return {
        "model": export_onnx(model, torch.from_numpy(x_test[:1]), folder / "digits.onnx"),
        "evaluation": save_npz(folder / "eval.npz", x_test[:300], y_test[:300]),
        "train": save_npz(folder / "train.npz", x_train[:train_rows], y_train[:train_rows]),
    }


def job_spec(
    ids: dict[str, str], args: argparse.Namespace, parallel_workers: int
) -> dict[str, Any]:
    return {
        "model_id": ids["model"],
        "eval_dataset_id": ids["evaluation"],
        "train_dataset_id": ids["train"],
        "steps": [
            {
                "method": "auto",
                "kinds": ["prune_distill"],
                "prune_ratios": [float(r) for r in args.ratios.split(",")],
                "short_epochs": args.short_epochs,
                "long_epochs": 0,
                "quantize_results": False,
                "parallel_workers": parallel_workers,
                "time_budget_s": 1200,
                "seed": 0,
            }
        ],
        "batch_size": 32,
        "targets": {"max_metric_drop": 0.05, "allow_slower": True},
    }


def run_job(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=spec)
    response.raise_for_status()
    url = response.headers["location"]
    while True:
        job: dict[str, Any] = client.get(url).json()
        if job["state"] in FINAL:
            return job
        time.sleep(0.5)


def row_of(job: dict[str, Any], parallel_workers: int) -> dict[str, Any]:
    started = datetime.fromisoformat(job["created_at"])
    ended = datetime.fromisoformat(job["finished_at"])
    row: dict[str, Any] = {
        "parallel_workers": parallel_workers,
        "state": job["state"],
        "wall_s": (ended - started).total_seconds(),
    }
    if job["state"] != "succeeded":
        row["error"] = (job.get("error") or {}).get("message", "")
        return row
    details = job["result"]["steps"][0]["details"]
    shorts = [c for c in details["candidates"] if c.get("stage") == "short"]
    chosen = next((c for c in details["candidates"] if c.get("chosen")), None)
    row |= {
        "shorts": len(shorts),
        "by_helper": len(details["fan_out"]["by_helpers"]),
        "chosen": chosen["name"] if chosen else "input",
        "latency_ratio": chosen.get("latency_ratio") if chosen else 1.0,
        "metric": chosen.get("metric_value") if chosen else None,
    }
    return row


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="squeeze-fan-out-"))
    env = service_env(work / "data", "deployment")
    env["SQUEEZE_LEASE_S"] = "20"
    env["SQUEEZE_HEARTBEAT_S"] = "2"
    inputs = build_inputs(work, args.train_rows)
    port = free_port()
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        api = stack.enter_context(process(api_command(port, 1), env, work / "api.log"))
        wait_ready(f"http://127.0.0.1:{port}", api)
        for index in range(2):
            stack.enter_context(
                process(
                    worker_command(env["SQUEEZE_QUEUE_CPU"], f"fan-out-{index}"),
                    env,
                    work / f"worker-{index}.log",
                )
            )
        client = stack.enter_context(
            httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=60,
            )
        )
        ids = {name: upload(client, "/v1/models" if name == "model" else "/v1/datasets", path)
               for name, path in inputs.items()}  # fmt: skip
        for repeat in range(args.repeats):
            for parallel_workers in (1, 2):
                job = run_job(client, job_spec(ids, args, parallel_workers))
                rows.append(row_of(job, parallel_workers))
                print(repeat, rows[-1], flush=True)
    args.output.write_text(render(rows, args))
    print(args.output.read_text())


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    import onnxruntime
    import torch

    command = "PYTHONPATH=. python bench/recipe_fan_out.py " + " ".join(sys.argv[1:])
    lines = [
        "# Auto recipe fan-out: short rounds on a helper worker",
        "",
        f"`{command}` on {platform.machine()}, {os.cpu_count()} cores, onnxruntime "
        f"{onnxruntime.__version__}, torch {torch.__version__}, "
        f"{datetime.now().date()}. Two real Celery workers (PostgreSQL + Redis) for every "
        f"job; the recipe: prune_distill at {args.ratios}, {args.short_epochs} short epochs, "
        f"no long rounds, no quantization. {args.note}",
        "",
        "| job | parallel_workers | state | wall s | short rounds | by the helper | chosen "
        "| latency ratio | metric |",
        "|---:|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for number, row in enumerate(rows, 1):
        ratio = row.get("latency_ratio")
        metric = row.get("metric")
        lines.append(
            f"| {number} | {row['parallel_workers']} | {row['state']} | {row['wall_s']:.1f} "
            f"| {row.get('shorts', '-')} | {row.get('by_helper', '-')} "
            f"| {row.get('chosen', row.get('error', ''))} "
            f"| {'-' if ratio is None else f'{ratio:.2f}'} "
            f"| {'-' if metric is None else f'{metric:.4f}'} |"
        )
    walls = {
        p: [r["wall_s"] for r in rows if r["parallel_workers"] == p and r["state"] == "succeeded"]
        for p in (1, 2)
    }
    if walls[1] and walls[2]:
        one, two = statistics.median(walls[1]), statistics.median(walls[2])
        lines += [
            "",
            f"Median wall time: {one:.1f} s with one worker producing, {two:.1f} s fanned "
            f"out: {two / one:.2f}x the time ({one / two:.2f}x faster).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
