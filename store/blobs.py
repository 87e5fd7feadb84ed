"""Content-addressed blob files under one folder (an object store can implement this later).

Writes go to a staging file first and are published by an atomic rename to their sha256
name, so a reader never sees half a file and a failed upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 1024 * 1024


class BlobTooLarge(Exception):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"more than {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


@dataclass(frozen=True)
class StagedBlob:
    path: Path
    sha256: str
    size_bytes: int


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / "staging"
        self.staging.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def stage_chunks(self, chunks: Iterable[bytes], max_bytes: int) -> StagedBlob:
        """Write chunks to a staging file, hashing as they come; refuse past `max_bytes`."""
        target = self.staging / uuid.uuid4().hex
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

    def publish(self, staged: StagedBlob) -> Path:
        """Move a staged file to its content address (atomic; same content is stored once)."""
        final = self.path(staged.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            staged.path.unlink(missing_ok=True)
            # Fresh again: retention's garbage collection spares recent files, and this
            # one is about to be named by a new row.
            os.utime(final)
        else:
            os.replace(staged.path, final)
        return final

    def published(self) -> list[Path]:
        """Every published blob file (staging excluded)."""
        return [
            path
            for folder in self.root.iterdir()
            if folder.is_dir() and folder != self.staging
            for path in folder.iterdir()
            if path.is_file()
        ]

    def discard(self, staged: StagedBlob) -> None:
        staged.path.unlink(missing_ok=True)

    def copy_to(self, sha256: str, destination: Path) -> Path:
        shutil.copyfile(self.path(sha256), destination)
        return destination
