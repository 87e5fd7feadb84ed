"""Datasets: `.npz` archives of named arrays, validated without trusting their contents.

An upload is inspected from its zip directory and `.npy` headers only: declared sizes are
summed against a cap before anything is decompressed (zip bombs), object arrays are
refused (they need pickle), and members are streamed in memory, never extracted to disk.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import numpy as np
from pydantic import BaseModel

from core.errors import IncompatibleData, InvalidDataset
from core.formats import ModelInfo, TensorInfo
from core.spec import TaskSpec

# Streaming chunk when verifying member data (CRC and length) without holding it.
_CHUNK_BYTES = 1 << 20
# Kinds the engine can feed to a model or score against: bool, ints, floats.
_NUMERIC_KINDS = frozenset("biuf")
# A zip starts with a local file header, or with the end record when it is empty.
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")

Arrays = Mapping[str, np.ndarray]
Feeds = dict[str, np.ndarray]


class ArrayInfo(BaseModel):
    shape: list[int]
    dtype: str


class DatasetInfo(BaseModel):
    arrays: dict[str, ArrayInfo]
    samples: int


def inspect_dataset(path: Path, max_uncompressed_bytes: int) -> DatasetInfo:
    """Validate an uploaded `.npz` and describe its arrays.

    Raises InvalidDataset when the file is not a zip-based .npz, is empty, declares more
    than `max_uncompressed_bytes` (code "dataset_too_large"), holds arrays that need
    pickle, non-numeric or 0-d arrays, corrupt members, or arrays whose first dimension
    (the sample count) differs.
    """
    # numpy.load picks the format from the first bytes, so a file must *start* as a zip:
    # is_zipfile alone also accepts a zip appended to some other file.
    if _magic(path) not in _ZIP_MAGICS or not zipfile.is_zipfile(path):
        raise InvalidDataset(_not_npz_message(path))
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if not members:
                raise InvalidDataset("the .npz archive is empty: it holds no arrays")
            # Declared sizes bound what zipfile will decompress (it stops at file_size and
            # fails on a mismatch), so checking them first defuses zip bombs.
            declared = sum(member.file_size for member in members)
            if declared > max_uncompressed_bytes:
                raise InvalidDataset(
                    f"the dataset declares {declared} bytes uncompressed, above the limit of "
                    f"{max_uncompressed_bytes} bytes",
                    code="dataset_too_large",
                )
            names = [_array_name(member) for member in members]
            if len(set(names)) != len(names):
                raise InvalidDataset("the .npz archive holds two members with the same name")
            arrays = {
                name: _inspect_member(archive, member)
                for name, member in zip(names, members, strict=True)
            }
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise InvalidDataset(f"the .npz archive is corrupt: {exc}") from exc
    except (RuntimeError, NotImplementedError) as exc:  # encrypted, unknown compression
        raise InvalidDataset(f"the .npz archive cannot be read: {exc}") from exc

    sample_counts = {name: info.shape[0] for name, info in arrays.items()}
    if len(set(sample_counts.values())) > 1:
        listed = ", ".join(f"{name}: {count}" for name, count in sample_counts.items())
        raise InvalidDataset(
            f"arrays disagree on the number of samples (first dimension): {listed}",
            code="inconsistent_samples",
        )
    samples = next(iter(sample_counts.values()))
    if samples == 0:
        raise InvalidDataset("the dataset has no samples (first dimension is 0)")
    return DatasetInfo(arrays=arrays, samples=samples)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Load every array of an `.npz` into memory, refusing anything that needs pickle."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as exc:  # numpy's message for object arrays under allow_pickle=False
        raise InvalidDataset(f"cannot load the dataset without pickle: {exc}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataset(f"cannot read the dataset: {exc}") from exc


def check_compatible(
    model: ModelInfo, dataset: DatasetInfo, task: TaskSpec, *, need_labels: bool = False
) -> None:
    """Raise IncompatibleData unless the dataset can feed the model and score the task.

    Every model input needs an array (named like the input, or mapped by task.inputs);
    array dims after the first must equal the model's fixed dims (symbolic or unknown
    dims match anything; dim 0 is the batch); dtypes must cast within their kind (float64
    to float32 is fine, float to int64 is not). Labels are required when `need_labels`
    and are checked whenever present; task.output must name a model output.
    """
    input_names = {tensor.name for tensor in model.inputs}
    unknown_mapped = sorted(set(task.inputs) - input_names)
    if unknown_mapped:
        raise IncompatibleData(
            f"task.inputs maps {unknown_mapped} but the model's inputs are {sorted(input_names)}"
        )
    for tensor in model.inputs:
        array_name = task.inputs.get(tensor.name, tensor.name)
        array = dataset.arrays.get(array_name)
        if array is None:
            raise IncompatibleData(
                f"model input {tensor.name!r} needs an array named {array_name!r}; the dataset "
                f"has {sorted(dataset.arrays)} (map names with task.inputs)"
            )
        _check_shape(tensor, array_name, array)
        _check_dtype(tensor, array_name, array)

    output_names = [tensor.name for tensor in model.outputs]
    if task.output is not None and task.output not in output_names:
        raise IncompatibleData(
            f"task.output {task.output!r} is not a model output; outputs are {output_names}"
        )

    labels = dataset.arrays.get(task.labels)
    if labels is None:
        if need_labels:
            raise IncompatibleData(
                f"the task needs labels in an array named {task.labels!r}; the dataset has "
                f"{sorted(dataset.arrays)}"
            )
        return
    if task.kind == "classification":
        if np.dtype(labels.dtype).kind not in "iu":
            raise IncompatibleData(
                f"classification labels {task.labels!r} must be integer class indices, "
                f"got {labels.dtype}"
            )
        if any(dim != 1 for dim in labels.shape[1:]):
            raise IncompatibleData(
                f"classification labels {task.labels!r} must hold one class per sample, "
                f"got shape {labels.shape}"
            )
    elif np.dtype(labels.dtype).kind not in _NUMERIC_KINDS:
        raise IncompatibleData(f"labels {task.labels!r} must be numeric, got {labels.dtype}")


def pinned_batch_size(inputs: list[TensorInfo]) -> int | None:
    """The batch size the inputs pin in dim 0, or None when it is free (symbolic/unknown)."""
    pinned = [
        tensor.shape[0]
        for tensor in inputs
        if tensor.shape and isinstance(tensor.shape[0], int) and tensor.shape[0] > 0
    ]
    return min(pinned) if pinned else None


def model_feeds(arrays: Arrays, inputs: list[TensorInfo], task: TaskSpec) -> Feeds:
    """The arrays feeding each model input, keyed by input name and cast to its dtype.

    Casting happens once here so batches are views, not copies per run.
    """
    feeds: Feeds = {}
    for tensor in inputs:
        array_name = task.inputs.get(tensor.name, tensor.name)
        if array_name not in arrays:
            raise IncompatibleData(
                f"model input {tensor.name!r} needs an array named {array_name!r}"
            )
        # ascontiguousarray also makes big-endian or Fortran-ordered arrays native.
        feeds[tensor.name] = np.ascontiguousarray(arrays[array_name], dtype=np.dtype(tensor.dtype))
    return feeds


def sample_count(feeds: Feeds) -> int:
    return len(next(iter(feeds.values())))


def iter_batches(feeds: Feeds, batch_size: int, limit: int | None = None) -> Iterator[Feeds]:
    """Consecutive batches of `batch_size` rows (the last may be shorter), up to `limit` rows."""
    total = sample_count(feeds) if limit is None else min(limit, sample_count(feeds))
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        yield {name: array[start:stop] for name, array in feeds.items()}


def take_rows(feeds: Feeds, rows: int) -> Feeds:
    """Exactly `rows` rows, repeating the data when it has fewer samples than that."""
    indices = np.arange(rows) % sample_count(feeds)
    return {name: np.ascontiguousarray(array[indices]) for name, array in feeds.items()}


def select_rows(feeds: Feeds, indices: np.ndarray) -> Feeds:
    return {name: array[indices] for name, array in feeds.items()}


def _check_shape(tensor: TensorInfo, array_name: str, array: ArrayInfo) -> None:
    if tensor.shape is None:  # rank unknown: the model takes anything
        return
    if len(tensor.shape) != len(array.shape):
        raise IncompatibleData(
            f"model input {tensor.name!r} has rank {len(tensor.shape)} "
            f"(shape {tensor.shape}) but array {array_name!r} has shape {array.shape}"
        )
    for axis, (want, have) in enumerate(zip(tensor.shape, array.shape, strict=True)):
        if axis == 0:
            continue  # the batch: the engine feeds it in chunks of the batch size it picks
        if isinstance(want, int) and want > 0 and want != have:
            raise IncompatibleData(
                f"model input {tensor.name!r} expects shape {tensor.shape} but array "
                f"{array_name!r} has shape {array.shape} (dim {axis}: {want} != {have})"
            )


def _check_dtype(tensor: TensorInfo, array_name: str, array: ArrayInfo) -> None:
    try:
        want = np.dtype(tensor.dtype)
    except TypeError as exc:
        raise IncompatibleData(
            f"model input {tensor.name!r} has type {tensor.dtype}, which .npz data cannot feed"
        ) from exc
    # same_kind allows float64 -> float32 and int -> float, and refuses float -> int,
    # which would silently truncate values.
    if want.kind not in _NUMERIC_KINDS or not np.can_cast(array.dtype, want, casting="same_kind"):
        raise IncompatibleData(
            f"model input {tensor.name!r} takes {want.name} but array {array_name!r} is "
            f"{array.dtype}, which does not convert safely"
        )


def _array_name(member: zipfile.ZipInfo) -> str:
    if member.is_dir() or not member.filename.endswith(".npy"):
        raise InvalidDataset(
            f"unexpected member {member.filename!r}: an .npz holds only .npy arrays "
            "(write it with numpy.savez or numpy.savez_compressed)"
        )
    name = member.filename.removesuffix(".npy")
    # Nothing is extracted, but a name with path parts would surface later as an array
    # name, a file name in reports, or a path in a careless consumer: refuse it here.
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        raise InvalidDataset(
            f"unexpected member {member.filename!r}: array names may not hold path "
            "separators or start with a dot"
        )
    return name


def _inspect_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> ArrayInfo:
    name = _array_name(member)
    with archive.open(member) as stream:
        shape, dtype = _read_npy_header(stream, name)
        # Read the payload through in chunks: the CRC check at the end catches corrupt
        # members, and the length check catches headers that lie about the data.
        payload_bytes = 0
        while chunk := stream.read(_CHUNK_BYTES):
            payload_bytes += len(chunk)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if payload_bytes != expected:
        raise InvalidDataset(
            f"array {name!r} declares shape {list(shape)} of {dtype} ({expected} bytes) but "
            f"holds {payload_bytes} bytes of data"
        )
    return ArrayInfo(shape=list(shape), dtype=dtype.name)


def _read_npy_header(stream: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise InvalidDataset(f"array {name!r} uses unsupported .npy version {version}")
    except ValueError as exc:
        raise InvalidDataset(f"array {name!r} is not a valid .npy array: {exc}") from exc
    if dtype.hasobject:
        raise InvalidDataset(
            f"array {name!r} has dtype object, which can only be loaded with pickle; "
            "pickled data is refused: save numeric arrays only",
            code="pickle_refused",
        )
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise InvalidDataset(
            f"array {name!r} has dtype {dtype}; only bool, integer and float arrays are supported"
        )
    if len(shape) == 0:
        raise InvalidDataset(
            f"array {name!r} is 0-dimensional; every array needs a first dimension of samples"
        )
    return tuple(int(dim) for dim in shape), dtype


def _magic(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(4)
    except OSError as exc:
        raise InvalidDataset(f"cannot read the dataset file: {exc.strerror}") from exc


def _not_npz_message(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(b"\x93NUMPY"):
        return "the file is a single .npy array; upload an .npz made with numpy.savez"
    if head[:1] == b"\x80":
        return "the file looks like a Python pickle; pickled data is refused, upload an .npz"
    return "not an .npz archive (a zip of .npy arrays made with numpy.savez)"
