"""Streaming uploads and downloads with progress callbacks: files are never read whole."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

# called with (bytes done, total bytes or None when unknown)
Progress = Callable[[int, int | None], None]


class ProgressReader:
    """A binary file that reports how much of it was read. httpx reads an upload in 64 KiB
    chunks and seeks back to 0 before each attempt, which restarts the count."""

    def __init__(self, file: BinaryIO, total: int, progress: Progress | None) -> None:
        self._file = file
        self._total = total
        self._progress = progress
        self._done = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        if chunk:
            self._done += len(chunk)
            if self._progress is not None:
                self._progress(self._done, self._total)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._file.seek(offset, whence)
        self._done = position
        return position

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """The file's sha256, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def write_stream(
    chunks: Iterable[bytes],
    destination: Path,
    *,
    total: int | None,
    progress: Progress | None,
    expected_sha256: str | None,
) -> str:
    """Write chunks to `destination` through a `.part` file renamed at the end; returns
    the sha256. Raises ValueError (leaving nothing behind) when it is not the expected one."""
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256()
    done = 0
    try:
        with partial.open("wb") as file:
            for chunk in chunks:
                file.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        sha256 = digest.hexdigest()
        if expected_sha256 is not None and sha256 != expected_sha256:
            raise ValueError(f"downloaded sha256 {sha256} is not the expected {expected_sha256}")
        partial.replace(destination)
        return sha256
    finally:
        partial.unlink(missing_ok=True)
