"""What a local file is, read from its first bytes: an ONNX model, an archive of one, an
`.npz` dataset, or neither. The standard library only: the light client needs no onnx,
numpy or torch to say "this is a dataset, not a model" before it uploads anything."""

from __future__ import annotations

import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

Kind = Literal["onnx", "model_archive", "npz", "other"]

NPY_MAGIC = b"\x93NUMPY"
# ModelProto's field numbers (onnx.proto): a file whose top-level fields are these, with
# a graph (7), is an ONNX model
_ONNX_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25}
_GRAPH_FIELD = 7


class LocalFileError(ValueError):
    """A file the CLI was given that it cannot use (exit code 2)."""


@dataclass(frozen=True)
class Sniffed:
    kind: Kind
    # for a dataset, its array names; for an archive, the .onnx members
    members: tuple[str, ...] = ()
    why: str = ""  # for "other": what the bytes look like


def _varint(stream: BinaryIO) -> int | None:
    value = shift = 0
    for _ in range(10):
        byte = stream.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
    return None


def looks_like_onnx(path: Path) -> bool:
    """Whether the file parses as a protobuf message made of ModelProto's top-level
    fields, one of them a graph: the tags and lengths are walked, the graph's bytes
    skipped, so this reads a few bytes of even a multi-gigabyte model."""
    size = path.stat().st_size
    seen_graph = False
    with path.open("rb") as stream:
        while stream.tell() < size:
            tag = _varint(stream)
            if tag is None or tag >> 3 not in _ONNX_FIELDS:
                return False
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                if _varint(stream) is None:
                    return False
            elif wire == 2:
                length = _varint(stream)
                if length is None or stream.tell() + length > size:
                    return False
                stream.seek(length, 1)
                seen_graph = seen_graph or field == _GRAPH_FIELD
            else:
                return False
    return seen_graph


def sniff(path: Path) -> Sniffed:
    """What the file is (raises LocalFileError when it cannot be read)."""
    try:
        with path.open("rb") as stream:
            head = stream.read(8)
    except OSError as error:
        raise LocalFileError(f"cannot read it ({error.strerror or error})") from error
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return Sniffed("other", why="a damaged zip file")
        arrays = [n for n in names if n.endswith(".npy")]
        models = [n for n in names if n.lower().endswith(".onnx")]
        if models:
            return Sniffed("model_archive", tuple(models))
        if arrays and len(arrays) == len(names):
            return Sniffed("npz", tuple(n.removesuffix(".npy") for n in arrays))
        return Sniffed("other", why="a zip file with neither .npy arrays nor an .onnx model")
    if head.startswith(NPY_MAGIC):
        return Sniffed("other", why="a single .npy array (a dataset is an .npz of named arrays)")
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            models = [m.name for m in archive.getmembers() if m.name.lower().endswith(".onnx")]
        if models:
            return Sniffed("model_archive", tuple(models))
        return Sniffed("other", why="an archive without an .onnx model")
    if looks_like_onnx(path):
        return Sniffed("onnx")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return Sniffed("other", why="a CSV table (squeeze dataset --csv makes an .npz of it)")
    if suffix in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"):
        return Sniffed(
            "other", why="an image (squeeze dataset --images makes an .npz of a folder of them)"
        )
    if head[:1] in (b"{", b"[") or suffix in (".json", ".yaml", ".yml"):
        return Sniffed("other", why="a text file (JSON or YAML?)")
    if head.startswith(b"\x80") or path.suffix.lower() in (".pt", ".pth", ".bin"):
        return Sniffed("other", why="not ONNX (a PyTorch checkpoint? export it to ONNX first)")
    return Sniffed("other", why="neither an ONNX model nor an .npz dataset")


def check_model(path: Path, flag: str) -> Sniffed:
    """The file given as a model (`flag` names where: MODEL, --model) is one."""
    found = _existing(path, flag)
    if found.kind in ("onnx", "model_archive"):
        return found
    if found.kind == "npz":
        raise LocalFileError(
            f"{flag} {path}: this is a dataset (an .npz of arrays {_names(found)}), not a "
            "model: give the .onnx file as the model and this file as --eval (or --calib, "
            "--train)"
        )
    raise LocalFileError(f"{flag} {path}: not an ONNX model: {found.why}")


def check_dataset(path: Path, flag: str) -> Sniffed:
    """The file given as a dataset (`flag`: --eval, --calib, --train) is an .npz."""
    found = _existing(path, flag)
    if found.kind == "npz":
        return found
    if found.kind in ("onnx", "model_archive"):
        raise LocalFileError(
            f"{flag} {path}: this is an ONNX model, not a dataset: {flag} takes an .npz of "
            "named arrays (see `squeeze inspect MODEL` for the arrays it needs, and "
            "`squeeze dataset` to build one)"
        )
    why = found.why
    if why.startswith("neither"):
        why = "it is not a zip of named .npy arrays"
    if "squeeze dataset" not in why:
        why += " (build one with `squeeze dataset`)"
    raise LocalFileError(f"{flag} {path}: not an .npz dataset: {why}")


def _existing(path: Path, flag: str) -> Sniffed:
    if not path.exists():
        raise LocalFileError(f"{flag} {path}: no such file")
    if path.is_dir():
        raise LocalFileError(f"{flag} {path}: a folder, not a file")
    try:
        return sniff(path)
    except LocalFileError as error:
        raise LocalFileError(f"{flag} {path}: {error}") from error


def _names(found: Sniffed) -> str:
    shown = ", ".join(found.members[:6])
    return shown + (", ..." if len(found.members) > 6 else "")
