"""The end-of-run evaluation under the worker: samples from the final state, scored against the
real set by the classifier cached for that dataset (models/evaluation.py has the math).

The classifier is trained once per labelled dataset and cached in the database under
`<dataset>:<content hash>:<arch>:<steps>:<batch>:<lr>:<seed>` (everything that changes its
weights), so every worker scores every run on a dataset with the same bytes (FCD values are only
comparable under one classifier). Besides the evaluator's own
report (FCD, confidence, every registered regularizer with default params), the run's *own*
penalty, its weighted regularizer with its params, is measured on the samples and on real
images: `penalty: {"samples": ..., "samples_ci": ..., "real": ..., "real_ci": ...}`, the numbers a
sweep report puts side by side, with its per-sample values in `per_sample.penalty` for
models/verdict.py.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from models import evaluation, regularizers
from models.datasets import ImageSet, to_tensor
from models.samplers import sample_from_state
from models.spec import RunSpec
from store import datasets as stored
from store import runs
from store.db import session_scope
from store.leases import Lease
from store.settings import get_settings
from worker import errors
from worker.retry import DatabaseUnavailable, in_transaction

log = logging.getLogger(__name__)


def dataset_key(name: str, data: ImageSet, steps: int) -> str:
    """Cache key of a dataset's classifier: its name, a hash of its content, and its training recipe."""
    digest = hashlib.sha256()
    digest.update(str(data.images.shape).encode())
    digest.update(np.ascontiguousarray(data.images).tobytes())
    if data.labels is not None:
        digest.update(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes())
    recipe = evaluation.recipe_key(**(evaluation.RECIPE | {"steps": steps}))
    return f"{name}:{digest.hexdigest()[:24]}:{recipe}"


def labelled(data: ImageSet) -> bool:
    return data.labels is not None and len(np.unique(data.labels)) >= 2


def cached_classifier(name: str, data: ImageSet, *, device: torch.device, steps: int) -> tuple[bytes, str, bool]:
    """(classifier bytes, cache key, whether it came from the cache); trains and caches on a miss."""
    key = dataset_key(name, data, steps)
    state = in_transaction(lambda session: stored.get_classifier(session=session, key=key), f"classifier {key}: read")
    if state is not None:
        return state, key, True
    started = time.monotonic()
    with _one_thread_on_cpu(device):
        state = evaluation.train_classifier(data, device=device, steps=steps)
    log.info("trained the evaluation classifier for %s in %.1f s", key, time.monotonic() - started)
    state = in_transaction(lambda session: stored.put_classifier(session=session, key=key, data=state),
                           f"classifier {key}: write")
    return state, key, False


@contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """The classifier's convs are tiny: on CPU two intra-op threads mostly wait on each other (measured
    several times slower than one thread on a busy 2-core machine, and no faster on an idle one)."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def own_penalty(spec: RunSpec, samples: np.ndarray, data: ImageSet, device: torch.device
                ) -> tuple[dict[str, Any], list[float]] | None:
    """The run's weighted regularizer (its names, weights and params) on samples and on real images.

    Measured whatever lambda is, so the lambda = 0 baseline shows where the samples start from.
    The real images are the evaluator's fixed seeded subset, the same for every run on the set.
    Returns (the summary with its intervals, the per-sample values on samples).
    """
    if not spec.regularizer:
        return None
    penalty = regularizers.build([term.model_dump() for term in spec.regularizer])
    real = evaluation.real_subset(data)  # the subset evaluate() scores against
    summary, values = evaluation.penalty_summary(penalty, to_tensor(samples, device), to_tensor(real, device))
    return {"terms": [term.model_dump(mode="json") for term in spec.regularizer], **summary}, evaluation.compact(values)


def score(spec: RunSpec, samples: np.ndarray, data: ImageSet, *, classifier_state: bytes | None,
          device: torch.device) -> dict[str, Any]:
    """Samples uint8 (N, H, W, C) -> the evaluation dict (no database; the bench calls it in-process)."""
    result = evaluation.evaluate(samples, data, classifier_state=classifier_state, device=device)
    own = own_penalty(spec, samples, data, device)
    result["penalty"] = own and own[0]
    if own:
        result["per_sample"]["penalty"] = own[1]
    return result


def n_samples(spec: RunSpec) -> int:
    """The run's own `evaluation.n_samples`, else the server's REGDIFF_EVAL_SAMPLES."""
    n = spec.evaluation.n_samples
    return get_settings().eval_samples if n is None else n


def evaluate_final(run_id: str, spec: RunSpec, state: bytes, data: ImageSet, *, device: torch.device,
                   lease: Lease) -> dict[str, Any] | None:
    """The evaluation of a run's final state, or None when it is off (n_samples 0).

    An evaluation that fails does not fail the run (the model is fine; its report is not): the
    run gets `{"error": ...}` and a warning event says why. A database that stays unreachable is
    not the evaluation's failure: DatabaseUnavailable goes up, and the run is given back. Its events are fenced by `lease` like
    every write of the worker (LeaseLost when another claim owns the run now): a worker frozen
    past its lease during the evaluation must not add them to the new owner's run.
    """
    n = n_samples(spec)
    if n <= 0:
        return None
    settings = get_settings()
    try:
        t0 = time.monotonic()
        samples = sample_from_state(state, n=n, sampler="ddim", steps=spec.evaluation.steps, eta=0.0,
                                    seed=spec.evaluation.seed, device=device)  # (N, H, W, C) uint8
        t1 = time.monotonic()
        classifier = None
        state_bytes: bytes | None = None
        if labelled(data):
            state_bytes, key, cached = cached_classifier(spec.dataset, data, device=device,
                                                         steps=settings.eval_classifier_steps)
            classifier = {"key": key, "cached": cached}
        t2 = time.monotonic()
        with _one_thread_on_cpu(device):
            result = score(spec, samples, data, classifier_state=state_bytes, device=device)
        t3 = time.monotonic()
    except DatabaseUnavailable:
        raise
    except Exception as exc:  # reported on the run, never fatal to it
        log.exception("run %s: evaluation failed", run_id)
        error = errors.user_error(exc)
        with session_scope() as session:
            runs.add_event(session=session, run_id=run_id, type="evaluation", level="warning",
                           message=f"evaluation failed: {error}", lease=lease)
        return {"error": str(error), "code": error.code}
    result["sampler"] = {"name": "ddim", "steps": spec.evaluation.steps, "eta": 0.0, "seed": spec.evaluation.seed}
    result["classifier"] = classifier
    result["seconds"] = {"sampling": round(t1 - t0, 3), "classifier": round(t2 - t1, 3),
                         "scoring": round(t3 - t2, 3)}
    with session_scope() as session:
        runs.add_event(session=session, run_id=run_id, type="evaluation", message=summary(result),
                       data={k: result.get(k) for k in ("fcd", "confidence", "penalty")}, lease=lease)
    return result


def summary(result: dict[str, Any]) -> str:
    """One line for the event log: "evaluation: n 64, fcd 12.3, confidence 0.87, penalty 0.21 on samples (real 0.19)"."""
    parts = [f"n {result['n_samples']}"]
    if result.get("fcd") is not None:
        parts.append(f"fcd {result['fcd']:g}")
    if result.get("confidence") is not None:
        parts.append(f"confidence {result['confidence']:g}")
    penalty = result.get("penalty")
    if penalty:
        parts.append(f"penalty {penalty['samples']:g} on samples (real {penalty['real']:g})")
    return "evaluation: " + ", ".join(parts)
