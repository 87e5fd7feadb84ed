"""Downloads of stored blobs: a file response from the local store, a stream from the
object store, or a 307 redirect to a short-lived presigned URL when the operator allows
it (`SQUEEZE_BLOB_DOWNLOAD_REDIRECT`), so large files need not pass through the API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import quote

from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from service.settings import Settings
from store.blobs import CHUNK_BYTES, BlobMissing, BlobStore, LocalBlobStore


def blob_response(
    blobs: BlobStore,
    settings: Settings,
    *,
    sha256: str,
    size_bytes: int,
    filename: str,
    media_type: str,
) -> Response:
    """The response that hands the blob to the client; BlobMissing when it is gone."""
    etag = {"ETag": f'"{sha256}"'}
    if settings.blob_download_redirect:
        url = blobs.presigned_url(
            sha256,
            filename=filename,
            media_type=media_type,
            expires_s=settings.blob_presigned_url_expires_s,
        )
        if url is not None:
            return RedirectResponse(
                url, status_code=307, headers={**etag, "Cache-Control": "no-store"}
            )
    if isinstance(blobs, LocalBlobStore):
        if not blobs.exists(sha256):
            raise BlobMissing(sha256)
        return FileResponse(
            blobs.path(sha256), media_type=media_type, filename=filename, headers=etag
        )
    stream = blobs.open(sha256)  # BlobMissing now, not half-way through the response
    return StreamingResponse(
        _chunks(stream),
        media_type=media_type,
        headers={
            **etag,
            "Content-Length": str(size_bytes),
            "Content-Disposition": content_disposition(filename),
        },
    )


def content_disposition(filename: str) -> str:
    quoted = quote(filename)
    if quoted == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename*=utf-8''{quoted}"


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    try:
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk
    finally:
        stream.close()
