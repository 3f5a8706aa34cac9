"""The HTTP service: health and readiness now; the platform webhooks mount here later."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from bot.wiring import Companion


def create_app(companion: Companion, *, run_scheduler: bool = False) -> FastAPI:
    """The ASGI app; with ``run_scheduler`` the periodic sweep runs for the app's lifetime."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        scheduler = None
        if run_scheduler:
            from scheduler.runner import start

            scheduler = start(
                db=companion.db,
                engine=companion.engine,
                interval_seconds=companion.settings.scheduler.interval_seconds,
            )
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=False)

    app = FastAPI(title="Homework Companion", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process is up and serving."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: the database answers. 503 tells a load balancer to hold traffic."""

        def ping() -> None:
            with companion.db.engine.connect() as connection:
                connection.execute(text("SELECT 1"))

        try:
            await run_in_threadpool(ping)
        except Exception:  # the reason goes to the log, not to the caller
            logging.getLogger("companion").exception("readiness check failed")
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ready", "database": companion.db.dialect})

    return app
