"""inspect_dataset / load_arrays: .npz uploads are described from headers, refused when unsafe."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.data import inspect_dataset, load_arrays
from core.errors import InvalidDataset
from tests.factories import MkdirOnUnpickle

CAP = 64 * 1024 * 1024


def test_describes_a_valid_npz(digits_test_npz: Path) -> None:
    info = inspect_dataset(digits_test_npz, CAP)

    assert info.samples == 450
    assert info.arrays["input"].shape == [450, 1, 8, 8]
    assert info.arrays["input"].dtype == "float32"
    assert info.arrays["label"].shape == [450]
    assert info.arrays["label"].dtype == "int64"


def test_reads_compressed_npz(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    np.savez_compressed(path, x=np.arange(12, dtype=np.float64).reshape(6, 2))
    info = inspect_dataset(path, CAP)
    assert info.samples == 6
    assert info.arrays["x"].dtype == "float64"
    np.testing.assert_array_equal(load_arrays(path)["x"], np.arange(12).reshape(6, 2))


def test_refuses_object_arrays_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "objects.npz"
    objects = np.empty(2, dtype=object)
    objects[:] = [MkdirOnUnpickle(marker), MkdirOnUnpickle(marker)]
    np.savez(path, input=objects)

    with pytest.raises(InvalidDataset, match="pickle") as raised:
        inspect_dataset(path, CAP)
    assert raised.value.code == "pickle_refused"
    with pytest.raises(InvalidDataset, match="pickle"):
        load_arrays(path)
    assert not marker.exists()


def test_arrays_disagreeing_on_axis_0_record_no_sample_count(tmp_path: Path) -> None:
    # a recurrent state is [layers, batch, hidden]: the job's bindings say where the
    # samples are, and check_compatible judges them at submission
    path = tmp_path / "mismatch.npz"
    np.savez(path, input=np.zeros((10, 3), np.float32), state=np.zeros((2, 10, 4), np.float32))
    info = inspect_dataset(path, CAP)
    assert info.samples is None
    assert info.arrays["state"].shape == [2, 10, 4]


def test_refuses_archives_declaring_more_than_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, input=np.zeros((4096, 1024), np.float32))  # 16 MiB of zeros
    assert path.stat().st_size < 100_000  # compresses to almost nothing

    with pytest.raises(InvalidDataset, match="above the limit") as raised:
        inspect_dataset(path, max_uncompressed_bytes=1024 * 1024)
    assert raised.value.code == "dataset_too_large"
    assert inspect_dataset(path, max_uncompressed_bytes=CAP).samples == 4096


def test_refuses_a_file_that_is_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidDataset, match=r"not an \.npz"):
        inspect_dataset(path, CAP)


def test_names_a_bare_npy_file(tmp_path: Path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(InvalidDataset, match=r"single \.npy"):
        inspect_dataset(path, CAP)


def test_refuses_an_empty_archive(tmp_path: Path) -> None:
    path = tmp_path / "empty.npz"
    with zipfile.ZipFile(path, "w"):
        pass
    with pytest.raises(InvalidDataset, match="empty"):
        inspect_dataset(path, CAP)


def test_refuses_zero_dimensional_arrays(tmp_path: Path) -> None:
    path = tmp_path / "scalar.npz"
    np.savez(path, input=np.float32(1.0))
    with pytest.raises(InvalidDataset, match="0-dimensional"):
        inspect_dataset(path, CAP)


def test_refuses_members_that_are_not_arrays(tmp_path: Path) -> None:
    path = tmp_path / "extra.npz"
    np.savez(path, input=np.zeros((2, 2), np.float32))
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("../../evil.sh", "echo hi")
    with pytest.raises(InvalidDataset, match="unexpected member"):
        inspect_dataset(path, CAP)


def test_refuses_an_array_whose_header_lies_about_its_size(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros(100, np.float32))
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("input.npy", buffer.getvalue()[:-40])  # drop 10 of 100 floats
    with pytest.raises(InvalidDataset, match="holds 360 bytes"):
        inspect_dataset(path, CAP)


def test_refuses_string_arrays(tmp_path: Path) -> None:
    path = tmp_path / "strings.npz"
    np.savez(path, input=np.array(["a", "b"]))
    with pytest.raises(InvalidDataset, match="only bool, integer and float"):
        inspect_dataset(path, CAP)


def test_refuses_a_corrupted_member(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.npz"
    np.savez(path, input=np.arange(1000, dtype=np.float32))
    raw = bytearray(path.read_bytes())
    raw[1500] ^= 0xFF  # inside the array's data; the zip's CRC no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidDataset, match="corrupt"):
        inspect_dataset(path, CAP)


def test_refuses_a_zip_hidden_behind_other_bytes(tmp_path: Path) -> None:
    inner = tmp_path / "inner.npz"
    np.savez(inner, input=np.zeros((2, 2), np.float32))
    path = tmp_path / "polyglot.npz"
    path.write_bytes(b"#!/bin/sh\necho hi\n" + inner.read_bytes())
    assert zipfile.is_zipfile(path)
    with pytest.raises(InvalidDataset, match=r"not an \.npz"):
        inspect_dataset(path, CAP)
