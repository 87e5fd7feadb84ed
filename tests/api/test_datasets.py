"""POST /v1/datasets and GET /v1/datasets/{id}: .npz data, never unpickled, never inflated."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tests.api.conftest import Api, ApiFactory, assert_problem, write_npz
from tests.factories import MkdirOnUnpickle

NOTHING = {"models": 0, "datasets": 0, "jobs": 0, "job_events": 0}


def test_dataset_upload_answers_201_with_its_arrays(api: Api, dataset_file: Path) -> None:
    response = api.upload_dataset(dataset_file)

    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/datasets/{body['id']}"
    assert body["sha256"] == hashlib.sha256(dataset_file.read_bytes()).hexdigest()
    assert body["info"]["samples"] == 64
    assert body["info"]["arrays"] == {
        "input": {"shape": [64, 1, 8, 8], "dtype": "float32"},
        "label": {"shape": [64], "dtype": "int64"},
    }
    assert [path.name for path in api.stored_files()] == [body["sha256"]]


def test_uploaded_dataset_can_be_read_back(api: Api, dataset_file: Path) -> None:
    created = api.upload_dataset(dataset_file).json()

    response = api.client.get(f"/v1/datasets/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created


def test_unknown_dataset_is_a_404_problem(api: Api) -> None:
    assert_problem(api.client.get("/v1/datasets/ds_missing"), 404, "not_found")


def test_an_npz_that_needs_pickle_is_refused_without_unpickling(api: Api, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    objects = np.array([MkdirOnUnpickle(marker), 1], dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, input=objects, allow_pickle=True)

    response = api.upload_dataset(path)

    assert_problem(response, 422, "pickle_refused")
    assert not marker.exists()
    assert api.snapshot() == ([], NOTHING)


def test_an_npz_zip_bomb_beyond_the_cap_is_refused_unread(
    make_api: ApiFactory, tmp_path: Path
) -> None:
    api = make_api(max_dataset_uncompressed_bytes=1024 * 1024)
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, input=np.zeros((64, 1024, 1024), dtype=np.uint8))  # 64 MiB
    assert path.stat().st_size < 1024 * 1024

    response = api.upload_dataset(path)

    assert_problem(response, 422, "dataset_too_large")
    assert api.snapshot() == ([], NOTHING)


def test_a_file_that_is_not_an_npz_is_refused(api: Api, model_file: Path) -> None:
    response = api.upload("/v1/datasets", model_file.read_bytes(), "data.npz")

    assert_problem(response, 422, "invalid_dataset")
    assert api.snapshot() == ([], NOTHING)


def test_arrays_disagreeing_on_axis_0_are_stored_and_judged_by_the_job_spec(
    api: Api, model_file: Path, tmp_path: Path
) -> None:
    # a streaming model's state is [layers, batch, hidden]: axis 0 is not always the
    # samples, so the upload records no count and the job's bindings decide
    path = write_npz(
        tmp_path / "ragged.npz",
        input=np.zeros((8, 1, 8, 8), np.float32),
        label=np.zeros(7, np.int64),
    )
    response = api.upload_dataset(path)
    assert response.status_code == 201, response.text
    assert response.json()["info"]["samples"] is None

    spec = {
        "model_id": api.model_id(model_file),
        "eval_dataset_id": response.json()["id"],
        "steps": [{"method": "quantize", "mode": "dynamic"}],
    }
    body = assert_problem(api.submit(spec), 422, "incompatible_data")
    assert "labels 'label' hold 7 samples (axis 0), the inputs 8" in body["detail"]


def test_same_dataset_uploaded_twice_answers_the_first_record_and_stores_it_once(
    api: Api, dataset_file: Path
) -> None:
    first = api.upload_dataset(dataset_file)
    second = api.upload_dataset(dataset_file, name="again.npz")

    assert first.status_code == 201 and second.status_code == 200, second.text
    assert second.json()["reused"] is True and second.json()["id"] == first.json()["id"]
    assert len(api.stored_files()) == 1 and api.row_counts()["datasets"] == 1
    sha256 = first.json()["sha256"]
    listed = api.client.get("/v1/datasets", params={"sha256": sha256}).json()["items"]
    assert [item["id"] for item in listed] == [first.json()["id"]]
