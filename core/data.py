"""Datasets: `.npz` archives of named arrays, validated without trusting their contents.

An upload is inspected from its zip directory and `.npy` headers only: declared sizes are
summed against a cap before anything is decompressed (zip bombs), object arrays are
refused (they need pickle), and members are streamed in memory, never extracted to disk.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from pydantic import BaseModel

from core.archive import MAX_ZIP_DIRECTORY_BYTES_PER_MEMBER, zip_directory
from core.errors import IncompatibleData, InvalidDataset
from core.formats import ModelInfo, TensorInfo
from core.spec import TaskSpec

# Streaming chunk when verifying member data (CRC and length) without holding it.
_CHUNK_BYTES = 1 << 20
# Kinds the engine can feed to a model or score against: bool, ints, floats.
_NUMERIC_KINDS = frozenset("biuf")
# A zip starts with a local file header, or with the end record when it is empty.
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# Arrays (members) an .npz may hold unless the caller says otherwise (the service's
# SQUEEZE_MAX_DATASET_ARRAYS).
DEFAULT_MAX_ARRAYS = 1024

Arrays = Mapping[str, np.ndarray]
Feeds = dict[str, np.ndarray]


class ArrayInfo(BaseModel):
    shape: list[int]
    dtype: str


class DatasetInfo(BaseModel):
    arrays: dict[str, ArrayInfo]
    # the shared length of axis 0, None when the arrays differ there (samples on other
    # axes, arrays fed whole: see core.spec.InputBinding)
    samples: int | None


def inspect_dataset(
    path: Path, max_uncompressed_bytes: int, max_arrays: int = DEFAULT_MAX_ARRAYS
) -> DatasetInfo:
    """Validate an uploaded `.npz` and describe its arrays.

    Raises InvalidDataset when the file is not a zip-based .npz, is empty, declares more
    than `max_uncompressed_bytes` (code "dataset_too_large") or more than `max_arrays`
    members (code "dataset_too_many_arrays"), holds arrays that need pickle, non-numeric
    or 0-d arrays, arrays whose shape has a negative dimension or does not match their
    data (code "invalid_array_shape"), or corrupt members. Arrays may disagree on their
    first dimension: which axis holds the samples is the job's to say.
    """
    # numpy.load picks the format from the first bytes, so a file must *start* as a zip:
    # is_zipfile alone also accepts a zip appended to some other file.
    if _magic(path) not in _ZIP_MAGICS or not zipfile.is_zipfile(path):
        raise InvalidDataset(_not_npz_message(path))
    try:
        _check_member_count(path, max_arrays)
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
    except (zipfile.BadZipFile, EOFError, zlib.error, struct.error) as exc:
        raise InvalidDataset(f"the .npz archive is corrupt: {exc}") from exc
    except (RuntimeError, NotImplementedError) as exc:  # encrypted, unknown compression
        raise InvalidDataset(f"the .npz archive cannot be read: {exc}") from exc

    # Arrays may hold their samples on another axis (a recurrent state is [layers, batch,
    # hidden]) or be fed whole (a mask): which axis holds what is the job spec's to say,
    # checked at submission. The upload only records the count when axis 0 agrees.
    first_dims = {info.shape[0] for info in arrays.values()}
    samples = first_dims.pop() if len(first_dims) == 1 else None
    if samples == 0:
        raise InvalidDataset("the dataset has no samples (first dimension is 0)")
    return DatasetInfo(arrays=arrays, samples=samples)


def _check_member_count(path: Path, max_arrays: int) -> None:
    """Refuse more members than `max_arrays` from the zip's end record and directory size,
    before zipfile parses a directory of a million entries into memory."""
    entries, directory_bytes = zip_directory(path)
    if entries > max_arrays or directory_bytes > max_arrays * MAX_ZIP_DIRECTORY_BYTES_PER_MEMBER:
        shown = entries if entries > max_arrays else f"a directory of {directory_bytes} bytes"
        raise InvalidDataset(
            f"the .npz archive holds too many arrays ({shown}); at most {max_arrays} are "
            "accepted (SQUEEZE_MAX_DATASET_ARRAYS): stack samples into one array per input "
            "instead of one array per sample",
            code="dataset_too_many_arrays",
        )


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

    Every model input is fed by its binding (core.spec.InputBinding: an array named like
    the input unless task.inputs says otherwise, with its samples on `sample_axis`; an
    array fed whole; or a constant). A per-sample array must have the model input's rank
    and its fixed dims on every axis but the sample axis, where the model must not pin a
    size other than a batch; an array or constant fed whole must match every fixed dim.
    Every per-sample array must hold the same number of samples. Dtypes must cast within
    their kind (float64 to float32 is fine, float to int64 is not). Labels are required
    when `need_labels` and are checked whenever present; task.output must name a model
    output. Messages name the input, the array and the axis.
    """
    input_names = {tensor.name for tensor in model.inputs}
    unknown_mapped = sorted(set(task.inputs) - input_names)
    if unknown_mapped:
        raise IncompatibleData(
            f"task.inputs maps {unknown_mapped} but the model's inputs are {sorted(input_names)}"
        )
    samples: dict[str, int] = {}
    for tensor in model.inputs:
        binding = task.binding(tensor.name)
        if binding.constant is not None:
            _check_constant(tensor, binding.constant)
            continue
        assert binding.array is not None
        array = dataset.arrays.get(binding.array)
        if array is None:
            raise IncompatibleData(
                f"model input {tensor.name!r} needs an array named {binding.array!r}; the "
                f"dataset has {sorted(dataset.arrays)} (map names with task.inputs)"
            )
        if binding.per_sample:
            _check_sample_axis(tensor, binding.array, array, binding.sample_axis)
            samples[f"{binding.array} (axis {binding.sample_axis})"] = array.shape[
                binding.sample_axis
            ]
        else:
            _check_whole(tensor, binding.array, array.shape)
        _check_dtype(tensor, binding.array, array)
    if not samples:
        raise IncompatibleData(
            "every model input is a constant or an array fed whole: at least one input "
            "must be split into samples (a per-sample array)"
        )
    if len(set(samples.values())) > 1:
        listed = ", ".join(f"{name}: {count}" for name, count in samples.items())
        raise IncompatibleData(f"the inputs' arrays disagree on the number of samples: {listed}")

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
    count = next(iter(samples.values()))
    if labels.shape[0] != count:
        raise IncompatibleData(
            f"labels {task.labels!r} hold {labels.shape[0]} samples (axis 0), the inputs {count}"
        )
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
    elif task.kind == "sequence":
        if np.dtype(labels.dtype).kind not in "iu" or len(labels.shape) != 2:
            raise IncompatibleData(
                f"sequence labels {task.labels!r} must be integers of shape (samples, length), "
                f"padded with -1; got {labels.dtype} {labels.shape}"
            )
    elif np.dtype(labels.dtype).kind not in _NUMERIC_KINDS:
        raise IncompatibleData(f"labels {task.labels!r} must be numeric, got {labels.dtype}")


@dataclass(frozen=True)
class FeedLayout:
    """How per-sample arrays (samples on axis 0, as every batching helper here keeps them)
    become what the model takes: samples moved to each input's own axis, and the inputs
    fed whole (constants, arrays fed unchanged) added to every batch."""

    sample_axes: dict[str, int] = field(default_factory=dict)
    whole: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def is_identity(self) -> bool:
        return not self.sample_axes and not self.whole

    def to_model(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.is_identity:
            return dict(batch)
        fed = {
            name: (
                np.ascontiguousarray(np.moveaxis(array, 0, self.sample_axes[name]))
                if name in self.sample_axes
                else array
            )
            for name, array in batch.items()
        }
        return fed | self.whole


def feed_layout(arrays: Arrays, inputs: list[TensorInfo], task: TaskSpec) -> FeedLayout:
    """The layout of `task`'s bindings over these arrays (see FeedLayout)."""
    sample_axes: dict[str, int] = {}
    whole: dict[str, np.ndarray] = {}
    for tensor in inputs:
        binding = task.binding(tensor.name)
        if binding.constant is not None:
            whole[tensor.name] = _constant_array(tensor, binding.constant)
        elif not binding.per_sample:
            assert binding.array is not None
            whole[tensor.name] = _cast(tensor, arrays[binding.array])
        elif binding.sample_axis:
            sample_axes[tensor.name] = binding.sample_axis
    return FeedLayout(sample_axes, whole)


def pinned_batch_size(inputs: list[TensorInfo], task: TaskSpec | None = None) -> int | None:
    """The batch size the per-sample inputs pin on their sample axis (dim 0 unless the
    task binds another), or None when it is free (symbolic/unknown). Inputs fed whole
    (constants) pin nothing."""
    pinned = []
    for tensor in inputs:
        binding = task.binding(tensor.name) if task is not None else None
        if binding is not None and not binding.splits_samples:
            continue
        axis = binding.sample_axis if binding is not None else 0
        if tensor.shape and len(tensor.shape) > axis:
            dim = tensor.shape[axis]
            if isinstance(dim, int) and dim > 0:
                pinned.append(dim)
    return min(pinned) if pinned else None


def model_feeds(arrays: Arrays, inputs: list[TensorInfo], task: TaskSpec) -> Feeds:
    """The per-sample arrays feeding the model's inputs, keyed by input name, cast to its
    dtype, with the samples on axis 0 (the task's sample axes are moved there; inputs
    fed whole are left to `feed_layout`).

    Casting happens once here so batches are views, not copies per run.
    """
    feeds: Feeds = {}
    for tensor in inputs:
        binding = task.binding(tensor.name)
        if not binding.splits_samples:
            continue
        assert binding.array is not None
        if binding.array not in arrays:
            raise IncompatibleData(
                f"model input {tensor.name!r} needs an array named {binding.array!r}"
            )
        array = arrays[binding.array]
        if binding.sample_axis:
            if array.ndim <= binding.sample_axis:
                raise IncompatibleData(
                    f"array {binding.array!r} of shape {list(array.shape)} has no axis "
                    f"{binding.sample_axis} (task.inputs[{tensor.name!r}].sample_axis)"
                )
            array = np.moveaxis(array, binding.sample_axis, 0)
        feeds[tensor.name] = _cast(tensor, array)
    return feeds


def _cast(tensor: TensorInfo, array: np.ndarray) -> np.ndarray:
    # ascontiguousarray also makes big-endian or Fortran-ordered arrays native.
    return np.ascontiguousarray(array, dtype=np.dtype(tensor.dtype))


def _constant_array(tensor: TensorInfo, value: object) -> np.ndarray:
    array = np.array(value, dtype=np.dtype(tensor.dtype), order="C")
    if tensor.shape is not None and len(tensor.shape) == 1 and array.ndim == 0:
        array = array.reshape(1)  # a scalar for a [1] input
    # (not ascontiguousarray: it turns a 0-d scalar into shape [1])
    return array


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


def _check_sample_axis(tensor: TensorInfo, array_name: str, array: ArrayInfo, axis: int) -> None:
    """A per-sample array: the input's rank, its fixed dims off the sample axis, and a
    sample axis the model does not fix (else the samples would be some other dim)."""
    if tensor.shape is None:  # rank unknown: the model takes anything
        return
    if len(tensor.shape) != len(array.shape):
        raise IncompatibleData(
            f"model input {tensor.name!r} has rank {len(tensor.shape)} "
            f"(shape {tensor.shape}) but array {array_name!r} has shape {array.shape}"
        )
    if axis >= len(tensor.shape):
        raise IncompatibleData(
            f"task.inputs[{tensor.name!r}].sample_axis is {axis}, but the input has rank "
            f"{len(tensor.shape)}"
        )
    symbolic = [i for i, dim in enumerate(tensor.shape) if not (isinstance(dim, int) and dim > 0)]
    for index, (want, have) in enumerate(zip(tensor.shape, array.shape, strict=True)):
        if index == axis:
            continue  # the samples: fed in chunks of the batch size the engine picks
        if isinstance(want, int) and want > 0 and want != have:
            hint = ""
            if symbolic and symbolic != [axis]:
                hint = (
                    f"; the model's variable axis is {symbolic[0]}: if the samples are "
                    f"there, set task.inputs[{tensor.name!r}] to "
                    f'{{"array": "{array_name}", "sample_axis": {symbolic[0]}}}'
                )
            raise IncompatibleData(
                f"model input {tensor.name!r} expects shape {tensor.shape} but array "
                f"{array_name!r} has shape {array.shape} (axis {index}: {want} != {have}, with "
                f"the samples on axis {axis}){hint}"
            )
    want = tensor.shape[axis]
    if isinstance(want, int) and want > 0 and want != array.shape[axis] and symbolic:
        raise IncompatibleData(
            f"model input {tensor.name!r} fixes axis {axis} to {want}, so the samples cannot "
            f"be there; its variable axis is {symbolic[0]}: set task.inputs[{tensor.name!r}] "
            f'to {{"array": "{array_name}", "sample_axis": {symbolic[0]}}}'
        )


def _check_whole(tensor: TensorInfo, what: str, shape: list[int] | tuple[int, ...]) -> None:
    """An array or constant fed unchanged to every batch: every fixed dim must match."""
    if tensor.shape is None:
        return
    if len(tensor.shape) != len(shape):
        raise IncompatibleData(
            f"model input {tensor.name!r} has rank {len(tensor.shape)} (shape {tensor.shape}) "
            f"but {what} fed to it whole has shape {list(shape)}"
        )
    for index, (want, have) in enumerate(zip(tensor.shape, shape, strict=True)):
        if isinstance(want, int) and want > 0 and want != have:
            raise IncompatibleData(
                f"model input {tensor.name!r} expects shape {tensor.shape} but {what} fed to "
                f"it whole has shape {list(shape)} (axis {index}: {want} != {have})"
            )


def _check_constant(tensor: TensorInfo, value: object) -> None:
    try:
        array = _constant_array(tensor, value)
    except (TypeError, ValueError) as exc:
        raise IncompatibleData(
            f"the constant for model input {tensor.name!r} is not a {tensor.dtype} array: {exc}"
        ) from exc
    _check_whole(tensor, "the constant", array.shape)


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
    # Python ints: numpy's int64 product wraps ((2**32, 2**32) is 0) or overflows.
    expected = math.prod(shape) * dtype.itemsize
    if payload_bytes != expected:
        raise InvalidDataset(
            f"array {name!r} declares shape {list(shape)} of {dtype} ({expected} bytes) but "
            f"holds {payload_bytes} bytes of data",
            code="invalid_array_shape",
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
    if any(int(dim) < 0 for dim in shape):
        raise InvalidDataset(
            f"array {name!r} declares the shape {list(shape)}: dimensions cannot be negative",
            code="invalid_array_shape",
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
