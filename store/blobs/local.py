"""Blobs as files under one folder (the embedded default): `<root>/<sha[:2]>/<sha>`.

Staged files live in `<root>/staging` and are published by an atomic rename to their
sha256 name, so a reader never sees half a file and a failed upload leaves nothing
behind. Every process that reads or writes blobs must see the same folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from store.blobs.base import BlobInfo, BlobMissing, BlobStore, StagedBlob, check_sha256


class LocalBlobStore(BlobStore):
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        super().__init__(root / "staging")

    def path(self, sha256: str) -> Path:
        """Where the blob's file is (or would be)."""
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def publish(self, staged: StagedBlob) -> None:
        final = self.path(staged.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            staged.path.unlink(missing_ok=True)
            # Fresh again: retention's garbage collection spares recent files, and this
            # one is about to be named by a new row.
            os.utime(final)
        else:
            os.replace(staged.path, final)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            raise BlobMissing(sha256) from None

    def open(self, sha256: str) -> BinaryIO:
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError:
            raise BlobMissing(sha256) from None

    def materialise(self, sha256: str, destination: Path) -> Path:
        source = self.path(sha256)
        try:
            os.link(source, destination)
        except FileNotFoundError:
            raise BlobMissing(sha256) from None
        except OSError:  # another file system, or links not allowed
            try:
                shutil.copyfile(source, destination)
            except FileNotFoundError:
                raise BlobMissing(sha256) from None
        return destination

    def delete(self, sha256: str) -> bool:
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def list(self) -> Iterator[BlobInfo]:
        for folder in self.root.iterdir():
            if not folder.is_dir() or folder == self.staging_dir:
                continue
            for path in folder.iterdir():
                try:
                    stat = path.stat()
                except FileNotFoundError:  # deleted meanwhile
                    continue
                if path.is_file():
                    modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                    yield BlobInfo(path.name, stat.st_size, modified)

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"{self.root} is not writable")
