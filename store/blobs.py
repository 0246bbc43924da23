"""Blobs read in pieces: checkpoints, sample arrays and uploads can be hundreds of MiB, so a
download reads its column a chunk at a time with SQL `substr` (SQLite and PostgreSQL both slice
a BLOB/bytea by bytes) and an api process holds one chunk, never the whole value; a size or an
existence check reads `length()` only.

Each chunk is its own short transaction: a slow client keeps no transaction (and on SQLite no
read snapshot that blocks the WAL checkpoint) open between chunks. A row deleted mid-download
ends the stream early; the declared Content-Length then tells the client it is short.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import LargeBinary, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from store.db import new_session
from store.tables import Checkpoint, SampleJob

CHUNK_BYTES = 1 << 20


def _key(column: InstrumentedAttribute) -> InstrumentedAttribute:
    """The primary key of the column's table (every blob table here has an `id`)."""
    return column.class_.id


def blob_length(*, session: Session, column: InstrumentedAttribute, key: str) -> int | None:
    """The column's size in bytes for row `key` (None: no such row, or no value), without reading it."""
    return session.scalar(select(func.length(column)).where(_key(column) == key))


def read_range(*, session: Session, column: InstrumentedAttribute, key: str, start: int, length: int) -> bytes | None:
    """`length` bytes of the column from byte `start` (0-based); b"" past the end, None without a row."""
    return session.scalar(select(func.substr(column, start + 1, length, type_=LargeBinary))
                          .where(_key(column) == key))


def iter_chunks(*, session: Session, column: InstrumentedAttribute, key: str, size: int,
                chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The value in `chunk`-byte pieces, each read in a transaction of its own (ended before the
    piece is handed on); stops early when the row is gone. `session` is the caller's own, for this."""
    for start in range(0, size, chunk):
        try:
            piece = read_range(session=session, column=column, key=key, start=start, length=min(chunk, size - start))
        finally:
            session.rollback()
        if not piece:
            return
        yield bytes(piece)


def stream(column: InstrumentedAttribute, key: str, size: int) -> Iterator[bytes]:
    """iter_chunks in a session of its own: for a response body that outlives the request's session."""
    with new_session() as session:
        yield from iter_chunks(session=session, column=column, key=key, size=size)


@dataclass(frozen=True)
class Blob:
    """Where a stored value is and how large: enough to answer with a Content-Length and stream it."""

    column: InstrumentedAttribute
    key: str
    size: int

    def chunks(self) -> Iterator[bytes]:
        return stream(self.column, self.key, self.size)


def checkpoint_blob(ckpt: Checkpoint) -> Blob:
    """A checkpoint's bytes (its row carries their size: nothing to read)."""
    return Blob(Checkpoint.data, ckpt.id, ckpt.size)


def sample_images_blob(*, session: Session, sample_id: str) -> Blob | None:
    """A sample job's images (.npz), or None while it has none."""
    size = blob_length(session=session, column=SampleJob.images_npz, key=sample_id)
    return None if size is None else Blob(SampleJob.images_npz, sample_id, size)
