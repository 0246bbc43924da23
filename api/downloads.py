"""Download responses that stream: a stored blob read a chunk at a time from the database
(store/blobs.py), or a temporary file the route wrote; an api process holds one chunk per download."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from fastapi.responses import StreamingResponse

from store.blobs import CHUNK_BYTES, Blob


def _attachment(filename: str, size: int) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"', "Content-Length": str(size)}


def blob_response(blob: Blob, media_type: str, filename: str) -> StreamingResponse:
    return StreamingResponse(blob.chunks(), media_type=media_type, headers=_attachment(filename, blob.size))


def file_response(file: BinaryIO, media_type: str, filename: str) -> StreamingResponse:
    """Streams `file` from its start and closes it once sent (or once the client is gone)."""
    size = os.fstat(file.fileno()).st_size
    file.seek(0)

    def chunks() -> Iterator[bytes]:
        with file:
            while chunk := file.read(CHUNK_BYTES):
                yield chunk

    return StreamingResponse(chunks(), media_type=media_type, headers=_attachment(filename, size))
