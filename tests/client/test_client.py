"""The Python client against the real app: typed results for every endpoint, problems
raised as SqueezeError, uploads and downloads streamed with progress."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from service.examples import DigitsCNN
from squeeze.client import Client, SqueezeError
from squeeze.client.models import Job, Model
from tests.api.conftest import Api
from tests.factories import distinct_copy
from worker.runner import JobRunner


def run_queued(api: Api, job: Job) -> None:
    """Run the job in-process, as a worker would."""
    services = api.client.app.state.services  # type: ignore[attr-defined]
    JobRunner(services.settings, services.sessions, services.blobs).run(job.id)


def spec(model: Model, dataset_id: str) -> dict[str, object]:
    return {
        "model_id": model.id,
        "eval_dataset_id": dataset_id,
        "steps": [{"method": "quantize", "mode": "dynamic"}],
    }


def test_uploads_stream_from_disk_with_progress(
    client: Client, model_file: Path, dataset_file: Path
) -> None:
    seen: list[tuple[int, int | None]] = []
    model = client.upload_model(model_file, progress=lambda done, total: seen.append((done, total)))

    size = model_file.stat().st_size
    assert model.size_bytes == size and model.info["inputs"][0]["name"] == "input"
    assert seen[-1] == (size, size)
    assert len(seen) > 1  # chunks, not one read of the whole file
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert client.get_model(model.id) == model
    dataset = client.upload_dataset(dataset_file)
    assert dataset.info["samples"] == 64
    assert client.get_dataset(dataset.id).sha256 == dataset.sha256


def test_a_file_the_account_already_holds_is_not_sent_again(
    client: Client, model_file: Path, dataset_file: Path
) -> None:
    first = client.upload_model(model_file)
    seen: list[int] = []

    again = client.upload_model(model_file, progress=lambda done, _: seen.append(done))

    assert again.reused and not first.reused
    assert again.id == first.id and seen == []  # found by sha256: no byte sent
    # without the look-up, the service itself answers the earlier record
    sent = client.upload_model(model_file, reuse=False, progress=lambda d, _: seen.append(d))
    assert sent.reused and sent.id == first.id and seen[-1] == model_file.stat().st_size
    dataset = client.upload_dataset(dataset_file)
    assert client.upload_dataset(dataset_file).id == dataset.id
    assert [m.id for m in client.list_models().items] == [first.id]


def test_a_job_submitted_waited_for_and_downloaded(
    api: Api, client: Client, model_file: Path, dataset_file: Path, tmp_path: Path
) -> None:
    model = client.upload_model(model_file)
    job = client.submit_job(spec(model, client.upload_dataset(dataset_file).id))
    assert job.state == "queued" and not job.is_final
    run_queued(api, job)

    finished = client.wait(job, timeout_s=5)
    assert finished.state == "succeeded" and finished.result is not None
    assert finished.targets_met == finished.result.verdict.targets_met
    assert finished.result.original.latency_at(1) is not None
    assert [j.id for j in client.list_jobs().items] == [job.id]
    assert [j.id for j in client.iter_jobs(state="succeeded", page_size=1)] == [job.id]
    kinds = [event.kind for event in client.iter_events(job)]
    assert kinds[0] == "created" and kinds[-1] == "succeeded"
    names = {artifact.name for artifact in client.list_artifacts(job)}
    assert {"model.onnx", "report.json", "manifest.json"} <= names

    seen: list[int] = []
    path = client.download_model(job, tmp_path, progress=lambda done, _: seen.append(done))
    assert path == tmp_path / "model.onnx"
    assert seen[-1] == path.stat().st_size
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    report = client.download_artifact(job, "report.json", tmp_path / "r.json")
    assert report.read_bytes().startswith(b"{")
    assert not list(tmp_path.glob("*.part"))


def test_problems_are_raised_with_status_code_and_detail(
    client: Client, model_file: Path
) -> None:
    with pytest.raises(SqueezeError) as missing:
        client.get_job("job_missing")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert "job_missing" in missing.value.detail
    model = client.upload_model(model_file)
    with pytest.raises(SqueezeError) as unknown:
        client.submit_job(spec(model, "ds_missing"))
    assert (unknown.value.status, unknown.value.code) == (422, "unknown_dataset")
    assert unknown.value.problem["type"].endswith("unknown_dataset")
    with pytest.raises(SqueezeError) as refused:
        client.create_tenant("not an admin")
    assert (refused.value.status, refused.value.code) == (403, "forbidden")


def test_cancel_and_a_replayed_submission(
    client: Client, model_file: Path, dataset_file: Path
) -> None:
    job_spec = spec(client.upload_model(model_file), client.upload_dataset(dataset_file).id)
    first = client.submit_job(job_spec, idempotency_key="same")
    assert client.submit_job(job_spec, idempotency_key="same").id == first.id
    assert client.cancel_job(first).state == "cancelled"
    with pytest.raises(SqueezeError) as again:
        client.cancel_job(first.id)
    assert again.value.code == "job_already_final"


def test_account_keys_tenants_and_webhook_secrets(admin: Client, client: Client) -> None:
    account = client.account()
    assert not account.is_admin and account.tenant.name == "client-tests"
    created = client.create_api_key("ci")
    assert created.token.startswith("sqz_") and created.webhook_secret.startswith("whsec_")
    assert created.id in {key.id for key in client.list_api_keys()}
    rotated = client.rotate_webhook_secret(created.id)
    assert rotated.webhook_secret not in (created.webhook_secret, "")
    assert client.revoke_api_key(created.id).revoked_at is not None
    tenant = admin.create_tenant("quota", quota_concurrent_jobs=2)
    assert admin.get_tenant(tenant.id).quotas.concurrent_jobs == 2
    assert admin.account().is_admin


def test_a_batch_through_the_client(
    client: Client, model_file: Path, dataset_file: Path, tmp_path: Path
) -> None:
    copies = [distinct_copy(model_file, tmp_path / f"m{n}.onnx", str(n)) for n in range(2)]
    models = [client.upload_model(copy).id for copy in copies]
    dataset_id = client.upload_dataset(dataset_file).id
    batch = client.submit_batch(
        models, {"eval_dataset_id": dataset_id, "steps": [{"method": "quantize"}]}
    )
    assert [job.model_id for job in batch.jobs] == models
    for job in batch.jobs:
        client.cancel_job(job.id)
    done = client.wait_batch(batch, timeout_s=5)
    assert done.is_final and done.counts["cancelled"] == 2
    assert [b.id for b in client.list_batches().items] == [batch.id]


def test_a_torch_module_is_exported_to_onnx_and_uploaded(client: Client) -> None:
    torch.manual_seed(0)
    module = DigitsCNN(width=8, hidden=16)
    model = client.upload_torch(module, torch.zeros(1, 1, 8, 8), output_name="logits")
    assert [i["name"] for i in model.info["inputs"]] == ["input"]
    assert [o["name"] for o in model.info["outputs"]] == ["logits"]
    assert model.info["parameters"] == sum(p.numel() for p in module.parameters())
