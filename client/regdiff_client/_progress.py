"""A tqdm bar over a run's training steps, with the latest losses as its postfix."""

from __future__ import annotations

from typing import Self

from tqdm.auto import tqdm

from .types import Run

SHOWN_METRICS = ("loss", "diffusion_loss", "penalty_weighted", "val_loss")


class RunProgress:
    """`update(run)` on every poll; a no-op when disabled so callers need no branches."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar: tqdm | None = None

    def update(self, run: Run) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = tqdm(total=run.total_steps, desc=run.id, unit="step", dynamic_ncols=True)
        self._bar.total = run.total_steps
        losses = [
            f"{k}={run.metrics[k]:.4g}" for k in SHOWN_METRICS if isinstance(run.metrics.get(k), (int, float))
        ]
        self._bar.set_postfix_str(" ".join([run.status, *losses]), refresh=False)
        self._bar.update(run.step - self._bar.n)  # update(), not n=: tqdm's rate estimate needs it
        self._bar.refresh()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
