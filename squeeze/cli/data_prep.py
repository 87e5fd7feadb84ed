"""Data preparation: which arrays a model's dataset needs (`squeeze inspect`), and an
`.npz` built from common sources (`squeeze dataset`): a folder of images, a CSV, one
`.npy` per input.

numpy, onnx and Pillow are imported here only, when these commands run, so the light
client installs without them; a missing one is named with the command that installs it.
"""

from __future__ import annotations

import ast
import csv
import importlib
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from squeeze.cli.files import NPY_MAGIC, LocalFileError, sniff

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# What the label array holds for each task kind (core.spec.TaskSpec.labels).
LABELS_BY_TASK = {
    "classification": "int64 (N,): the class index of each sample",
    "sequence": "int64 (N, L): each sample's label sequence, padded with -1",
    "mask": "0/1 maps shaped like the output",
    "regression": "float32 shaped like the output: the target values",
    "embedding": "none: the vectors are compared with the original model's",
}


class MissingPackage(LocalFileError):
    """A package these commands need is not installed."""


def need(module: str, package: str, command: str) -> ModuleType:
    """Import `module`, or say which package `command` needs."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackage(
            f"squeeze {command} needs the {package} package: pip install {package} "
            f"(the light client leaves it out)"
        ) from None


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    # int: a fixed size, str: a symbolic axis, None: unknown; None for the whole shape
    # when even the rank is unknown
    shape: list[int | str | None] | None

    @classmethod
    def from_wire(cls, value: dict[str, Any]) -> Tensor:
        shape = value.get("shape")
        return cls(str(value["name"]), str(value.get("dtype", "?")), shape)


@dataclass(frozen=True)
class ModelSignature:
    source: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    opset: int | None = None


# --- reading a model's inputs and outputs -------------------------------------------------


def local_signature(path: Path) -> ModelSignature:
    """The inputs (initializers left out) and outputs of a local .onnx file or an archive
    holding one; the weights are not loaded."""
    onnx = need("onnx", "onnx", "inspect")
    found = sniff(path)
    if found.kind == "model_archive":
        raw = _archive_member(path, found.members[0])
        model = onnx.load_model_from_string(raw)
    elif found.kind == "onnx":
        model = onnx.load(str(path), load_external_data=False)
    else:
        raise LocalFileError(f"MODEL {path}: not an ONNX model: {found.why}")
    initializers = {init.name for init in model.graph.initializer}
    inputs = [_tensor(onnx, v) for v in model.graph.input if v.name not in initializers]
    outputs = [_tensor(onnx, v) for v in model.graph.output]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return ModelSignature(path.name, inputs, outputs, opset)


def _archive_member(path: Path, member: str) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return archive.read(member)
    import tarfile

    with tarfile.open(path) as archive:
        stream = archive.extractfile(member)
        if stream is None:
            raise LocalFileError(f"{path}: cannot read {member} in the archive")
        return stream.read()


def _tensor(onnx: ModuleType, value: Any) -> Tensor:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return Tensor(value.name, str(kind or "unknown").removesuffix("_type"), None)
    tensor_type = value.type.tensor_type
    try:
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    except (KeyError, ValueError, TypeError):
        dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower()
    if not tensor_type.HasField("shape"):
        return Tensor(value.name, dtype, None)
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return Tensor(value.name, dtype, dims)


def stored_signature(model_id: str, info: dict[str, Any], filename: str) -> ModelSignature:
    """The same from a stored model's record (`info` as the service inspected it)."""
    return ModelSignature(
        f"{model_id} ({filename})",
        [Tensor.from_wire(v) for v in info.get("inputs", [])],
        [Tensor.from_wire(v) for v in info.get("outputs", [])],
        info.get("opset"),
    )


# --- what a dataset needs -----------------------------------------------------------------


def _dims(shape: list[int | str | None] | None, *, samples: bool = True) -> str:
    if shape is None:
        return "(any shape)"
    shown = ["?" if d is None else str(d) for d in shape]
    if samples and shown:
        shown[0] = "N"
    return "(" + ", ".join(shown) + ("," if len(shown) == 1 else "") + ")"


def needs(signature: ModelSignature) -> str:
    """The text `squeeze inspect MODEL` prints: the model's inputs and outputs, the arrays
    a dataset for it holds, and the label array for each task kind."""
    opset = f", opset {signature.opset}" if signature.opset else ""
    lines = [f"model {signature.source}{opset}", "", "inputs:"]
    lines += [f"  {_tensor_line(t)}" for t in signature.inputs]
    lines += ["outputs:"]
    lines += [f"  {_tensor_line(t)}" for t in signature.outputs]
    symbolic = sorted(
        {
            str(d)
            for t in signature.inputs
            for d in (t.shape or [])[1:]
            if isinstance(d, str)
        }
    )
    lines += [
        "",
        "a dataset for it: an .npz with one array per input, named like the input (or",
        "bound by task.inputs), samples on axis 0 (N: any count, the same in every array):",
    ]
    for tensor in signature.inputs:
        fixed = tensor.shape[0] if tensor.shape else None
        note = ""
        if isinstance(fixed, int):
            note = f"  (the model fixes axis 0 at {fixed}: batches of {fixed})"
        lines.append(f"  {tensor.name:<20} {tensor.dtype:<8} {_dims(tensor.shape)}{note}")
    if symbolic:
        lines.append(
            f"  (symbolic axes {', '.join(symbolic)}: any size the model takes, one size "
            "per file)"
        )
    first = signature.outputs[0] if signature.outputs else None
    out_shape = _dims(first.shape) if first is not None else "(N, ...)"
    classes = first.shape[-1] if first is not None and first.shape else None
    lines += [
        "  label                optional (without it the metric compares with the",
        "                       original model's outputs); by task.kind it holds:",
    ]
    for kind, holds in LABELS_BY_TASK.items():
        text = holds.replace("shaped like the output", f"shaped like the output {out_shape}")
        if kind == "classification" and isinstance(classes, int):
            text += f" (0..{classes - 1})"
        lines.append(f"    {kind:<15} {text}")
    lines += ["", "build one (squeeze dataset --help):"] + [f"  {c}" for c in _recipes(signature)]
    return "\n".join(lines)


def _recipes(signature: ModelSignature) -> list[str]:
    """`squeeze dataset` command lines that fit the model's inputs."""
    commands = []
    if len(signature.inputs) == 1:
        tensor = signature.inputs[0]
        shape = tensor.shape or []
        if len(shape) == 4:
            nchw = shape[1] in (1, 3)
            height, width = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
            fixed = isinstance(height, int) and isinstance(width, int)
            size = f"{height}x{width}" if fixed else "HxW"
            gray = " --grayscale" if (shape[1] if nchw else shape[3]) == 1 else ""
            commands.append(
                f"squeeze dataset --images FOLDER --size {size} --layout "
                f"{'nchw' if nchw else 'nhwc'}{gray} --input-name {tensor.name} "
                "[--mean M,M,M --std S,S,S] -o data.npz"
            )
        if len(shape) == 2:
            commands.append(
                f"squeeze dataset --csv FILE.csv --label-column COLUMN --input-name "
                f"{tensor.name} -o data.npz"
            )
    example = " ".join(f"--input {t.name}={t.name}.npy" for t in signature.inputs[:4])
    commands.append(f"squeeze dataset {example} [--labels label.npy] -o data.npz")
    return commands


def _tensor_line(tensor: Tensor) -> str:
    return f"{tensor.name:<20} {tensor.dtype:<8} {_dims(tensor.shape, samples=False)}"


# --- reading a dataset's arrays without numpy ---------------------------------------------


def npz_arrays(path: Path) -> list[Tensor]:
    """The arrays of an .npz (name, dtype, shape) from their .npy headers alone."""
    arrays = []
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as stream:
                header = _npy_header(stream.read(2048))
            arrays.append(Tensor(name.removesuffix(".npy"), *header))
    return arrays


_DESCR = {"f": "float", "i": "int", "u": "uint", "b": "bool", "c": "complex", "U": "str"}


def _npy_header(raw: bytes) -> tuple[str, list[int | str | None]]:
    if not raw.startswith(NPY_MAGIC):
        return "?", []
    major = raw[6]
    if major == 1:
        (length,) = struct.unpack("<H", raw[8:10])
        start = 10
    else:
        (length,) = struct.unpack("<I", raw[8:12])
        start = 12
    header = ast.literal_eval(raw[start : start + length].decode("latin1"))
    descr = str(header.get("descr", "?"))
    code, size = descr[1:2], descr[2:]
    dtype = "bool" if code == "b" else f"{_DESCR.get(code, code)}{int(size) * 8}"
    if code == "U":
        dtype = "str"
    return dtype, list(header.get("shape", ()))


def dataset_text(path: Path) -> str:
    arrays = npz_arrays(path)
    lines = [f"dataset {path.name}: {len(arrays)} arrays", ""]
    for array in arrays:
        lines.append(f"  {array.name:<20} {array.dtype:<8} {_dims(array.shape, samples=False)}")
    return "\n".join(lines)


# --- building a dataset ---------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecipe:
    """How images become an input array: resized to `size` (height, width), converted
    to RGB (or grayscale), divided by `scale`, then (x - mean) / std per channel, laid out
    NCHW or NHWC, as float32."""

    size: tuple[int, int]
    layout: str = "nchw"
    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    grayscale: bool = False


def image_folder(folder: Path, recipe: ImageRecipe) -> tuple[Any, Any, list[str]]:
    """(images, labels, class names): every image under `folder`; with sub-folders, each
    sub-folder is a class (sorted names -> 0, 1, ...); images directly in `folder` and
    no sub-folders: no labels."""
    np = need("numpy", "numpy", "dataset")
    image_module = need("PIL.Image", "pillow", "dataset")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and _images(p))
    if classes:
        files = [
            (path, index) for index, name in enumerate(classes) for path in _images(folder / name)
        ]
    else:
        files = [(path, -1) for path in _images(folder)]
    if not files:
        raise LocalFileError(
            f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or in its "
            "sub-folders"
        )
    height, width = recipe.size
    channels = 1 if recipe.grayscale else 3
    mean = np.asarray(recipe.mean, dtype=np.float32)
    std = np.asarray(recipe.std, dtype=np.float32)
    for name, values in (("--mean", mean), ("--std", std)):
        if values.size not in (1, channels):
            raise LocalFileError(
                f"{name} has {values.size} values; the images have {channels} channel(s)"
            )
    if np.any(std == 0):
        raise LocalFileError("--std must not be 0")
    batch = np.empty((len(files), height, width, channels), dtype=np.float32)
    for row, (path, _) in enumerate(files):
        try:
            with image_module.open(path) as image:
                converted = image.convert("L" if recipe.grayscale else "RGB").resize(
                    (width, height), image_module.Resampling.BILINEAR
                )
                pixels = np.asarray(converted, dtype=np.float32)
        except OSError as error:
            raise LocalFileError(f"--images: cannot read {path}: {error}") from error
        batch[row] = pixels.reshape(height, width, channels)
    batch = (batch / recipe.scale - mean) / std
    if recipe.layout == "nchw":
        batch = batch.transpose(0, 3, 1, 2)
    labels = np.asarray([label for _, label in files], dtype=np.int64) if classes else None
    return np.ascontiguousarray(batch, dtype=np.float32), labels, classes


def _images(folder: Path) -> list[Path]:
    suffixes = IMAGE_SUFFIXES
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def csv_table(
    path: Path, label_column: str | None, features: list[str] | None, dtype: str
) -> tuple[Any, Any, list[str]]:
    """(features (N, F), labels (N,) or None, the feature column names) from a CSV with
    a header row. Labels that are whole numbers become int64 (classes), others float32;
    label text (cat, dog) becomes class indices in sorted order."""
    np = need("numpy", "numpy", "dataset")
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if not columns or not rows:
        raise LocalFileError(f"--csv {path}: needs a header row and at least one data row")
    if label_column is not None and label_column not in columns:
        raise LocalFileError(
            f"--label-column {label_column}: no such column in {path.name} (columns: "
            f"{', '.join(columns)})"
        )
    chosen = features or [c for c in columns if c != label_column]
    unknown = [c for c in chosen if c not in columns]
    if unknown:
        raise LocalFileError(
            f"--features: no column {', '.join(unknown)} in {path.name} (columns: "
            f"{', '.join(columns)})"
        )
    table = np.empty((len(rows), len(chosen)), dtype=dtype)
    for number, row in enumerate(rows, start=2):
        for index, column in enumerate(chosen):
            try:
                table[number - 2, index] = float(row[column])
            except (TypeError, ValueError):
                raise LocalFileError(
                    f"--csv {path.name} line {number}: column {column} holds "
                    f"{row[column]!r}, not a number (list the numeric columns with --features)"
                ) from None
    labels = None
    if label_column is not None:
        raw = [row[label_column] for row in rows]
        try:
            values = [float(value) for value in raw]
            whole = all(value.is_integer() for value in values)
            labels = np.asarray(values, dtype=np.int64 if whole else np.float32)
        except ValueError:
            names = sorted(set(raw))
            labels = np.asarray([names.index(value) for value in raw], dtype=np.int64)
    return table, labels, chosen


def load_npy(value: str, flag: str) -> Any:
    np = need("numpy", "numpy", "dataset")
    path = Path(value)
    if not path.is_file():
        raise LocalFileError(f"{flag} {value}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise LocalFileError(f"{flag} {value}: not a .npy array ({error})") from error


def write_npz(output: Path, arrays: dict[str, Any]) -> None:
    """Every array checked to hold the same number of samples on axis 0, then saved."""
    np = need("numpy", "numpy", "dataset")
    counts = {name: (array.shape[0] if array.ndim else None) for name, array in arrays.items()}
    distinct = {count for count in counts.values()}
    if None in distinct or len(distinct) != 1:
        shown = ", ".join(f"{name} {count}" for name, count in counts.items())
        raise LocalFileError(
            f"the arrays must hold the same number of samples on axis 0; they hold: {shown}"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("wb") as stream:
        np.savez(stream, **arrays)


def write_classes(output: Path, classes: list[str]) -> Path:
    """The class names beside the dataset: `data.classes.json` (index -> name)."""
    path = output.with_suffix(".classes.json")
    path.write_text(json.dumps(dict(enumerate(classes)), indent=2) + "\n")
    return path
