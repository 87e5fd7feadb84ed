"""POST /v1/models and GET /v1/models/{id}: validated uploads, and nothing kept on failure."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from tests.api.conftest import Api, assert_problem


def test_model_upload_answers_201_with_location_and_the_stored_file(
    api: Api, model_file: Path
) -> None:
    response = api.upload_model(model_file)

    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/models/{body['id']}"
    assert body["filename"] == "digits.onnx"
    assert body["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert body["size_bytes"] == model_file.stat().st_size
    assert [path.name for path in api.stored_files()] == [body["sha256"]]


def test_model_upload_describes_inputs_outputs_opset_and_parameters(
    api: Api, model_file: Path, digits_cnn: torch.nn.Module
) -> None:
    info = api.upload_model(model_file).json()["info"]

    assert info["format"] == "onnx"
    assert info["opset"] == 17
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert [output["name"] for output in info["outputs"]] == ["logits"]
    assert info["parameters"] == sum(p.numel() for p in digits_cnn.parameters())


def test_uploaded_model_can_be_read_back(api: Api, model_file: Path) -> None:
    created = api.upload_model(model_file).json()

    response = api.client.get(f"/v1/models/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created


def test_unknown_model_is_a_404_problem(api: Api) -> None:
    assert_problem(api.client.get("/v1/models/mdl_missing"), 404, "not_found")


def test_same_model_uploaded_twice_answers_the_first_record_and_stores_it_once(
    api: Api, model_file: Path
) -> None:
    first = api.upload_model(model_file)
    second = api.upload_model(model_file, name="renamed.onnx")

    assert first.status_code == 201 and first.json()["reused"] is False
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["reused"] is True
    assert {**body, "reused": False} == first.json()  # the earlier record, its name kept
    assert second.headers["location"] == f"/v1/models/{body['id']}"
    assert len(api.stored_files()) == 1  # the second copy's staging file was dropped
    assert api.row_counts()["models"] == 1
    usage = api.client.get("/v1/account").json()["tenant"]["usage"]["storage_bytes"]
    assert usage == model_file.stat().st_size


def test_a_model_can_be_looked_up_by_sha256_before_uploading(
    api: Api, model_file: Path
) -> None:
    sha256 = hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert api.client.get("/v1/models", params={"sha256": sha256}).json()["items"] == []
    created = api.upload_model(model_file).json()

    found = api.client.get("/v1/models", params={"sha256": sha256.upper()}).json()["items"]

    assert [item["id"] for item in found] == [created["id"]]
    assert_problem(api.client.get("/v1/models", params={"sha256": "abc"}), 422, "invalid_request")


def test_a_record_whose_bytes_are_gone_is_made_whole_by_the_next_upload(
    api: Api, model_file: Path
) -> None:
    """Reuse must not hand back a record whose blob was lost (collected, or another store):
    every job naming it would fail `input_missing`."""
    first = api.upload_model(model_file).json()
    sha256 = hashlib.sha256(model_file.read_bytes()).hexdigest()
    blobs = api.client.app.state.services.blobs  # type: ignore[attr-defined]
    assert blobs.delete(sha256)

    # asked first, the service says it does not hold these bytes any more
    assert api.client.get("/v1/models", params={"sha256": sha256}).json()["items"] == []
    again = api.upload_model(model_file)

    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert blobs.exists(sha256)


def test_another_tenant_s_identical_model_is_not_reused(api: Api, model_file: Path) -> None:
    mine = api.upload_model(model_file).json()
    theirs = api.tenant("other").upload_model(model_file)

    assert theirs.status_code == 201 and theirs.json()["id"] != mine["id"]
    assert theirs.json()["reused"] is False


def test_a_model_s_bytes_uploaded_as_a_dataset_are_not_a_reused_model(
    api: Api, model_file: Path
) -> None:
    api.upload_model(model_file)
    # reuse is per kind: the same bytes as a dataset are validated (and refused) as one
    refused = api.upload_dataset(model_file)
    assert refused.status_code == 422 and refused.json()["title"] == "Invalid dataset"


def test_client_directory_names_are_stripped_from_the_filename(api: Api, model_file: Path) -> None:
    response = api.upload_model(model_file, name="../../etc/evil.onnx")

    assert response.json()["filename"] == "evil.onnx"


def test_a_file_that_is_not_onnx_is_refused_and_nothing_is_kept(api: Api) -> None:
    response = api.upload("/v1/models", b"PK\x03\x04 this is a zip, not a model", "model.onnx")

    assert_problem(response, 422, "invalid_model")
    assert api.snapshot() == ([], {"models": 0, "datasets": 0, "jobs": 0, "job_events": 0})


def test_a_truncated_onnx_file_is_refused_and_nothing_is_kept(api: Api, model_file: Path) -> None:
    content = model_file.read_bytes()

    response = api.upload("/v1/models", content[: len(content) // 2], "model.onnx")

    assert_problem(response, 422, "invalid_model")
    assert api.stored_files() == []
    assert api.row_counts()["models"] == 0


def test_an_empty_file_is_refused(api: Api) -> None:
    assert_problem(api.upload("/v1/models", b"", "model.onnx"), 422, "invalid_model")
    assert api.stored_files() == []


def test_a_body_that_is_not_multipart_is_a_415_problem(api: Api, model_file: Path) -> None:
    response = api.client.post(
        "/v1/models",
        content=model_file.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    )

    assert_problem(response, 415, "unsupported_media_type")
    assert api.stored_files() == []


def test_multipart_without_a_file_part_is_refused(api: Api) -> None:
    response = api.client.post("/v1/models", files={"model": ("m.onnx", b"x")})

    assert_problem(response, 422, "invalid_upload")
    assert api.stored_files() == []


def test_multipart_with_an_extra_field_is_refused_and_nothing_is_kept(
    api: Api, model_file: Path
) -> None:
    response = api.client.post(
        "/v1/models",
        files={"file": ("m.onnx", model_file.read_bytes())},
        data={"comment": "hello"},
    )

    assert_problem(response, 422, "invalid_upload")
    assert api.snapshot() == ([], {"models": 0, "datasets": 0, "jobs": 0, "job_events": 0})


def test_multipart_cut_before_its_closing_boundary_is_refused(api: Api, model_file: Path) -> None:
    boundary = "cut-short"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + model_file.read_bytes()

    response = api.client.post(
        "/v1/models",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )

    assert_problem(response, 422, "invalid_upload")
    assert api.stored_files() == []
