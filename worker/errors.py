"""What a user sees when a run, a sample job or an evaluation fails: a stable code and a
message written here, never `str(exc)` (which can hold SQL, host names, server paths).

The one place exceptions become user-visible errors. The full exception goes to the worker's
log (the caller logs it with `log.exception`); the stored error is `"<code>: <message>"`, so
a client can branch on the code before the first colon. Messages of the exceptions below are
written by regdiff for users (they name spec fields and allowed values) and are kept whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from models.datasets import DatasetUnavailable
from models.trainer import NonFiniteLoss


@dataclass(frozen=True)
class UserError:
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class SourceMissing(LookupError):
    """What a job reads (its dataset, checkpoint or init_from source) was deleted before it ran;
    the message is written for the user."""


# Kept in order: the first class that matches wins.
_OURS: tuple[tuple[type[BaseException], str], ...] = (
    (NonFiniteLoss, "non-finite-loss"), (SourceMissing, "source-missing"))


def user_error(exc: BaseException) -> UserError:
    """The (code, message) for an exception; unknown ones are `internal`, with no detail."""
    for cls, code in _OURS:
        if isinstance(exc, cls):
            return UserError(code, str(exc))
    if isinstance(exc, DatasetUnavailable):  # its message may name the server's data folder
        return UserError("dataset-unavailable", "the dataset's files are not on this server, or cannot be"
                         " read; GET /v1/datasets says which are available")
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():  # torch's OOM is a RuntimeError
        return UserError("out-of-memory", "ran out of memory; use a smaller train.batch_size or model preset")
    if isinstance(exc, SQLAlchemyError | ConnectionError | TimeoutError):
        return UserError("storage-unavailable", "the database or the broker was unreachable; retry later")
    return UserError("internal", "an internal error stopped this job; the operator's log has the details")


def time_limit(limit: float, step: int) -> UserError:
    return UserError("time-limit", f"time limit of {limit:g} s exceeded at step {step}")


def worker_lost(attempts: int) -> UserError:
    return UserError("worker-lost", f"gave up after {attempts} attempts: the worker was lost each time")
