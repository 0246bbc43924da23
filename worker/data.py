"""Images for a spec's dataset: a built-in (cached under REGDIFF_HOME) or a tenant's upload."""

from __future__ import annotations

from models import datasets, uploads
from store import datasets as stored
from store.db import session_scope
from store.settings import get_settings
from worker.errors import SourceMissing


def load_images(name: str, *, tenant: str) -> datasets.ImageSet:
    settings = get_settings()
    if name.startswith("upload:"):
        with session_scope() as session:
            data = stored.dataset_bytes(session=session, tenant=tenant, dataset_id=name)
        if data is None:
            raise SourceMissing(f"dataset {name!r} no longer exists")
        return uploads.read_npz_bytes(data)
    # mnist, fashion-mnist and cifar10 are read from REGDIFF_DATA_DIR; never downloaded unless allowed.
    return datasets.load_builtin(name, settings.cache_dir, data_dir=settings.resolved_data_dir,
                                 allow_download=settings.allow_download)
