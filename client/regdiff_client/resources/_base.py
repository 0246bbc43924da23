from __future__ import annotations

from .._plan import AsyncRunner, SyncRunner


class SyncResource:
    def __init__(self, runner: SyncRunner):
        self._runner = runner


class AsyncResource:
    def __init__(self, runner: AsyncRunner):
        self._runner = runner
