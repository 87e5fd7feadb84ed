"""The default per-job memory ceiling is shared by the jobs a worker runs at once: with
`--concurrency 2` each job gets half of the machine's allowance, not 80% each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service.settings import Settings
from worker.limits import job_memory_limit, machine_memory_bytes

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_ceiling_divides_the_machine_share_by_the_pool_size(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, job_memory_fraction=0.8)
    share = int(machine_memory_bytes() * 0.8)
    assert job_memory_limit(settings, pool=1) == share
    assert job_memory_limit(settings, pool=2) == share // 2
    assert job_memory_limit(settings, pool=4) == share // 4


def test_an_explicit_limit_is_per_job_whatever_the_pool_size(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, job_memory_limit_bytes=1 << 30)
    assert job_memory_limit(settings, pool=4) == 1 << 30


def test_a_pool_process_inherits_the_pool_size_its_parent_noted_before_forking() -> None:
    # worker.main notes the size in the worker's parent (worker_before_create_process,
    # sender: billiard's pool) and the forked pool processes read it.
    script = (
        "import os\n"
        "from types import SimpleNamespace\n"
        "from worker.main import _note_pool_size\n"
        "from worker.limits import pool_size\n"
        "_note_pool_size(SimpleNamespace(_processes=3))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(pool_size())\n"
        "print(os.waitpid(pid, 0)[1] >> 8)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(ROOT), "SQUEEZE_DATA_DIR": "/tmp/squeeze-pool-size-test"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert output.stdout.strip().splitlines()[-1] == "3"
