"""One of everything a tenant can own, written through the api and the store (no mocks)."""

from __future__ import annotations

import numpy as np

from models.datasets import ImageSet
from models.images import grid_png
from models.uploads import to_npz_bytes
from store import runs
from store.db import session_scope
from store.tables import Dataset, SampleJob, Sweep, WebhookEndpoint

TINY = {"dataset": "digits", "regularizer": "tv", "lambda": 0.1, "model": {"preset": "unet-xs"},
        "train": {"steps": 20, "batch_size": 16, "log_every": 5}, "preview": {"n": 4, "steps": 10}}
IMAGES = np.zeros((4, 8, 8, 1), np.uint8)  # (N, H, W, C)
CORRUPT = b"\x00not safetensors"


def samples_npz() -> bytes:
    from worker.samples import npz_bytes  # the format the worker stores

    return npz_bytes(IMAGES)


def valid_checkpoint() -> bytes:
    """A real (untrained) unet-xs state for 8x8 digits, as the trainer would save it."""
    from models import checkpoint, networks
    from models.spec import RunSpec

    weights = networks.build_unet("unet-xs", 8, 1).state_dict()
    ema = {k: v.clone() for k, v in weights.items()}
    state = checkpoint.TrainState(spec=RunSpec.model_validate(TINY).to_json(), step=10, image_size=8, channels=1,
                                  model=weights, ema=ema, optimizer={}, rng={}, rng_device="cpu",
                                  ema_step=10)
    return checkpoint.to_bytes(state)


def add_checkpoint(run_id: str, data: bytes = CORRUPT) -> str:
    """A checkpoint row; the default bytes are not safetensors: stored data gone bad (disk, a bug)."""
    with session_scope() as session:
        return runs.save_checkpoint(session=session, run_id=run_id, step=10, data=data, is_final=True, keep=3)


def seed_tenant(client, headers: dict[str, str], tenant: str, checkpoint: bytes = CORRUPT) -> dict[str, str]:
    """A run with events, metrics, a checkpoint, a preview and a sample job; a dataset; a sweep;
    a webhook endpoint.

    Returns path parameter name -> an id this tenant owns."""
    run_id = client.post("/v1/runs", json=TINY, headers=headers).raise_for_status().json()["id"]
    checkpoint_id = add_checkpoint(run_id, checkpoint)
    with session_scope() as session:
        runs.record_progress(session=session, run_id=run_id, step=5, metrics={"loss": 1.0})
        jobs = [SampleJob(tenant=tenant, run_id=run_id, checkpoint_id=checkpoint_id, kind=kind, status="succeeded",
                          params={"n": 4}, images_npz=samples_npz(), grid_png=grid_png(IMAGES))
                for kind in ("preview", "on_demand")]
        dataset = Dataset(tenant=tenant, name="tiny.npz", sha256=f"{tenant:0<64}"[:64],
                          data=to_npz_bytes(ImageSet(IMAGES, None)),
                          info={"image_size": 8, "channels": 1, "count": 4, "num_classes": None})
        sweep = Sweep(tenant=tenant, base=TINY, vary={"lambda": [0.0, 0.1]})
        endpoint = WebhookEndpoint(tenant=tenant, url="https://1.1.1.1/hooks", events=["run.succeeded"],
                                   secret="whsec_AAAA")
        session.add_all([*jobs, dataset, sweep, endpoint])
        session.flush()
        return {"run_id": run_id, "checkpoint_id": checkpoint_id, "sample_id": jobs[1].id,
                "dataset_id": dataset.id, "sweep_id": sweep.id, "endpoint_id": endpoint.id, "index": "0"}
