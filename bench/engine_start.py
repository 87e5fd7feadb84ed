"""Benchmark: what starting a job's engine child costs (worker/engine_process.py).

For `--jobs` tiny dynamic-quantize jobs on the digits CNN, run one after another through
`run_engine` (the worker's path into the engine): the time from the call to the child's
"started" message, to its first progress report, and to the outcome. The first job of a
process includes starting the fork server (when one is used); the rest reuse it.

Run from the repository root (not part of the test suite):

    PYTHONPATH=. python bench/engine_start.py [--jobs 5] [--fresh]

`--fresh`: every job starts a fresh interpreter (SQUEEZE_ENGINE_FORK_SERVER=false).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()

    import torch

    from core.context import MeasureSettings
    from service.examples import digits_arrays, export_onnx, save_npz, train_digits_cnn
    from worker.engine_process import EngineRequest, run_engine

    folder = Path(tempfile.mkdtemp(prefix="squeeze-bench-engine-"))
    x_test, y_test = digits_arrays("test")
    model = export_onnx(
        train_digits_cnn(seed=0), torch.from_numpy(x_test[:1]), folder / "digits.onnx"
    )
    evaluation = save_npz(folder / "eval.npz", x_test, y_test)

    # When the "started" message arrives: seen where the parent reads the pipe.
    started_at: list[float] = []
    receive = Connection.recv_bytes

    def recording(self: Connection, *a: Any, **k: Any) -> bytes:
        data: bytes = receive(self, *a, **k)
        if json.loads(data).get("type") == "started":
            started_at.append(time.perf_counter())
        return data

    Connection.recv_bytes = recording  # type: ignore[method-assign]
    rows = []
    for index in range(args.jobs):
        first_progress: list[float] = []
        request = EngineRequest(
            kind="pipeline",
            work_dir=folder / f"work-{index}",
            model_path=model,
            dataset_paths={"eval": evaluation},
            spec={
                "model_id": "model",
                "eval_dataset_id": "eval",
                "steps": [{"method": "quantize", "mode": "dynamic"}],
                "batch_size": 8,
            },
            device="cpu",
            seed=0,
            measure=MeasureSettings(threads=1, warmup_runs=1, runs=3),
        )
        started_at.clear()
        began = time.perf_counter()
        run_engine(
            request,
            on_progress=lambda *_, seen=first_progress: (
                seen.append(time.perf_counter()) if not seen else None
            ),
            should_stop=lambda: False,
            time_limit_s=300,
            fork_server=not args.fresh,
        )
        ended = time.perf_counter()
        rows.append((started_at[0] - began, first_progress[0] - began, ended - began))
        print(
            f"job {index}: started {rows[-1][0]:.3f} s, first progress {rows[-1][1]:.3f} s, "
            f"done {rows[-1][2]:.3f} s",
            flush=True,
        )
    later = rows[1:] or rows
    print(
        f"{'fresh interpreter' if args.fresh else 'default'}, load {os.getloadavg()[0]:.2f}: "
        f"median of jobs 2..{len(rows)}: started "
        f"{statistics.median(r[0] for r in later):.3f} s, first progress "
        f"{statistics.median(r[1] for r in later):.3f} s, done "
        f"{statistics.median(r[2] for r in later):.3f} s; first job done {rows[0][2]:.3f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
