"""Architecture search through the REST API: a tiny search job runs, its front is
downloadable, and the specs that cannot run are refused with a problem that says why.

Jobs run in-process through the worker's JobRunner, as in test_quantize_modes_e2e: the
study lives in the service's data dir (search.db), as it would on a worker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from tests.api.conftest import Api, ApiFactory, assert_problem
from tests.api.test_quantize_modes_e2e import digits_job_spec, run_job_through_api
from tests.factories import digits_arrays

TINY_SEARCH: dict[str, Any] = {
    "method": "search",
    "family": "mlp",
    "space": {"layers": 1, "units": {"low": 16, "high": 32}},
    "objective": {"kind": "pareto", "costs": ["latency_ms", "parameters"]},
    "algorithm": "random",
    "max_trials": 3,
    "epochs": 1,
    "learning_rate": 0.01,
    "time_budget_s": 120,
}


@pytest.fixture
def fast_api(make_api: ApiFactory) -> Api:
    return make_api(measure_runs=5, measure_warmup_runs=1)


def test_a_search_job_runs_through_the_api_and_publishes_its_front(
    fast_api: Api, model_file: Path, tmp_path: Path
) -> None:
    job = run_job_through_api(
        fast_api, digits_job_spec(fast_api, model_file, tmp_path, [TINY_SEARCH])
    )

    assert job["state"] == "succeeded", job["error"]
    [step] = job["result"]["steps"]
    details = step["details"]
    assert step["method"] == "search" and details["study"]["storage"] == "sqlite"
    assert details["budget"]["finished_trials"] == 3
    assert (fast_api.settings.data_dir / "search.db").is_file()

    listed = fast_api.client.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"]
    media = {item["name"]: item["media_type"] for item in listed}
    assert media["pareto.json"] == "application/json" and media["pareto.png"] == "image/png"
    front = fast_api.client.get(f"/v1/jobs/{job['id']}/artifacts/pareto.json")
    assert front.status_code == 200
    content = json.loads(front.content)
    assert set(content["front"]) == set(details["front"])
    assert content["chosen"] == details["chosen"]["trial"]
    assert {t["number"] for t in content["trials"]} >= set(content["front"])
    plot = fast_api.client.get(f"/v1/jobs/{job['id']}/artifacts/pareto.png")
    assert plot.status_code == 200 and plot.content[:4] == b"\x89PNG"

    model = fast_api.client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx").content
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": digits_arrays("test")[0][:4]})
    assert logits.shape == (4, 10)
    # the final model is the chosen trial's architecture, measured again on the eval data
    assert job["result"]["final"]["parameters"] == details["chosen"]["exported_parameters"]

    events = fast_api.client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 500}).json()
    trials = [e["data"]["trial"] for e in events["items"] if "trial" in (e.get("data") or {})]
    assert sorted(t["number"] for t in trials) == [0, 1, 2]
    assert all(t["costs"] and t["metric"] is not None and t["duration_s"] for t in trials)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {"units": {"low": 1, "high": 4}}}, "not inside the declared range 16..1024"),
        ({"space": {"blocks": 2}}, "has no searchable field 'blocks'"),
        ({"family": "auto"}, "needs a named family"),
        ({"pruner": "median"}, "set pruner to 'none'"),
        ({"objective": {"kind": "constrained"}}, "needs max_latency_ms"),
        ({"objective": {"kind": "weighted", "cost": "flops"}}, "parameters"),
        ({"algorithm": "bayes"}, "evolution"),
        ({"parallel_workers": 0}, "`steps[0].parallel_workers` must be >= 1; got 0"),
        # the service's job time limit: 3 hours by default
        ({"time_budget_s": 4 * 3600}, "must end before the job's time limit of 10800 s"),
    ],
)
def test_a_search_spec_that_cannot_run_is_refused_with_a_problem(
    change: dict[str, Any], message: str, api: Api, model_file: Path, tmp_path: Path
) -> None:
    step = {**TINY_SEARCH, **change}
    response = api.submit(digits_job_spec(api, model_file, tmp_path, [step]))
    body = assert_problem(response, 422, "invalid_request")
    assert message in response.text, body


def test_a_search_without_training_data_is_refused(
    api: Api, model_file: Path, tmp_path: Path
) -> None:
    spec = digits_job_spec(api, model_file, tmp_path, [TINY_SEARCH])
    del spec["train_dataset_id"]
    response = api.submit(spec)
    assert_problem(response, 422, "invalid_request")
    assert "the search trains every trial on it" in response.text
