"""The blob store's interface: content-addressed bytes, named by their sha256.

Every upload and job artifact is one blob. Writers first stage the bytes in a local file
(hashed and capped as they arrive, so nothing is held in memory and the caller can check
the file before it is stored), then publish it under its sha256; the same bytes are
stored once however many rows name them. Readers stream a blob, ask for its size, or
materialise it as a local file (through a cache when the store is remote).
"""

from __future__ import annotations

import hashlib
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 1024 * 1024
HEX_DIGITS = frozenset("0123456789abcdef")


class BlobTooLarge(Exception):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"more than {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class BlobMissing(Exception):
    """No blob with this sha256 is stored (deleted, or never published)."""

    def __init__(self, sha256: str) -> None:
        super().__init__(f"blob {sha256} is not stored")
        self.sha256 = sha256


class BlobCorrupt(Exception):
    """A blob read back whose bytes do not hash to its name."""

    def __init__(self, sha256: str, actual: str) -> None:
        super().__init__(f"blob {sha256} read back as {actual}")
        self.sha256 = sha256
        self.actual = actual


def check_sha256(sha256: str) -> str:
    """The name itself, when it is a lower-case sha256 hex digest (names become paths
    and object keys: nothing else may get through)."""
    if len(sha256) != 64 or not HEX_DIGITS.issuperset(sha256):
        raise ValueError("not a sha256 hex digest")
    return sha256


@dataclass(frozen=True)
class StagedBlob:
    """Bytes written to a local staging file, not yet stored under their name."""

    path: Path
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob as retention sees it; `modified_at` is refreshed by every publish
    of the same bytes, so a grace period spares blobs that a new row is about to name."""

    sha256: str
    size_bytes: int
    modified_at: datetime


class BlobStore(ABC):
    """Content-addressed storage. Implementations: `LocalBlobStore` (files under one
    folder) and `S3BlobStore` (an S3-compatible object store)."""

    #: "local" or "s3", as in SQUEEZE_BLOB_STORE
    kind: str

    def __init__(self, staging_dir: Path) -> None:
        self.staging_dir = staging_dir
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    # --- writing --------------------------------------------------------------------------

    def stage_chunks(self, chunks: Iterable[bytes], max_bytes: int) -> StagedBlob:
        """Write chunks to a staging file, hashing as they come; BlobTooLarge past
        `max_bytes` (the file is removed)."""
        target = self.staging_dir / uuid.uuid4().hex
        digest = hashlib.sha256()
        size = 0
        try:
            with target.open("wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise BlobTooLarge(max_bytes)
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return StagedBlob(target, digest.hexdigest(), size)

    def stage_fileobj(self, source: BinaryIO, max_bytes: int) -> StagedBlob:
        return self.stage_chunks(iter(lambda: source.read(CHUNK_BYTES), b""), max_bytes)

    def stage_file(self, source: Path) -> StagedBlob:
        with source.open("rb") as handle:
            return self.stage_fileobj(handle, max_bytes=2**62)

    def discard(self, staged: StagedBlob) -> None:
        staged.path.unlink(missing_ok=True)

    @abstractmethod
    def publish(self, staged: StagedBlob) -> None:
        """Store the staged file under its sha256 and remove the staging file. Storing
        bytes that are already there only refreshes their `modified_at`."""

    def put(self, chunks: Iterable[bytes], max_bytes: int) -> StagedBlob:
        """Stage and publish a stream (capped at `max_bytes`, hashed); what was stored."""
        staged = self.stage_chunks(chunks, max_bytes)
        try:
            self.publish(staged)
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def put_file(self, source: Path) -> StagedBlob:
        """Store a local file (left in place); its sha256 and size."""
        with source.open("rb") as handle:
            return self.put(iter(lambda: handle.read(CHUNK_BYTES), b""), max_bytes=2**62)

    # --- reading --------------------------------------------------------------------------

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def size(self, sha256: str) -> int:
        """The blob's size in bytes; BlobMissing when it is not stored."""

    @abstractmethod
    def open(self, sha256: str) -> BinaryIO:
        """The blob as a readable binary stream (close it); BlobMissing."""

    def iter_chunks(self, sha256: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The blob's bytes in chunks of at most `chunk_bytes` (BlobMissing on the first)."""
        with self.open(sha256) as stream:
            while chunk := stream.read(chunk_bytes):
                yield chunk

    @abstractmethod
    def materialise(self, sha256: str, destination: Path) -> Path:
        """A local file at `destination` (its folder must exist) holding the blob: a hard
        link where the file system allows, else a copy. The file stays valid whatever
        happens to the store or its cache afterwards. BlobMissing; BlobCorrupt when the
        bytes fetched do not hash to `sha256`."""

    def presigned_url(
        self, sha256: str, *, filename: str, media_type: str, expires_s: int
    ) -> str | None:
        """A URL a client can download the blob from without a key, valid `expires_s`;
        None when the store has no such URLs (local files)."""
        return None

    # --- lifecycle ------------------------------------------------------------------------

    @abstractmethod
    def delete(self, sha256: str) -> bool:
        """Remove the blob; False when it was not there. Callers decide that no row
        names it any more (store.blob_refs)."""

    @abstractmethod
    def list(self) -> Iterator[BlobInfo]:
        """Every stored blob (staging excluded), for retention's garbage collection."""

    @abstractmethod
    def check(self) -> None:
        """Raise when the store cannot be reached (readiness)."""
