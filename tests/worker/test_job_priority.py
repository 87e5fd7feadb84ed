"""A worker's pool children, which run the jobs, yield the CPU to the API and the worker's
own heartbeat (issue 18: status polls waited for a CPU next to busy workers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHILD = "import os; from worker.main import _fresh_child; _fresh_child(); print(os.nice(0))"


def niceness_after_child_init(tmp_path: Path, **settings: str) -> int:
    inherited = {k: v for k, v in os.environ.items() if k != "SQUEEZE_WORKER_JOB_NICE"}
    environment = inherited | {
        "PYTHONPATH": str(ROOT),
        "SQUEEZE_DATA_DIR": str(tmp_path),
        **{f"SQUEEZE_{name.upper()}": value for name, value in settings.items()},
    }
    output = subprocess.run(
        [sys.executable, "-c", CHILD], env=environment, capture_output=True, text=True, check=True
    )
    return int(output.stdout.strip().splitlines()[-1])


def test_a_pool_child_lowers_its_priority_by_the_setting(tmp_path: Path) -> None:
    assert niceness_after_child_init(tmp_path) == os.nice(0) + 10
    assert niceness_after_child_init(tmp_path, worker_job_nice="3") == os.nice(0) + 3


def test_zero_keeps_the_priority(tmp_path: Path) -> None:
    assert niceness_after_child_init(tmp_path, worker_job_nice="0") == os.nice(0)
