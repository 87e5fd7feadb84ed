"""Model archives and external data: safe extraction, checked references, saving big models.

The archive builders at the top are shared with the API and worker tests.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.archive import (
    MAX_TAR_METADATA_BYTES,
    ArchiveLimits,
    archive_format,
    extract_model,
    inspect_upload,
    materialise_model,
    pack_model,
)
from core.errors import InvalidModel
from core.formats import (
    copy_model,
    external_data_refs,
    inspect_model,
    load_model,
    model_files,
    model_size_bytes,
    save_model,
    verify_external_data,
)

LIMITS = ArchiveLimits()

# --- builders (shared with tests/api and tests/worker) -------------------------------------


def save_with_external_data(
    model: onnx.ModelProto, folder: Path, location: str = "weights.bin"
) -> Path:
    """Save `model` as folder/model.onnx with every tensor in the file `location`."""
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by its path relative to it."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def zip_bytes(files: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in files.items():
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=compression)
    return buffer.getvalue()


def tar_bytes(
    files: dict[str, bytes], *, gz: bool = True, extra: Sequence[tarfile.TarInfo] = ()
) -> bytes:
    """A tar(.gz) of regular files, plus `extra` members (links, devices) with no data."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for info in extra:
            archive.addfile(info)
    return buffer.getvalue()


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def with_external_entries(model_bytes: bytes, **entries: str) -> bytes:
    """A serialised model with these external data entries (location, offset, ...) set on
    every external tensor."""
    model = onnx.load_from_string(model_bytes)
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        current = {entry.key: entry.value for entry in tensor.external_data}
        current.update(entries)
        del tensor.external_data[:]
        for key, value in current.items():
            tensor.external_data.add(key=key, value=value)
    return model.SerializeToString()


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# --- a tiny model ------------------------------------------------------------------------


def tiny_mlp(seed: int = 0, hidden: int = 64) -> onnx.ModelProto:
    """x (batch, 32) -> MatMul -> Add -> Relu -> MatMul -> y (batch, 8), random weights."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal((32, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((hidden, 8)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_model(path: Path, rows: int = 3) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((rows, 32)).astype(np.float32)
    return np.asarray(session.run(None, {"x": x})[0])


TINY_PARAMETERS = 32 * 64 + 64 + 64 * 8


@pytest.fixture
def external(tmp_path: Path) -> Path:
    """The tiny MLP saved as source/model.onnx + source/weights.bin."""
    return save_with_external_data(tiny_mlp(), tmp_path / "source")


@pytest.fixture
def expected(tmp_path: Path) -> np.ndarray:
    plain = tmp_path / "plain.onnx"
    onnx.save_model(tiny_mlp(), str(plain))
    return run_model(plain)


def refused(call: Callable[[], object], code: str) -> InvalidModel:
    with pytest.raises(InvalidModel) as raised:
        call()
    assert raised.value.code == code, raised.value.message
    return raised.value


# --- formats: external data beside the model ------------------------------------------------


def test_inspect_model_describes_external_data_and_counts_its_parameters(external: Path) -> None:
    info = inspect_model(external)

    data_bytes = (external.parent / "weights.bin").stat().st_size
    assert info.external_data is True
    assert info.external_data_files == ["weights.bin"]
    assert info.external_data_bytes == data_bytes == TINY_PARAMETERS * 4
    assert info.parameters == TINY_PARAMETERS
    assert info.size_bytes == external.stat().st_size + data_bytes


def test_a_self_contained_model_reports_no_external_data(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    onnx.save_model(tiny_mlp(), str(path))

    info = inspect_model(path, allow_external_data=False)

    assert (info.external_data, info.external_data_files, info.external_data_bytes) == (
        False,
        [],
        0,
    )
    assert info.size_bytes == path.stat().st_size


def test_refusing_external_data_does_not_look_for_it(external: Path) -> None:
    (external.parent / "weights.bin").unlink()

    error = refused(
        lambda: inspect_model(external, allow_external_data=False), "external_data_unsupported"
    )
    assert "archive" in error.message


@pytest.mark.parametrize(
    ("location", "code"),
    [
        ("../secret", "external_data_outside_upload"),
        ("/etc/passwd", "external_data_outside_upload"),
        ("sub/../../secret", "external_data_outside_upload"),
        ("weights\\..\\..\\secret", "external_data_outside_upload"),
        ("*/_ORT_MEM_ADDR_/*", "external_data_outside_upload"),  # ORT: a memory address
        ("", "external_data_outside_upload"),
        ("elsewhere.bin", "external_data_missing"),
    ],
)
def test_external_data_must_be_a_file_inside_the_models_folder(
    external: Path, location: str, code: str
) -> None:
    write(external.parent.parent / "secret", b"\0" * 10_000)
    write(external, with_external_entries(external.read_bytes(), location=location))

    refused(lambda: inspect_model(external), code)
    refused(lambda: load_model(external), code)


def test_external_data_behind_a_symbolic_link_is_refused(external: Path) -> None:
    data = external.parent / "weights.bin"
    outside = external.parent.parent / "real-weights.bin"
    data.rename(outside)
    os.symlink(outside, data)

    refused(lambda: inspect_model(external), "external_data_outside_upload")


def test_external_data_reads_must_stay_inside_the_file(external: Path) -> None:
    size = (external.parent / "weights.bin").stat().st_size
    write(external, with_external_entries(external.read_bytes(), offset=str(size + 4)))

    refused(lambda: inspect_model(external), "external_data_out_of_range")


def test_external_data_length_must_match_the_tensor(external: Path) -> None:
    write(external, with_external_entries(external.read_bytes(), offset="0", length="8"))

    refused(lambda: inspect_model(external), "external_data_invalid")


def test_a_negative_offset_is_refused(external: Path) -> None:
    write(external, with_external_entries(external.read_bytes(), offset="-4"))

    refused(lambda: inspect_model(external), "external_data_invalid")


def test_load_model_returns_a_model_holding_its_data(external: Path, tmp_path: Path) -> None:
    model = load_model(external)

    assert external_data_refs(model) == []
    elsewhere = save_model(model, tmp_path / "elsewhere" / "model.onnx")
    assert model_files(elsewhere) == [elsewhere]


def test_save_model_over_the_single_file_limit_writes_external_data(
    external: Path, tmp_path: Path, expected: np.ndarray
) -> None:
    target = tmp_path / "big" / "model.onnx"
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "model.onnx.data").write_bytes(b"stale bytes")

    save_model(load_model(external), target, single_file_limit_bytes=1024)

    assert model_files(target) == [target, target.with_name("model.onnx.data")]
    assert model_size_bytes(target) > TINY_PARAMETERS * 4
    np.testing.assert_allclose(run_model(target), expected, rtol=1e-6)


def test_save_model_refuses_a_model_that_does_not_hold_its_data(external: Path) -> None:
    with pytest.raises(ValueError, match="load_model"):
        save_model(onnx.load(str(external), load_external_data=False), external.parent / "x.onnx")


def test_copy_model_takes_the_external_data_along(
    external: Path, tmp_path: Path, expected: np.ndarray
) -> None:
    copied = copy_model(external, tmp_path / "copy" / "final.onnx")

    assert sorted(p.name for p in copied.parent.iterdir()) == ["final.onnx", "weights.bin"]
    np.testing.assert_allclose(run_model(copied), expected, rtol=1e-6)


# --- archives: format, extraction, packing -------------------------------------------------


def test_archive_format_is_told_by_magic_bytes_not_names(external: Path, tmp_path: Path) -> None:
    files = folder_files(external.parent)

    assert archive_format(write(tmp_path / "a.onnx", zip_bytes(files))) == "zip"
    assert archive_format(write(tmp_path / "b.zip", tar_bytes(files))) == "tar.gz"
    assert archive_format(write(tmp_path / "c.gz", tar_bytes(files, gz=False))) == "tar"
    assert archive_format(external) is None
    assert archive_format(write(tmp_path / "empty", b"")) is None


@pytest.mark.parametrize("gz", [True, False])
def test_a_tar_made_from_a_folder_extracts_with_its_layout(
    external: Path, tmp_path: Path, expected: np.ndarray, gz: bool
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as archive:
        archive.add(external.parent, arcname=".")  # members "./", "./model.onnx", ...

    model_path = extract_model(
        write(tmp_path / "m.tar", buffer.getvalue()), tmp_path / "out", LIMITS
    )

    assert model_path == tmp_path / "out" / "model.onnx"
    np.testing.assert_allclose(run_model(model_path), expected, rtol=1e-6)


def test_data_files_in_subfolders_resolve_relative_to_the_model(
    tmp_path: Path, expected: np.ndarray
) -> None:
    source = save_with_external_data(tiny_mlp(), tmp_path / "src", location="data/all.bin")
    files = {f"mymodel/{name}": content for name, content in folder_files(source.parent).items()}

    model_path = extract_model(
        write(tmp_path / "m.zip", zip_bytes(files)), tmp_path / "out", LIMITS
    )

    assert model_path == tmp_path / "out" / "mymodel" / "model.onnx"
    assert (tmp_path / "out" / "mymodel" / "data" / "all.bin").is_file()
    np.testing.assert_allclose(run_model(model_path), expected, rtol=1e-6)


def test_only_the_model_and_its_data_are_written(external: Path, tmp_path: Path) -> None:
    files = folder_files(external.parent) | {
        "README.md": b"notes",
        "__MACOSX/._model.onnx": b"resource fork",
        "._model.onnx": b"AppleDouble",
    }

    extract_model(write(tmp_path / "m.zip", zip_bytes(files)), tmp_path / "out", LIMITS)

    assert sorted(folder_files(tmp_path / "out")) == ["model.onnx", "weights.bin"]


def test_pack_model_makes_an_archive_uploads_accept(
    external: Path, tmp_path: Path, expected: np.ndarray
) -> None:
    packed = pack_model(external, tmp_path / "model.zip")

    assert zipfile.ZipFile(packed).namelist() == ["model.onnx", "weights.bin"]
    info = inspect_upload(packed, tmp_path / "scratch", LIMITS)
    assert info.external_data_files == ["weights.bin"]
    assert list((tmp_path / "scratch").iterdir()) == []  # the temporary folder is gone
    extracted = extract_model(packed, tmp_path / "out", LIMITS)
    np.testing.assert_allclose(run_model(extracted), expected, rtol=1e-6)


def test_materialise_puts_a_plain_model_in_a_folder_of_its_own(tmp_path: Path) -> None:
    blob = tmp_path / "blobs" / "ab" / "abcdef"
    blob.parent.mkdir(parents=True)
    onnx.save_model(tiny_mlp(), str(blob))
    (blob.parent / "another-blob").write_bytes(b"someone else's upload")

    path = materialise_model(blob, tmp_path / "work" / "input", LIMITS)

    assert path == tmp_path / "work" / "input" / "model.onnx"
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]
    assert path.read_bytes() == blob.read_bytes()


# --- archives: hostile members, refused before anything is written ---------------------------


def hostile(tmp_path: Path, content: bytes, code: str, limits: ArchiveLimits = LIMITS) -> None:
    archive = write(tmp_path / "upload.bin", content)
    destination = tmp_path / "out"
    refused(lambda: extract_model(archive, destination, limits), code)
    assert not destination.exists()
    assert not list(tmp_path.parent.rglob("canary*"))


def test_a_symbolic_link_in_a_zip_is_refused(external: Path, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in folder_files(external.parent).items():
            archive.writestr(name, content)
        link = zipfile.ZipInfo("canary-link")
        link.create_system = 3
        link.external_attr = 0o120777 << 16  # S_IFLNK
        archive.writestr(link, "/etc/passwd")
    hostile(tmp_path, buffer.getvalue(), "unsafe_archive")


def test_a_device_in_a_tar_is_refused(external: Path, tmp_path: Path) -> None:
    device = tarfile.TarInfo("dev")
    device.type = tarfile.CHRTYPE
    content = tar_bytes(folder_files(external.parent), extra=[device])
    hostile(tmp_path, content, "unsafe_archive")


def test_duplicate_names_are_refused(external: Path, tmp_path: Path) -> None:
    files = folder_files(external.parent)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, pytest.warns(UserWarning, match="Duplicate"):
        for name, content in [*files.items(), ("./weights.bin", b"\0" * 16)]:
            archive.writestr(zipfile.ZipInfo(name.removeprefix("./")), content)
    hostile(tmp_path, buffer.getvalue(), "unsafe_archive")


def test_a_name_both_file_and_folder_is_refused(external: Path, tmp_path: Path) -> None:
    files = folder_files(external.parent) | {"x": b"file", "x/y": b"file below it"}
    hostile(tmp_path, zip_bytes(files), "unsafe_archive")


def test_an_oversized_pax_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    info = tarfile.TarInfo("model.onnx")
    info.pax_headers = {"comment": "x" * (MAX_TAR_METADATA_BYTES + 1)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(b""))
    hostile(tmp_path, buffer.getvalue(), "unsafe_archive")


def test_a_sparse_file_in_a_tar_is_refused(external: Path, tmp_path: Path) -> None:
    info = tarfile.TarInfo("weights.bin")
    info.size = 4
    # GNU sparse format 0.1: a regular member whose data expands to GNU.sparse.size bytes
    info.pax_headers = {"GNU.sparse.map": "0,4", "GNU.sparse.size": "1000000"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(b"data"))
    hostile(tmp_path, buffer.getvalue(), "unsafe_archive")


def test_an_encrypted_zip_member_is_refused(external: Path, tmp_path: Path) -> None:
    content = bytearray(zip_bytes(folder_files(external.parent)))
    entry = content.find(b"PK\x01\x02")  # the first central directory entry
    content[entry + 8] |= 0x1  # its "encrypted" flag
    hostile(tmp_path, bytes(content), "unsupported_archive")


def test_a_zip_directory_claiming_too_many_members_is_refused_unparsed(
    external: Path, tmp_path: Path
) -> None:
    files = folder_files(external.parent) | {f"extra{i}": b"" for i in range(3)}
    hostile(tmp_path, zip_bytes(files), "archive_too_many_members", ArchiveLimits(max_members=4))


def test_a_truncated_archive_is_an_invalid_model(external: Path, tmp_path: Path) -> None:
    content = tar_bytes(folder_files(external.parent))
    hostile(tmp_path, content[: len(content) // 2], "invalid_model")


def test_a_gzip_that_is_not_a_tar_is_an_invalid_model(tmp_path: Path) -> None:
    hostile(tmp_path, gzip.compress(tiny_mlp().SerializeToString()), "invalid_model")


def test_a_missing_data_file_is_named(external: Path, tmp_path: Path) -> None:
    files = {"model.onnx": external.read_bytes()}
    archive = write(tmp_path / "m.zip", zip_bytes(files))
    error = refused(
        lambda: extract_model(archive, tmp_path / "out", LIMITS), "external_data_missing"
    )
    assert "weights.bin" in error.message


def test_verify_external_data_lists_files_and_bytes(external: Path) -> None:
    model = onnx.load(str(external), load_external_data=False)

    found = verify_external_data(model, external.parent)

    assert (found.files, found.total_bytes) == (["weights.bin"], TINY_PARAMETERS * 4)
