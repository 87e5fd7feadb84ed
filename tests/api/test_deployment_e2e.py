"""One job, two deployment targets, through REST: both models downloadable (ONNX and
OpenVINO IR), each with its verdict in the record and the report; a target no live worker
can run is refused at submission."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.api.conftest import Api, ApiFactory, Uploaded, assert_problem
from tests.api.test_quantize_modes_e2e import digits_job_spec, run_job_through_api
from tests.api.test_workers import register
from tests.factories import digits_arrays

FAIR = {"threads": [1], "runtime_defaults": False}


def test_a_job_naming_onnxruntime_and_openvino_returns_both_models_with_their_verdicts(
    make_api: ApiFactory, model_file: Path, tmp_path: Path
) -> None:
    api = make_api(measure_runs=3, measure_warmup_runs=1)
    spec = digits_job_spec(
        api, model_file, tmp_path, [{"method": "quantize", "mode": "static"}]
    ) | {
        "deployment": [{"runtime": "onnxruntime", **FAIR}, {"runtime": "openvino", **FAIR}],
    }
    spec["calibration_dataset_id"] = spec.pop("train_dataset_id")

    job = run_job_through_api(api, spec)

    assert job["state"] == "succeeded", job["error"]
    ort, ov = job["result"]["targets"]
    assert (ort["name"], ov["name"]) == ("onnxruntime-cpu", "openvino-cpu")
    for target in (ort, ov):
        assert target["verdict"]["outcome"] in ("improved", "unchanged", "targets_missed")
        assert target["final"]["metric_rows"] == job["result"]["evaluation"]["held_out_rows"]
    listed = {a["name"] for a in api.client.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"]}
    assert set(ov["artifacts"]) <= listed and "model.onnx" in listed
    if ov["chosen"] != "openvino-original":
        import openvino as ov_runtime

        xml = api.client.get(f"/v1/jobs/{job['id']}/artifacts/model.openvino-cpu.xml")
        binary = api.client.get(f"/v1/jobs/{job['id']}/artifacts/model.openvino-cpu.bin")
        assert xml.status_code == binary.status_code == 200
        folder = tmp_path / "ir"
        folder.mkdir()
        (folder / "model.openvino-cpu.xml").write_bytes(xml.content)
        (folder / "model.openvino-cpu.bin").write_bytes(binary.content)
        compiled = ov_runtime.Core().compile_model(str(folder / "model.openvino-cpu.xml"), "CPU")
        images = digits_arrays("test")[0][:4]
        logits = compiled(images)[0]
        assert np.asarray(logits).shape == (4, 10)
    html = api.client.get(f"/v1/jobs/{job['id']}/report").text
    assert 'data-section="targets"' in html
    assert 'data-target="openvino-cpu"' in html and 'data-target="onnxruntime-cpu"' in html


def test_an_openvino_target_no_live_worker_runs_is_refused(
    make_api: ApiFactory, model_file: Path, dataset_file: Path
) -> None:
    api = make_api(absent_worker_policy="refuse")
    uploaded = Uploaded(api.model_id(model_file), api.dataset_id(dataset_file))
    register(api, api.settings.queue_cpu, ["cpu"])  # offers onnxruntime and openvino on cpu
    ok = api.submit(uploaded.spec(deployment=[{"runtime": "openvino"}]))
    assert ok.status_code == 202, ok.text

    cuda = api.submit(uploaded.spec(deployment=[{"runtime": "onnxruntime", "device": "cuda"}]))
    body = assert_problem(cuda, 422, "no_worker_for_target")
    assert "cuda" in body["detail"]


def test_an_openvino_target_on_cuda_is_refused_at_submission(api: Api, uploaded: Uploaded) -> None:
    response = api.submit(uploaded.spec(deployment=[{"runtime": "openvino", "device": "cuda"}]))
    assert_problem(response, 422, "invalid_request")
