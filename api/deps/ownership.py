"""Resources named in the path that the calling tenant owns.

Another tenant's answers 404, exactly like a missing one."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path

from api.deps.auth import TenantDep
from api.deps.session import SessionDep
from service import runs, samples, sweeps, webhooks
from store.tables import Run, SampleJob, Sweep, WebhookEndpoint


def owned_run(run_id: Annotated[str, Path()], session: SessionDep, tenant: TenantDep) -> Run:
    return runs.get_run(session, tenant, run_id)


def owned_sample(sample_id: Annotated[str, Path()], session: SessionDep, tenant: TenantDep) -> SampleJob:
    return samples.get_sample(session, tenant, sample_id)


def owned_sweep(sweep_id: Annotated[str, Path(max_length=64)], session: SessionDep, tenant: TenantDep) -> Sweep:
    return sweeps.get_sweep(session, tenant, sweep_id)


def owned_endpoint(endpoint_id: Annotated[str, Path(max_length=64)], session: SessionDep,
                   tenant: TenantDep) -> WebhookEndpoint:
    return webhooks.get_endpoint(session, tenant, endpoint_id)


OwnedRun = Annotated[Run, Depends(owned_run)]
OwnedSample = Annotated[SampleJob, Depends(owned_sample)]
OwnedSweep = Annotated[Sweep, Depends(owned_sweep)]
OwnedEndpoint = Annotated[WebhookEndpoint, Depends(owned_endpoint)]
