"""The bare-stack ceiling: the same uvicorn settings serving one route that checks the secret and parses the update.

    python -m bench.bare --port 8099 [--workers 2]   (secret in $TELEGRAM_WEBHOOK_SECRET)

It does what the real webhook does before the companion's own work (header,
constant-time secret check, JSON, ``telegram.Update.de_json``) and nothing
after it, so the ratio of the two is the share of the request the companion
itself costs.
"""

from __future__ import annotations

import argparse
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from telegram import Bot, Update

from channels.telegram import secret_matches

HEADER = "X-Telegram-Bot-Api-Secret-Token"


def create() -> FastAPI:
    secret = os.environ["TELEGRAM_WEBHOOK_SECRET"]
    bot = Bot(os.environ.get("TELEGRAM_BOT_TOKEN", "123456:BARE"))
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/telegram/hook")
    async def hook(request: Request) -> JSONResponse:
        if not secret_matches(secret, request.headers.get(HEADER)):
            return JSONResponse({"error": "bad secret"}, status_code=403)
        data = await request.json()
        Update.de_json(data, bot)
        return JSONResponse({})

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    # The same call `companion run` makes: uvicorn's defaults pick uvloop and httptools when installed.
    uvicorn.run(
        "bench.bare:create",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        log_config=None,
    )


if __name__ == "__main__":
    main()
