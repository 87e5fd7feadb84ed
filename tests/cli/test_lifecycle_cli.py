"""`squeeze models`, `squeeze datasets` and `squeeze delete` against a real service."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Live
from tests.factories import distinct_copy

EXIT_OK, EXIT_ERROR = 0, 2


def upload(live: Live, *paths: Path) -> list[str]:
    code, out, err = live.run("upload", *map(str, paths), "--json")
    assert code == EXIT_OK, err
    return [row["id"] for row in json.loads(out)]


def test_models_and_datasets_are_listed_newest_first(
    live: Live, data_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model_path, data_path = data_files
    # other bytes for the second: the same file again would be reused as the first
    second = distinct_copy(model_path, tmp_path / model_path.name, "newer")
    older, newer = upload(live, model_path, second)
    (dataset_id,) = upload(live, data_path)

    code, out, _ = live.run("models", "--json")
    ids = [row["id"] for row in json.loads(out)]
    assert code == EXIT_OK and ids.index(newer) < ids.index(older)
    code, out, _ = live.run("models", "--limit", "1")
    assert code == EXIT_OK and newer in out and older not in out
    assert out.splitlines()[0].split() == ["id", "file", "size", "created", "sha256"]
    code, out, _ = live.run("datasets", "--name", data_path.stem.upper(), "--all")
    assert code == EXIT_OK and dataset_id in out
    code, out, _ = live.run("datasets", "--since", "2999-01-01", "--json")
    assert code == EXIT_OK and json.loads(out) == []


def test_delete_removes_models_and_datasets(live: Live, data_files: tuple[Path, Path]) -> None:
    model_id, dataset_id = upload(live, *data_files)
    code, out, err = live.run("delete", model_id, dataset_id)
    assert code == EXIT_OK, err
    assert out.splitlines() == [f"deleted model {model_id}", f"deleted dataset {dataset_id}"]
    code, out, _ = live.run("models", "--json")
    assert code == EXIT_OK and model_id not in out
    code, _, err = live.run("delete", model_id)
    assert code == EXIT_ERROR and "not_found (404)" in err


def test_delete_removes_a_finished_job(
    live: Live, data_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = data_files
    code, out, err = live.run(
        "quantize", str(model), "--mode", "dynamic", "--eval", str(data), "--allow-slower",
        "-o", str(tmp_path / "q.onnx"), "--json",
    )  # fmt: skip
    job_id = json.loads(out)["id"]
    assert code == EXIT_OK, err
    code, out, err = live.run("delete", job_id, "--json")
    assert code == EXIT_OK, err
    assert json.loads(out) == {"deleted": [{"id": job_id, "kind": "job"}]}
    code, _, err = live.run("status", job_id)
    assert code == EXIT_ERROR and "not_found" in err


def test_delete_explains_why_an_input_in_use_stays(
    live: Live, data_files: tuple[Path, Path]
) -> None:
    model, data = data_files
    # a GPU job: this service's inline worker serves the CPU queue only, so it stays queued
    code, out, err = live.run(
        "quantize", str(model), "--mode", "dynamic", "--eval", str(data), "--device", "cuda",
        "--detach", "--json",
    )  # fmt: skip
    assert code == EXIT_OK, err
    job = json.loads(out)
    code, _, err = live.run("delete", job["spec"]["model_id"])
    assert code == EXIT_ERROR and "in_use (409)" in err and job["id"] in err
    code, _, err = live.run("delete", job["id"])
    assert code == EXIT_ERROR and "job_active (409)" in err and "cancel it first" in err
    assert live.run("cancel", job["id"])[0] == EXIT_OK
    assert live.run("delete", job["id"], job["spec"]["model_id"])[0] == EXIT_OK


def test_an_id_of_no_known_kind_is_a_usage_error(live: Live) -> None:
    code, _, err = live.run("delete", "bat_123")
    assert code == EXIT_ERROR and "not a model, dataset or job id" in err
