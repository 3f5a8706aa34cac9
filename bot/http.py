"""The HTTP service: health, readiness and the platform webhooks; background senders and pollers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from bot import metrics
from bot.limits import BodyLimit
from bot.wiring import Companion
from channels.base import AsyncOutputChannel
from channels.sender import OutboxSender, RateLimiter, SenderIdentity, SharedBudget
from channels.telegram import ALLOWED_UPDATES, MalformedUpdate, secret_matches

log = logging.getLogger("companion")
TELEGRAM_SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def app_from_env() -> FastAPI:
    """The app of one worker of `companion run --workers N` (a uvicorn factory).

    Each worker process builds its own companion from the same configuration
    ($COMPANION_CONFIG and the environment); the parent already upgraded the
    schema. Every worker runs the senders and the scheduler: due rows and
    outbox rows are claimed with ``FOR UPDATE SKIP LOCKED`` and leases, so
    workers share that work without doing any of it twice.
    """
    from bot import logs
    from bot.config import load_settings
    from bot.wiring import build

    settings = load_settings()
    logs.configure(settings)
    return create_app(build(settings, upgrade=False), run_scheduler=settings.scheduler.enabled)


def create_app(companion: Companion, *, run_scheduler: bool = False, background: bool = True) -> FastAPI:
    """The ASGI app.

    On start-up it connects the configured platforms (Telegram: getMe, then
    setWebhook with the secret, or deleteWebhook and long polling). With
    ``background`` it also runs the outbox senders and the poller, and with
    ``run_scheduler`` the periodic sweep; tests turn those off and drive
    ``app.state.senders`` themselves.
    """
    settings = companion.settings

    identity = SenderIdentity(companion.db)

    def sender(channel: AsyncOutputChannel, limits: Any) -> OutboxSender:
        """An outbox sender for one push channel, at that platform's configured pace shared by all processes."""
        shared = SharedBudget(companion.db, channel.name, limits.messages_per_second)
        return OutboxSender(
            db=companion.db,
            channel=metrics.instrumented(channel),  # counts each delivery's result for /metrics
            clock=companion.clock,
            prompts=companion.engine.prompts,
            limiter=RateLimiter(limits.messages_per_second, limits.per_chat_per_second, shared=shared),
            identity=identity,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        app.state.senders = {}
        if background:  # register, reclaim the leases of processes that are gone, then beat
            await asyncio.to_thread(identity.start)
        telegram = companion.telegram
        if telegram is not None:
            await telegram.start()
            link = f"https://t.me/{telegram.username}?start={{code}}"
            companion.engine.settings = dataclasses.replace(companion.engine.settings, join_links=(link,))
            if settings.telegram.webhook_url:
                assert settings.telegram_webhook_secret is not None
                await telegram.bot.set_webhook(
                    settings.telegram.webhook_url,
                    secret_token=settings.telegram_webhook_secret.get_secret_value(),
                    allowed_updates=list(ALLOWED_UPDATES),
                )
                log.info("telegram: webhook mode at %s", settings.telegram.webhook_path)
            else:
                await telegram.bot.delete_webhook()
                log.info("telegram: long polling as @%s", telegram.username)
                if background:
                    tasks.append(asyncio.create_task(telegram.poll(stop, timeout=settings.telegram.polling_timeout)))
            app.state.senders["telegram"] = sender(telegram, settings.telegram)
        slack = companion.slack
        socket_mode = None
        if slack is not None:
            app.state.senders["slack"] = sender(slack, settings.slack)
            if settings.slack_app_token is not None and background:
                from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

                socket_mode = AsyncSocketModeHandler(slack.app, settings.slack_app_token.get_secret_value())
                try:
                    # The first URL is fetched here, not in connect_async(), which retries any error
                    # forever: a wrong or revoked app token must fail start-up, not hang it.
                    socket_mode.client.wss_uri = await socket_mode.client.issue_new_wss_url()
                except BaseException:
                    await socket_mode.close_async()
                    raise
                await socket_mode.connect_async()
                log.info("slack: Socket Mode")
        if companion.whatsapp is not None:
            app.state.senders["whatsapp"] = sender(companion.whatsapp, settings.whatsapp)
            number = companion.whatsapp.from_number.lstrip("+")
            links = (*companion.engine.settings.join_links, f"https://wa.me/{number}?text=join%20{{code}}")
            companion.engine.settings = dataclasses.replace(companion.engine.settings, join_links=links)
        if background:
            tasks.extend(asyncio.create_task(sender.run(stop)) for sender in app.state.senders.values())
            senders = list(app.state.senders.values())

            def wake_senders() -> None:
                for each in senders:
                    each.wake()

            # A reply the job runner wrote goes out at once, not at the senders' next idle poll.
            companion.engine.on_outbox = wake_senders
            if companion.jobs is not None:
                tasks.append(asyncio.create_task(companion.jobs.run(stop)))
        scheduler = None
        if run_scheduler:
            from scheduler.runner import start

            scheduler = start(
                db=companion.db,
                engine=companion.engine,
                interval_seconds=settings.scheduler.interval_seconds,
                retention=settings.retention_policy(),
                on_sweep=metrics.record_sweep,
            )
        try:
            yield
        finally:
            stop.set()
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(identity.stop)
            if socket_mode is not None:
                await socket_mode.close_async()
            if telegram is not None:
                await telegram.stop()

    app = FastAPI(title="Homework Companion", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(
        BodyLimit, max_bytes=settings.server.max_body_bytes, timeout=settings.server.body_timeout_seconds
    )

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
            log.exception("readiness check failed")
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ready", "database": companion.db.dialect})

    if companion.telegram is not None and settings.telegram.webhook_url:
        secret = settings.telegram_webhook_secret.get_secret_value() if settings.telegram_webhook_secret else ""
        telegram = companion.telegram

        @app.post(settings.telegram.webhook_path)
        async def telegram_webhook(request: Request) -> JSONResponse:
            """Telegram's webhook: the secret header first (fail closed), then record, then 200."""
            given = request.headers.get(TELEGRAM_SECRET_HEADER)
            if given is None:
                return JSONResponse({"error": "missing secret"}, status_code=401)
            if not secret or not secret_matches(secret, given):
                return JSONResponse({"error": "bad secret"}, status_code=403)
            try:
                data = await request.json()
            except (ValueError, RecursionError):  # RecursionError: JSON nested too deeply to parse
                return JSONResponse({"error": "not JSON"}, status_code=400)
            if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
                return JSONResponse({"error": "not an update"}, status_code=400)
            try:
                await telegram.process(data)
            except MalformedUpdate:  # not an update Telegram would send: refused, nothing recorded
                return JSONResponse({"error": "not an update"}, status_code=400)
            except Exception:  # Telegram redelivers; the update_id dedupe makes that safe
                log.exception("telegram update %s could not be recorded", data.get("update_id"))
                return JSONResponse({"error": "retry"}, status_code=500)
            return JSONResponse({})

    if companion.whatsapp is not None:
        whatsapp = companion.whatsapp
        wa = settings.whatsapp

        async def verified_form(request: Request, public_url: str) -> dict[str, str] | None:
            form = await request.form()
            params = {key: str(value) for key, value in form.items()}
            # The URL Twilio signed is the public one, not what the proxy forwarded to us.
            if not whatsapp.verify(public_url, params, request.headers.get("X-Twilio-Signature")):
                return None
            return params

        @app.post(wa.inbound_path)
        async def whatsapp_inbound(request: Request) -> Response:
            """Twilio's inbound webhook: signature first (403 and nothing touched), then record, then empty TwiML."""
            assert wa.public_url is not None
            params = await verified_form(request, wa.public_url)
            if params is None:
                return JSONResponse({"error": "bad signature"}, status_code=403)
            try:
                await whatsapp.inbound(params)
            except Exception:  # Twilio retries on errors; MessageSid dedupe makes that safe
                log.exception("whatsapp message could not be recorded")
                return JSONResponse({"error": "retry"}, status_code=500)
            return Response("<Response/>", media_type="text/xml")

        @app.post(wa.status_path)
        async def whatsapp_status(request: Request) -> Response:
            """Delivery status callbacks, signature-checked the same way."""
            params = await verified_form(request, wa.status_callback_url or "")
            if params is None:
                return JSONResponse({"error": "bad signature"}, status_code=403)
            await whatsapp.status(params)
            return Response(status_code=204)

    if companion.slack is not None:
        from slack_bolt.adapter.starlette.async_handler import to_async_bolt_request, to_starlette_response
        from slack_sdk.signature import SignatureVerifier

        from channels.slack import well_formed

        bolt = companion.slack.app
        assert settings.slack_signing_secret is not None
        verifier = SignatureVerifier(settings.slack_signing_secret.get_secret_value())

        @app.post("/slack/events")
        async def slack_events(request: Request) -> Response:
            """Slash commands, interactivity and events: signature (401), shape (400), then bolt.

            What bolt's request handler does for a POST, with two checks in
            front: bolt parses the body before it checks the signature, and
            both raise on malformed input (a non-numeric timestamp, invalid
            UTF-8, a payload that is not a JSON object, JSON nested too deeply,
            a button tap without actions, two response_urls). That is the caller's error, not
            ours; bolt still verifies the signature again itself.
            """
            body = await request.body()
            try:
                signed = verifier.is_valid_request(body, dict(request.headers))
            except ValueError:  # a timestamp that is not a number, a body that is not UTF-8
                signed = False
            if not signed:
                return JSONResponse({"error": "invalid signature"}, status_code=401)
            try:
                bolt_request = to_async_bolt_request(request, body)
            except (ValueError, TypeError, AttributeError, LookupError, RecursionError):
                return JSONResponse({"error": "malformed request"}, status_code=400)
            if not well_formed(bolt_request.body):
                return JSONResponse({"error": "malformed request"}, status_code=400)
            return to_starlette_response(await bolt.async_dispatch(bolt_request))

    from bot.web import mount

    mount(app, companion)  # the dashboard; the try-it chat too when enabled (refused on a public host)
    metrics.mount(app, companion)  # /metrics, only with COMPANION_METRICS_TOKEN and then only with it
    app.add_middleware(metrics.InboundMetrics, paths=metrics.webhook_paths(companion))
    return app
