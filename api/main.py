"""The FastAPI app: one router per resource, problem+json errors."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.routers import catalog, checkpoints, health, runs, samples


def create_app() -> FastAPI:
    app = FastAPI(
        title="regdiff",
        version="1",
        description="Train small image diffusion models with an extra loss on the denoised image.",
    )
    errors.install(app)
    for module in (health, catalog, runs, samples, checkpoints):
        app.include_router(module.router)
    return app


app = create_app()
