"""An auto recipe fanned out over two real Celery worker processes: the job's runner asks
for a helper, the helper produces short rounds into the job's candidate store, the runner
takes them as they were recorded, and every short round is produced once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DigitsFiles
from tests.factories import digits_npz
from tests.integration.conftest import DeploymentFactory

pytestmark = pytest.mark.slow

RATIOS = [0.2, 0.35, 0.5, 0.65]


def test_two_workers_share_one_recipes_short_rounds(
    deploy: DeploymentFactory, digits_files: DigitsFiles, tmp_path: Path
) -> None:
    deployment = deploy(lease_s=3.0, heartbeat_s=0.5)
    deployment.start_worker()
    deployment.start_worker()
    train = digits_npz(tmp_path / "train.npz", split="train", n=300)
    spec: dict[str, Any] = {
        **deployment.upload_digits(digits_files),
        "train_dataset_id": deployment.upload("/v1/datasets", train),
        "steps": [
            {
                "method": "auto",
                "kinds": ["prune_distill"],
                "prune_ratios": RATIOS,
                "short_epochs": 1,
                "long_epochs": 0,
                "quantize_results": False,
                "parallel_workers": 2,
                "time_budget_s": 200,
            }
        ],
        "targets": {"max_metric_drop": 0.5, "allow_slower": True},
    }

    job = deployment.wait_final(deployment.submit(spec), timeout_s=400)

    assert job["state"] == "succeeded", (job["error"], deployment.worker_logs())
    details = job["result"]["steps"][0]["details"]
    shorts = [row for row in details["candidates"] if row.get("stage") == "short"]
    assert len(shorts) == len(RATIOS)  # each once
    assert len({row["name"] for row in shorts}) == len(RATIOS)
    assert all(row["status"] == "measured" for row in shorts), shorts
    by_helper = [row["name"] for row in shorts if str(row.get("by", "")).startswith("helper-")]
    assert by_helper, (shorts, deployment.worker_logs())
    assert sorted(details["fan_out"]["by_helpers"]) == sorted(by_helper)
    events = deployment.get(f"/v1/jobs/{job['id']}/events?limit=1000")["items"]
    helper_rows = [e["data"]["candidate"] for e in events if e["kind"] == "recipe_candidate"]
    assert sorted(row["name"] for row in helper_rows if row["status"] == "measured") == sorted(
        by_helper
    )
