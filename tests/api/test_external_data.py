"""POST /v1/models with a model that keeps its weights as external data: one archive in.

Every hostile archive is refused with its own code, and leaves nothing behind: no blob,
no staging file, no extracted file, no row, and nothing written outside the data dir.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from tests.api.conftest import Api, ApiFactory, assert_problem
from tests.core.test_archive import (
    folder_files,
    link_member,
    save_with_external_data,
    tar_bytes,
    with_external_entries,
    zip_bytes,
)

NOTHING_STORED: tuple[list[Path], dict[str, int]] = (
    [],
    {"models": 0, "datasets": 0, "jobs": 0, "job_events": 0},
)


@pytest.fixture(scope="session")
def external_folder(model_file: Path, assets: Path) -> Path:
    """The digits CNN as model.onnx + weights.bin (every tensor external)."""
    return save_with_external_data(onnx.load(str(model_file)), assets / "digits-external").parent


@pytest.fixture(scope="session")
def external_files(external_folder: Path) -> dict[str, bytes]:
    return folder_files(external_folder)


def work_files(api: Api) -> list[Path]:
    return sorted(p for p in api.settings.work_dir.rglob("*"))


# --- accepted archives --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pack"),
    [
        ("digits.zip", lambda files: zip_bytes(files)),
        ("digits.tar.gz", lambda files: tar_bytes(files)),
        ("digits.tar", lambda files: tar_bytes(files, gz=False)),
    ],
)
def test_an_archive_of_a_model_and_its_external_data_is_stored_as_one_blob(
    api: Api,
    external_files: dict[str, bytes],
    model_file: Path,
    name: str,
    pack: Callable[[dict[str, bytes]], bytes],
) -> None:
    content = pack(external_files)

    response = api.upload("/v1/models", content, name)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["filename"] == name
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["size_bytes"] == len(content)
    assert [path.name for path in api.stored_files()] == [body["sha256"]]
    assert work_files(api) == []  # the extracted copy is gone


def test_the_info_of_an_archive_upload_describes_the_model_and_its_data(
    api: Api, external_files: dict[str, bytes], model_file: Path
) -> None:
    plain = api.upload_model(model_file).json()["info"]

    info = api.upload("/v1/models", zip_bytes(external_files), "digits.zip").json()["info"]

    assert info["external_data"] is True
    assert info["external_data_files"] == ["weights.bin"]
    assert info["external_data_bytes"] == len(external_files["weights.bin"])
    assert info["size_bytes"] == len(external_files["model.onnx"]) + len(
        external_files["weights.bin"]
    )
    same = ("inputs", "outputs", "opset", "parameters", "op_types", "node_count")
    assert {key: info[key] for key in same} == {key: plain[key] for key in same}
    assert plain["external_data"] is False


def test_an_archive_is_detected_by_its_bytes_whatever_its_name(
    api: Api, external_files: dict[str, bytes]
) -> None:
    response = api.upload("/v1/models", tar_bytes(external_files), "model.onnx")

    assert response.status_code == 201, response.text
    assert response.json()["info"]["external_data"] is True


def test_a_plain_onnx_with_external_data_is_refused_with_advice(
    api: Api, external_files: dict[str, bytes]
) -> None:
    response = api.upload("/v1/models", external_files["model.onnx"], "model.onnx")

    body = assert_problem(response, 422, "external_data_unsupported")
    assert ".zip" in body["detail"] and "archive" in body["detail"]
    assert api.snapshot() == NOTHING_STORED


# --- hostile archives: each refused with its code, nothing kept ---------------------------

Build = Callable[[dict[str, bytes], Path], bytes]


def _absolute_member(files: dict[str, bytes], outside: Path) -> bytes:
    return zip_bytes(files | {str(outside / "canary-absolute"): b"x"})


def _absolute_member_tar(files: dict[str, bytes], outside: Path) -> bytes:
    return tar_bytes(files | {str(outside / "canary-absolute"): b"x"})


def _parent_member(files: dict[str, bytes], outside: Path) -> bytes:
    return tar_bytes(files | {"../../../../../canary-parent": b"x"})


def _parent_member_zip(files: dict[str, bytes], outside: Path) -> bytes:
    return zip_bytes(files | {"sub/../../canary-parent": b"x"})


def _symlink_member(files: dict[str, bytes], outside: Path) -> bytes:
    # weights.bin as a link to a file outside: extracting it would let the model read it
    model_only = {"model.onnx": files["model.onnx"]}
    return tar_bytes(model_only, extra=[link_member("weights.bin", str(outside / "canary"))])


def _hardlink_member(files: dict[str, bytes], outside: Path) -> bytes:
    link = link_member("canary-hardlink", "../../../canary", tarfile.LNKTYPE)
    return tar_bytes(files, extra=[link])


def _zip_bomb(files: dict[str, bytes], outside: Path) -> bytes:
    # 16 MiB of zeros deflate to ~16 KiB: the archive expands ~800 times
    return zip_bytes({"model.onnx": files["model.onnx"], "weights.bin": bytes(16 * 1024**2)})


def _too_many_members(files: dict[str, bytes], outside: Path) -> bytes:
    return zip_bytes(files | {f"notes/{i}.txt": b"" for i in range(8)})


def _too_many_members_tar(files: dict[str, bytes], outside: Path) -> bytes:
    return tar_bytes(files | {f"notes/{i}.txt": b"" for i in range(8)})


def _too_large(files: dict[str, bytes], outside: Path) -> bytes:
    return tar_bytes(files | {"extra.bin": bytes(64 * 1024)})


def _two_models(files: dict[str, bytes], outside: Path) -> bytes:
    return zip_bytes(files | {"other/model.onnx": files["model.onnx"]})


def _no_model(files: dict[str, bytes], outside: Path) -> bytes:
    return zip_bytes({"weights.bin": files["weights.bin"]})


def _model_reading(**entries: str) -> Build:
    def build(files: dict[str, bytes], outside: Path) -> bytes:
        (outside / "secret").write_bytes(bytes(len(files["weights.bin"])))
        model = with_external_entries(files["model.onnx"], **entries)
        return zip_bytes(files | {"model.onnx": model})

    return build


def _duplicate_names(files: dict[str, bytes], outside: Path) -> bytes:
    buffer = io.BytesIO()
    with pytest.warns(UserWarning), zipfile.ZipFile(buffer, "w") as archive:
        for name, content in [*files.items(), ("weights.bin", b"\0" * 16)]:
            archive.writestr(name, content)
    return buffer.getvalue()


HOSTILE = [
    pytest.param(_absolute_member, "unsafe_archive", {}, id="absolute member (zip)"),
    pytest.param(_absolute_member_tar, "unsafe_archive", {}, id="absolute member (tar)"),
    pytest.param(_parent_member, "unsafe_archive", {}, id="../ member (tar.gz)"),
    pytest.param(_parent_member_zip, "unsafe_archive", {}, id="../ member (zip)"),
    pytest.param(_symlink_member, "unsafe_archive", {}, id="symlink member (tar)"),
    pytest.param(_hardlink_member, "unsafe_archive", {}, id="hardlink member (tar)"),
    pytest.param(_duplicate_names, "unsafe_archive", {}, id="duplicate names (zip)"),
    pytest.param(_zip_bomb, "archive_ratio_too_high", {}, id="zip bomb"),
    pytest.param(
        _too_many_members,
        "archive_too_many_members",
        {"max_model_archive_members": 4},
        id="too many members (zip)",
    ),
    pytest.param(
        _too_many_members_tar,
        "archive_too_many_members",
        {"max_model_archive_members": 4},
        id="too many members (tar)",
    ),
    pytest.param(
        _too_large,
        "archive_too_large",
        {"max_model_uncompressed_bytes": 60_000},
        id="too large uncompressed",
    ),
    pytest.param(_two_models, "archive_with_several_models", {}, id="two .onnx files"),
    pytest.param(_no_model, "archive_without_model", {}, id="no .onnx file"),
    pytest.param(
        _model_reading(location="../secret"),
        "external_data_outside_upload",
        {},
        id="location ../secret",
    ),
    pytest.param(
        _model_reading(location="/etc/passwd"),
        "external_data_outside_upload",
        {},
        id="location /etc/passwd",
    ),
    pytest.param(
        _model_reading(location="elsewhere.bin"), "external_data_missing", {}, id="location missing"
    ),
    pytest.param(
        _model_reading(offset=str(10**9)),
        "external_data_out_of_range",
        {},
        id="offset beyond the end",
    ),
]


@pytest.mark.parametrize(("build", "code", "overrides"), HOSTILE)
def test_a_hostile_archive_is_refused_and_nothing_is_kept(
    make_api: ApiFactory,
    tmp_path: Path,
    external_files: dict[str, bytes],
    build: Build,
    code: str,
    overrides: dict[str, Any],
) -> None:
    api = make_api(**overrides)
    outside = tmp_path / "outside"
    outside.mkdir()
    content = build(external_files, outside)

    response = api.upload("/v1/models", content, "model.zip")

    assert_problem(response, 422, code)
    assert api.snapshot() == NOTHING_STORED
    assert work_files(api) == []
    assert not list(tmp_path.rglob("canary*"))
    assert not Path("/canary-absolute").exists()
