"""Uploads of models and datasets: streamed to a staging file, validated, then stored.

The multipart body is parsed as it arrives and the `file` part's bytes go straight into a
BlobStore staging file (hashed on the way, capped at the configured size): no temporary
copy elsewhere, nothing held in memory. The engine validates the staged file; only then
is the row inserted and the blob published under its sha256 (renamed into the blob
folder, or uploaded to the object store, in parts when large). Any failure on the way
removes the staged file and writes no row.

A model is either one self-contained .onnx file or one archive (.zip, .tar, .tar.gz,
told apart by magic bytes) holding the .onnx and its external data files. The archive is
the blob; core.archive checks it and extracts it into a temporary folder under the work
dir for validation, which is removed whatever the outcome.

Bytes the tenant already stored as the same kind (same sha256) are not stored again: the
staged file is dropped and the earlier record is answered, marked `reused` (the route
says 200 instead of 201). The client can also ask first (`?sha256=` on the listing) and
skip the transfer altogether.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio.from_thread
from fastapi import Request
from pydantic import BaseModel
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.errors import InvalidUpload, UnsupportedMediaType
from api.quotas import Quotas, reserve_storage, storage_exceeded, storage_left
from core.archive import ArchiveLimits, inspect_upload
from core.data import inspect_dataset
from core.graph_limits import GraphLimits
from service.settings import Settings
from store import blob_refs, catalog
from store.blobs import BlobStore, BlobTooLarge, StagedBlob
from store.tables import DatasetRow, ModelRow

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
MAX_FILENAME_CHARS = 255

RowT = TypeVar("RowT", ModelRow, DatasetRow)


@dataclass(frozen=True)
class UploadKind(Generic[RowT]):
    """How one kind of upload is capped, validated and recorded."""

    tenant_id: str
    settings: Settings
    max_bytes: int
    default_filename: str
    inspect: Callable[[Path], BaseModel]
    add_row: Callable[..., RowT]
    # the tenant's record already holding these bytes, if any
    find_by_sha256: Callable[[Session, str, str], RowT | None]


@dataclass(frozen=True)
class Stored(Generic[RowT]):
    """An upload's record; `reused` when the tenant had stored these bytes before."""

    row: RowT
    reused: bool


async def upload_model(
    request: Request, session: Session, blobs: BlobStore, settings: Settings, tenant_id: str
) -> Stored[ModelRow]:
    """Store the ONNX model, or the archive of a model and its external data, in the
    request's `file` part (InvalidModel when it is neither)."""
    limits = archive_limits(settings)
    graph = graph_limits(settings)
    kind = UploadKind(
        tenant_id=tenant_id,
        settings=settings,
        max_bytes=settings.max_model_bytes,
        default_filename="model.onnx",
        inspect=lambda path: inspect_upload(path, settings.work_dir, limits, graph),
        add_row=catalog.add_model,
        find_by_sha256=catalog.find_model_by_sha256,
    )
    return await _upload(request, session, blobs, kind)


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(
        max_members=settings.max_model_archive_members,
        max_uncompressed_bytes=settings.max_model_uncompressed_bytes,
        max_compression_ratio=settings.max_model_archive_compression_ratio,
    )


def graph_limits(settings: Settings) -> GraphLimits:
    return GraphLimits(
        max_tensor_bytes=settings.max_model_tensor_bytes,
        max_folded_bytes=settings.max_model_folded_bytes,
        max_loop_trip_count=settings.max_model_loop_trip_count,
        max_subgraph_depth=settings.max_model_subgraph_depth,
    )


async def upload_dataset(
    request: Request, session: Session, blobs: BlobStore, settings: Settings, tenant_id: str
) -> Stored[DatasetRow]:
    """Store the `.npz` dataset in the request's `file` part (InvalidDataset when it is none)."""
    kind = UploadKind(
        tenant_id=tenant_id,
        settings=settings,
        max_bytes=settings.max_dataset_bytes,
        default_filename="dataset.npz",
        inspect=lambda path: inspect_dataset(
            path, settings.max_dataset_uncompressed_bytes, settings.max_dataset_arrays
        ),
        add_row=catalog.add_dataset,
        find_by_sha256=catalog.find_dataset_by_sha256,
    )
    return await _upload(request, session, blobs, kind)


async def _upload(
    request: Request, session: Session, blobs: BlobStore, kind: UploadKind[RowT]
) -> Stored[RowT]:
    boundary = multipart_boundary(request.headers.get("content-type"))
    body = _blocking_iterator(request.stream())
    # File writes, hashing and validation are blocking work: one worker thread does it
    # all, pulling body chunks from the event loop as it needs them.
    return await run_in_threadpool(_receive_and_store, body, boundary, session, blobs, kind)


def _receive_and_store(
    body: Iterable[bytes],
    boundary: bytes,
    session: Session,
    blobs: BlobStore,
    kind: UploadKind[RowT],
) -> Stored[RowT]:
    reader = FilePartReader(boundary)
    # The tenant's storage quota caps the stream too: an upload that would exceed it is
    # cut off as it arrives, not after it was written in full.
    quota_left = storage_left(session, kind.tenant_id, kind.settings)
    try:
        staged = blobs.stage_chunks(reader.file_chunks(body), min(kind.max_bytes, quota_left))
    except BlobTooLarge:
        if quota_left < kind.max_bytes:
            raise storage_exceeded(
                Quotas.of(session, kind.tenant_id, kind.settings).storage_bytes, kind.settings
            ) from None
        raise
    try:
        existing = kind.find_by_sha256(session, kind.tenant_id, staged.sha256)
        if existing is not None:
            # the same bytes were validated when they were first stored
            if blobs.exists(staged.sha256):
                blobs.discard(staged)
            else:
                # the record outlived its bytes (collected, or a store that was replaced):
                # these are they, so the record is whole again instead of failing every
                # job that names it with `input_missing`
                blob_refs.lock(session, staged.sha256)
                blobs.publish(staged)
            return Stored(existing, reused=True)
        row = _store(staged, reader.filename or kind.default_filename, session, blobs, kind)
        return Stored(row, reused=False)
    except BaseException:
        blobs.discard(staged)
        raise


def _store(
    staged: StagedBlob, filename: str, session: Session, blobs: BlobStore, kind: UploadKind[RowT]
) -> RowT:
    info = kind.inspect(staged.path)
    reserve_storage(session, kind.tenant_id, kind.settings, staged.size_bytes)
    row = kind.add_row(
        session,
        tenant_id=kind.tenant_id,
        filename=filename,
        sha256=staged.sha256,
        size_bytes=staged.size_bytes,
        info=info.model_dump(mode="json"),
    )
    # Published inside the request's transaction, under the blob's lock: if publishing
    # fails, no row is committed, and a concurrent delete of the same bytes either ran
    # before (they are stored again here) or waits and then sees this row. (A commit
    # failing afterwards leaves a blob no row names, which retention removes.)
    blob_refs.lock(session, staged.sha256)
    blobs.publish(staged)
    return row


def multipart_boundary(content_type: str | None) -> bytes:
    media_type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType(
            f"send the file as multipart/form-data in a field named {FILE_FIELD!r} "
            f"(curl -F {FILE_FIELD}=@path), not {content_type or 'no Content-Type'}"
        )
    return boundary


class FilePartReader:
    """Pulls the bytes of the single `file` part out of a multipart/form-data body.

    Refuses bodies with any other part, a second `file` part, no `file` part, or no
    closing boundary (a body cut short must not store a truncated file as complete).
    """

    def __init__(self, boundary: bytes, field: str = FILE_FIELD) -> None:
        self.field = field
        self.filename: str | None = None
        self._found = False
        self._in_file = False
        self._file_ended = False
        self._complete = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._pending: list[bytes] = []
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks)
        except FormParserError as exc:
            raise InvalidUpload(f"unusable multipart boundary: {exc}") from exc

    def file_chunks(self, body: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in body:
            try:
                self._parser.write(chunk)
            except FormParserError as exc:
                raise InvalidUpload(f"malformed multipart body: {exc}") from exc
            yield from self._pending
            self._pending.clear()
        if not self._found:
            raise InvalidUpload(f"the multipart body has no part named {self.field!r}")
        if not (self._file_ended and self._complete):
            raise InvalidUpload("the multipart body ended before its closing boundary")

    def _on_part_begin(self) -> None:
        self._disposition = b""

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", errors="replace")
        if name != self.field:
            raise InvalidUpload(
                f"unexpected form field {name!r}: send only the file, in a field named "
                f"{self.field!r}"
            )
        if self._found:
            raise InvalidUpload(f"the multipart body has more than one {self.field!r} part")
        self._found = True
        self._in_file = True
        self.filename = safe_filename(options.get(b"filename"))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._pending.append(bytes(data[start:end]))

    def _on_part_end(self) -> None:
        if self._in_file:
            self._file_ended = True
        self._in_file = False

    def _on_end(self) -> None:
        self._complete = True


def safe_filename(raw: bytes | None) -> str | None:
    """The client's file name without any directory part or control characters."""
    if not raw:
        return None
    name = PurePosixPath(raw.decode("utf-8", errors="replace").replace("\\", "/")).name
    name = "".join(char for char in name if char.isprintable()).strip()
    return name[:MAX_FILENAME_CHARS] or None


def _blocking_iterator(stream: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The request body for a worker thread: each chunk is awaited on the event loop."""

    async def next_chunk() -> bytes | None:
        try:
            return await anext(stream)
        except StopAsyncIteration:
            return None

    while (chunk := anyio.from_thread.run(next_chunk)) is not None:
        if chunk:
            yield chunk
