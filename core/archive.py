"""Model archives: one ONNX model and its external data files in a single .zip, .tar or
.tar.gz, as uploaded and as handed back.

A model over 2 GB cannot be one protobuf file: its weights live in external data files
that the .onnx names by paths relative to itself. Such a model is uploaded as one archive
(recognised by its magic bytes, not its name), stored as one blob, and unpacked only here.
An archive is hostile until checked, so:

1. Every member is checked before anything is written: a relative path without "..",
   a regular file or a directory (no symbolic or hard link, device, FIFO, sparse file),
   no duplicate, at most `max_members` members, declared sizes adding up to at most
   `max_uncompressed_bytes` and to at most `max_compression_ratio` times the archive.
2. It must hold exactly one .onnx file (macOS `__MACOSX/` and `._*` metadata aside).
3. Only that file and the data files it references are written, by this module (never
   zipfile's or tarfile's extract), as new regular files in a fresh directory, each no
   longer than its declared size. Other members are checked but not written.
4. Every external data reference must then resolve to one of those files, its byte range
   inside it (core.formats.verify_external_data).
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal, NoReturn, Protocol

import onnx

from core.errors import InvalidModel, short_reason
from core.formats import (
    ModelInfo,
    external_data_location,
    external_data_refs,
    inspect_model,
    model_files,
    parse_model,
    safe_relative_path,
    verify_external_data,
)
from core.graph_limits import GraphLimits

ArchiveFormat = Literal["zip", "tar", "tar.gz"]

# Below this many uncompressed bytes the ratio is not judged: small archives of headers
# and padding compress well, and the size cap bounds what they can do.
RATIO_CHECK_MIN_BYTES = 1024 * 1024
# tarfile reads pax and GNU long-name headers into memory whole: keep them small.
MAX_TAR_METADATA_BYTES = 64 * 1024
# What one member may take in a zip's central directory (46 bytes, its name, extra
# fields). zipfile parses the whole directory into memory, whatever entry count the zip
# claims, so its size is checked first.
MAX_ZIP_DIRECTORY_BYTES_PER_MEMBER = 2048
CHUNK_BYTES = 1024 * 1024

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_GZIP_MAGIC = b"\x1f\x8b"
_TAR_BLOCK_BYTES = 512
_TAR_METADATA_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
    | {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)
_TAR_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}
_ZIP_KIND_NAMES = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}
_ZIP_UNIX = 3  # ZipInfo.create_system of archives made on Unix (mode in external_attr)
_ZIP_ENCRYPTED = 0x1
# Errors the archive libraries raise on corrupt or truncated input.
_READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    NotImplementedError,
    struct.error,
    ValueError,
)


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 4096
    max_uncompressed_bytes: int = 16 * 1024**3
    max_compression_ratio: float = 100.0


def archive_format(path: Path) -> ArchiveFormat | None:
    """The archive format of a file by its magic bytes; None for anything else."""
    with path.open("rb") as handle:
        head = handle.read(_TAR_BLOCK_BYTES)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_GZIP_MAGIC):
        return "tar.gz"
    if len(head) == _TAR_BLOCK_BYTES and head[257:262] == b"ustar" and _tar_checksum_ok(head):
        return "tar"
    return None


def inspect_upload(
    path: Path,
    scratch_root: Path,
    limits: ArchiveLimits,
    graph_limits: GraphLimits | None = None,
) -> ModelInfo:
    """Validate an uploaded model and describe it: a self-contained .onnx file, or an
    archive holding one .onnx and its external data (extracted into a temporary
    directory under `scratch_root`, removed before returning).

    A plain .onnx that references external data is refused (code
    "external_data_unsupported"): its directory is not the user's to read from.
    `graph_limits` (default: GraphLimits()) bound what the graph may materialise, loop
    and nest (core.graph_limits).
    """
    graph_limits = graph_limits or GraphLimits()
    if archive_format(path) is None:
        return inspect_model(path, allow_external_data=False, graph_limits=graph_limits)
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="model-upload-", dir=scratch_root) as scratch:
        extracted = extract_model(path, Path(scratch) / "model", limits)
        return inspect_model(extracted, graph_limits=graph_limits)


def materialise_model(source: Path, destination: Path, limits: ArchiveLimits) -> Path:
    """The stored model `source` (a plain .onnx or an archive) as an .onnx file in the new
    directory `destination`, which holds nothing else but that model's external data.

    A plain file is hard-linked (copied across file systems), never modified: callers
    only read it.
    """
    if archive_format(source) is not None:
        return extract_model(source, destination, limits)
    destination.mkdir(parents=True)
    target = destination / "model.onnx"
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def extract_model(archive: Path, destination: Path, limits: ArchiveLimits) -> Path:
    """Check the archive, then write its .onnx file and the external data files that file
    references into `destination` (created here; it must not exist). Returns the .onnx
    file's path. On any failure `destination` is removed.

    Raises InvalidModel: code "unsafe_archive" (a path outside the archive, a link or
    device, a duplicate, a member bigger than declared), "archive_too_large",
    "archive_too_many_members", "archive_ratio_too_high", "archive_without_model",
    "archive_with_several_models", "unsupported_archive" (encryption), the codes of
    core.formats.verify_external_data, or "invalid_model" for an unreadable archive.
    """
    kind = archive_format(archive)
    if kind is None:
        raise InvalidModel("not a .zip, .tar or .tar.gz archive")
    destination.mkdir(parents=True)
    try:
        with _open_archive(archive, kind, limits) as reader:
            members = _checked_members(reader, kind, archive.stat().st_size, limits)
            model_member = _the_model(members)
            model_path = _write_member(reader, kind, model_member, destination)
            model = parse_model(model_path)
            for member in _referenced_members(model, model_member, members):
                _write_member(reader, kind, member, destination)
        verify_external_data(model, model_path.parent)
        return model_path
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def pack_model(model_path: Path, archive_path: Path) -> Path:
    """Write the model and its external data files into a new zip at `archive_path`, in
    the layout uploads take (the .onnx at the top, data files at their relative paths).

    Members are stored uncompressed: weights hardly compress, and deflating gigabytes
    would cost minutes.
    """
    files = model_files(model_path)
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive_path, "x", zipfile.ZIP_STORED, allowZip64=True) as packed:
        for file in files:
            packed.write(file, file.relative_to(model_path.parent).as_posix())
    return archive_path


# --- reading members ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    name: PurePosixPath  # normalised: relative, no "." or ".." parts
    size_bytes: int  # as declared by the archive
    is_dir: bool
    entry: zipfile.ZipInfo | tarfile.TarInfo


class _Reader(Protocol):
    def members(self) -> Iterator[_Member]: ...

    def open(self, member: _Member) -> IO[bytes]: ...


class _ZipReader:
    def __init__(self, archive: zipfile.ZipFile) -> None:
        self._zip = archive

    def members(self) -> Iterator[_Member]:
        for info in self._zip.infolist():
            if info.flag_bits & _ZIP_ENCRYPTED:
                raise InvalidModel(
                    f"archive member {info.filename!r} is encrypted; pack the model without "
                    "a password",
                    code="unsupported_archive",
                )
            mode = info.external_attr >> 16 if info.create_system == _ZIP_UNIX else 0
            kind = stat.S_IFMT(mode)
            if kind in _ZIP_KIND_NAMES:
                _refuse_member(info.filename, _ZIP_KIND_NAMES[kind])
            elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                _refuse_member(info.filename, "not a regular file")
            is_dir = info.is_dir() or kind == stat.S_IFDIR
            name = _member_name(info.filename, is_dir)
            if name is not None:
                yield _Member(name, info.file_size, is_dir, info)

    def open(self, member: _Member) -> IO[bytes]:
        assert isinstance(member.entry, zipfile.ZipInfo)
        return self._zip.open(member.entry)


class _TarReader:
    def __init__(self, archive: tarfile.TarFile) -> None:
        self._tar = archive

    def members(self) -> Iterator[_Member]:
        # next() one member at a time, so the caps stop a huge listing part way through.
        while (info := self._tar.next()) is not None:
            if info.sparse is not None:  # pax GNU.sparse headers on a regular type
                _refuse_member(info.name, "a sparse file")
            if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                is_dir = False
            elif info.type == tarfile.DIRTYPE:
                is_dir = True
            else:
                _refuse_member(info.name, _TAR_TYPE_NAMES.get(info.type, "not a regular file"))
            name = _member_name(info.name, is_dir)
            if name is not None:
                yield _Member(name, info.size, is_dir, info)

    def open(self, member: _Member) -> IO[bytes]:
        assert isinstance(member.entry, tarfile.TarInfo)
        handle = self._tar.extractfile(member.entry)
        assert handle is not None  # regular files only reach here
        return handle


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses pax and GNU long-name headers bigger than MAX_TAR_METADATA_BYTES before
    tarfile reads them into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _TAR_METADATA_TYPES and self.size > MAX_TAR_METADATA_BYTES:
            raise InvalidModel(
                f"the archive has a {self.size}-byte tar metadata header; at most "
                f"{MAX_TAR_METADATA_BYTES} bytes are accepted",
                code="unsafe_archive",
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc, no-any-return]


@contextmanager
def _open_archive(path: Path, kind: ArchiveFormat, limits: ArchiveLimits) -> Iterator[_Reader]:
    """A reader over the archive; one that cannot be opened is InvalidModel ("invalid_model").

    Only opening is wrapped here: errors while reading members are wrapped where they are
    read, and errors writing the extracted files (a full disk) stay what they are.
    """
    opened: zipfile.ZipFile | tarfile.TarFile
    try:
        if kind == "zip":
            _check_zip_directory(path, limits)
            opened = zipfile.ZipFile(path)
        else:
            mode: Literal["r:", "r:gz"] = "r:gz" if kind == "tar.gz" else "r:"
            opened = tarfile.open(path, mode, tarinfo=_BoundedTarInfo)  # noqa: SIM115 (closed below)
    except InvalidModel:
        raise
    except _READ_ERRORS as exc:
        hint = " (a gzip file that is not a tar archive?)" if kind == "tar.gz" else ""
        raise InvalidModel(f"not a readable {kind} archive{hint}: {short_reason(exc)}") from exc
    with opened:
        yield _ZipReader(opened) if isinstance(opened, zipfile.ZipFile) else _TarReader(opened)


def _check_zip_directory(path: Path, limits: ArchiveLimits) -> None:
    """Refuse a zip whose central directory claims more members, or more bytes, than
    `limits.max_members` allow, before zipfile parses it into memory."""
    entries, directory_bytes = zip_directory(path)
    if entries > limits.max_members:
        _too_many_members(entries, limits)
    if directory_bytes > limits.max_members * MAX_ZIP_DIRECTORY_BYTES_PER_MEMBER:
        raise InvalidModel(
            f"the zip's central directory is {directory_bytes} bytes, more than "
            f"{limits.max_members} members need",
            code="archive_too_many_members",
        )


def zip_directory(path: Path) -> tuple[int, int]:
    """The member count a zip's end record claims and its central directory's size in
    bytes, read from the file's tail (zip64 too) without parsing the directory. zipfile
    parses the whole directory whatever count it claims: bound both before opening it.
    Raises zipfile.BadZipFile when there is no end record."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        tail_bytes = min(size, 22 + 0xFFFF + 20)  # end record, its comment, zip64 locator
        handle.seek(size - tail_bytes)
        tail = handle.read(tail_bytes)
        end = tail.rfind(b"PK\x05\x06")
        if end < 0 or len(tail) - end < 22:
            raise zipfile.BadZipFile("no end of central directory record")
        entries, directory_bytes = struct.unpack("<HI", tail[end + 10 : end + 16])
        locator = end - 20
        if (entries == 0xFFFF or directory_bytes == 0xFFFFFFFF) and tail[
            locator : locator + 4
        ] == b"PK\x06\x07":
            (record_offset,) = struct.unpack("<Q", tail[locator + 8 : locator + 16])
            if record_offset >= size:
                raise zipfile.BadZipFile("bad zip64 end of central directory locator")
            handle.seek(record_offset)
            record = handle.read(56)
            if record[:4] != b"PK\x06\x06" or len(record) < 56:
                raise zipfile.BadZipFile("bad zip64 end of central directory record")
            entries, directory_bytes = struct.unpack("<QQ", record[32:48])
    return entries, directory_bytes


def _checked_members(
    reader: _Reader, kind: ArchiveFormat, archive_bytes: int, limits: ArchiveLimits
) -> list[_Member]:
    members: list[_Member] = []
    seen: set[PurePosixPath] = set()
    declared_bytes = 0
    for member in _read(kind, reader.members()):
        if len(members) >= limits.max_members:
            _too_many_members(len(members) + 1, limits)
        if member.name in seen:
            _refuse_member(str(member.name), "a duplicate name")
        seen.add(member.name)
        declared_bytes += member.size_bytes
        if declared_bytes > limits.max_uncompressed_bytes:
            raise InvalidModel(
                f"the archive's members declare more than the limit of "
                f"{limits.max_uncompressed_bytes} bytes uncompressed",
                code="archive_too_large",
            )
        members.append(member)
    folders = {parent for member in members for parent in member.name.parents}
    for member in members:
        if not member.is_dir and member.name in folders:
            _refuse_member(str(member.name), "both a file and a folder")
    if (
        declared_bytes > RATIO_CHECK_MIN_BYTES
        and declared_bytes > limits.max_compression_ratio * archive_bytes
    ):
        raise InvalidModel(
            f"the archive's {archive_bytes} bytes declare {declared_bytes} bytes "
            f"uncompressed, more than {limits.max_compression_ratio:g} times as many "
            "(a zip bomb?); model weights hardly compress",
            code="archive_ratio_too_high",
        )
    return members


def _read(kind: ArchiveFormat, members: Iterator[_Member]) -> Iterator[_Member]:
    """The members, with the archive libraries' errors on corrupt input made InvalidModel."""
    while True:
        try:
            member = next(members)
        except StopIteration:
            return
        except InvalidModel:
            raise
        except _READ_ERRORS as exc:
            raise InvalidModel(f"not a readable {kind} archive: {short_reason(exc)}") from exc
        yield member


def _the_model(members: Iterable[_Member]) -> _Member:
    models = [
        member
        for member in members
        if not member.is_dir
        and member.name.suffix.lower() == ".onnx"
        and not _is_macos_metadata(member.name)
    ]
    if not models:
        raise InvalidModel(
            "the archive holds no .onnx file: upload one .zip or .tar.gz holding the .onnx "
            "model and its external data files (a PyTorch checkpoint is a zip too: export "
            "the model to ONNX first)",
            code="archive_without_model",
        )
    if len(models) > 1:
        names = ", ".join(repr(str(member.name)) for member in models[:5])
        raise InvalidModel(
            f"the archive holds {len(models)} .onnx files ({names}); it must hold exactly one "
            "model and its external data files",
            code="archive_with_several_models",
        )
    return models[0]


def _referenced_members(
    model: onnx.ModelProto, model_member: _Member, members: list[_Member]
) -> list[_Member]:
    """The archive's files that hold the model's external data, in archive order."""
    files = {member.name: member for member in members if not member.is_dir}
    wanted: set[PurePosixPath] = set()
    for ref in external_data_refs(model):
        relative = external_data_location(ref)
        name = model_member.name.parent / relative
        if name not in files:
            raise InvalidModel(
                f"tensor {ref.tensor_name!r} keeps its data in {ref.location!r}, which the "
                f"archive does not hold beside {str(model_member.name)!r}",
                code="external_data_missing",
            )
        wanted.add(name)
    wanted.discard(model_member.name)
    return [member for member in members if member.name in wanted]


def _write_member(reader: _Reader, kind: ArchiveFormat, member: _Member, root: Path) -> Path:
    """Copy one regular member into a new file under `root`, never past its declared size."""
    target = root.joinpath(*member.name.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL | O_NOFOLLOW: only ever a new file, never through a link.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    written = 0
    with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
        for chunk in _chunks(reader, kind, member):
            written += len(chunk)
            if written > member.size_bytes:
                _refuse_member(str(member.name), "bigger than its declared size")
            out.write(chunk)
    if written != member.size_bytes:
        raise InvalidModel(
            f"archive member {str(member.name)!r} ends after {written} of its "
            f"{member.size_bytes} bytes: the archive is truncated"
        )
    return target


def _chunks(reader: _Reader, kind: ArchiveFormat, member: _Member) -> Iterator[bytes]:
    try:
        with reader.open(member) as source:
            while chunk := source.read(CHUNK_BYTES):
                yield chunk
    except InvalidModel:
        raise
    except _READ_ERRORS as exc:
        raise InvalidModel(
            f"cannot read archive member {str(member.name)!r} ({kind}): {short_reason(exc)}"
        ) from exc


def _member_name(raw: str, is_dir: bool) -> PurePosixPath | None:
    """The member's normalised path; None for the archive's root folder ("./")."""
    name = safe_relative_path(raw)
    if name is None:
        if is_dir and not raw.startswith("/") and set(raw) <= {".", "/"} and ".." not in raw:
            return None
        _refuse_member(raw, "a path outside the archive or an unusable name")
    return name


def _is_macos_metadata(name: PurePosixPath) -> bool:
    return name.parts[0] == "__MACOSX" or name.name.startswith("._")


def _refuse_member(name: str, why: str) -> NoReturn:
    raise InvalidModel(
        f"archive member {name[:200]!r} is {why}: a model archive may hold only regular "
        "files and folders at relative paths inside it",
        code="unsafe_archive",
    )


def _too_many_members(count: int, limits: ArchiveLimits) -> NoReturn:
    raise InvalidModel(
        f"the archive has {count} or more members; at most {limits.max_members} are accepted",
        code="archive_too_many_members",
    )


def _tar_checksum_ok(block: bytes) -> bool:
    try:
        stored = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    return stored == unsigned
