"""Blob storage behind one interface (`BlobStore`), chosen by `SQUEEZE_BLOB_STORE`:
`local` files (the embedded default) or an `s3`-compatible object store."""

from __future__ import annotations

from service.settings import Settings
from store.blobs.base import (
    CHUNK_BYTES,
    BlobCorrupt,
    BlobInfo,
    BlobMissing,
    BlobStore,
    BlobTooLarge,
    StagedBlob,
    check_sha256,
)
from store.blobs.cache import BlobCache
from store.blobs.local import LocalBlobStore

__all__ = [
    "CHUNK_BYTES",
    "BlobCache",
    "BlobCorrupt",
    "BlobInfo",
    "BlobMissing",
    "BlobStore",
    "BlobTooLarge",
    "LocalBlobStore",
    "StagedBlob",
    "check_sha256",
    "open_blob_store",
]


def open_blob_store(settings: Settings) -> BlobStore:
    """The store the settings name (the S3 one creates its bucket when allowed)."""
    if settings.blob_store == "s3":
        # boto3 is imported only by services that use the object store.
        from store.blobs.s3 import S3BlobStore

        return S3BlobStore.from_settings(settings)
    return LocalBlobStore(settings.blob_dir)
