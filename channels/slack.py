"""Slack for therapists: verified commands, the homework modal, alerts with Acknowledge, Block Kit digests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from slack_bolt import BoltResponse
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from channels.base import Progress, Rejected, RetryLater, Transient, Unreachable, render_plain, send_parts
from channels.slack_blocks import acknowledged_blocks, alert_blocks, digest_messages, plan_modal
from dialogs import access, safety_plan
from dialogs.digest import build_client_digest
from dialogs.engine import Engine
from dialogs.homework import missing_elements
from dialogs.llm_steps import with_narrative
from dialogs.messages import Inbound, Outbound
from storage import Client, Database, Therapist
from storage import queries as q
from storage.models import SAFETY_PLAN_FIELDS

log = logging.getLogger("companion.slack")

NAME: Final = "slack"
MODAL: Final = "homework_modal"
PLAN_MODAL: Final = "plan_modal"
UNREACHABLE_ERRORS: Final = frozenset(
    {"channel_not_found", "user_not_found", "account_inactive", "is_archived", "not_in_channel", "user_disabled"}
)
_EVENT_OBJECTS: Final = ("message", "previous_message", "workflow_step")  # bolt calls .get() on these
_TEXT_FIELDS: Final = ("title", "what", "when", "where", "with_whom", "record", "rationale", "due", "nudges")


class SlackChannel:
    """The Slack adapter: slash commands, the modal and button taps in; outbox rows out.

    Every request reaches us through bolt, which verifies the signing secret
    (bad, stale or missing signatures get 401 before any handler runs). Each
    handler acks at once (Slack's 3-second limit) and then records the turn
    through the engine in one transaction; ``trigger_id`` is the message id,
    so a retried request is processed once. Therapists only: a Slack user
    who has not linked their account gets an explanation and nothing else.
    """

    name: Final = NAME

    def __init__(self, *, client: AsyncWebClient, signing_secret: str, db: Database, engine: Engine) -> None:
        self.client, self.db, self.engine = client, db, engine
        self.app = AsyncApp(client=client, signing_secret=signing_secret, process_before_response=True)
        self.app.middleware(self._well_formed)
        self.app.command("/companion")(self._companion)
        self.app.command("/homework")(self._homework)
        self.app.view(MODAL)(self._submit)
        self.app.action("ack_alert")(self._ack_alert)
        self.app.command("/plan")(self._plan)
        self.app.view(PLAN_MODAL)(self._submit_plan)
        self.app.action("mark_reviewed")(self._ack_alert)  # the digest's button: its value is the command

    # --- inbound ------------------------------------------------------------------------

    @staticmethod
    async def _well_formed(body: dict[str, Any], next_: Callable[[], Awaitable[BoltResponse]]) -> BoltResponse:
        """Socket Mode's envelopes reach bolt without the HTTP route's check (bot.http): the same shape rule here."""
        if not well_formed(body):
            return BoltResponse(status=400, body="")
        return await next_()

    async def _turn(self, user: str, text: str, message_id: str) -> None:
        inbound = Inbound(channel=NAME, address=user, text=text, message_id=message_id)
        await asyncio.to_thread(self._record, inbound)

    def _record(self, inbound: Inbound) -> None:
        with self.db.unit_of_work() as session:
            self.engine.handle(session, inbound)

    def _therapist(self, user: str) -> tuple[Therapist, list[Client]] | None:
        with self.db.unit_of_work() as session:
            who = q.identity(session, channel=NAME, address=user)
            therapist = session.get(Therapist, who.therapist_id) if who and who.therapist_id else None
            if therapist is None:
                return None
            return therapist, list(access.own_clients(session, therapist_id=therapist.id or 0))

    async def _companion(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """``/companion invite Sam`` is the console's ``/invite Sam``; ``/companion link CODE`` links the account.

        An unlinked user gets the explanation in the ack itself (ephemeral) and
        nothing else. With ``process_before_response`` bolt sends the ack when
        this listener returns, so an acknowledged command has been recorded
        (Slack retries what it saw no ack for); the turn is one short unit of
        work, well inside Slack's 3 seconds.
        """
        words = (body.get("text") or "").strip()
        head, _, rest = words.partition(" ")
        if head.casefold() == "link":
            text = f"/start {rest.strip()}"
        elif self._therapist(body["user_id"]) is None:
            await ack(text=self.engine.prompts.text("slack.not_linked"))
            return
        else:
            text = "/" + words if words else "/help"
        await ack()
        await self._turn(body["user_id"], text, f"cmd:{body.get('trigger_id')}")

    async def _homework(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        found = self._therapist(body["user_id"])
        if found is None:
            await ack(text=self.engine.prompts.text("slack.not_linked"))
            return
        _, clients = found
        if not clients:
            await ack(text=self.engine.prompts.text("therapist.clients.empty"))
            return
        await ack()
        await self.client.views_open(trigger_id=body["trigger_id"], view=self._modal(clients))

    def _modal(self, clients: list[Client], *, notice: str | None = None, metadata: str = "") -> dict[str, Any]:
        t = self.engine.prompts.text
        options = [{"text": {"type": "plain_text", "text": c.name[:75]}, "value": c.name[:150]} for c in clients[:100]]
        types = [
            {"text": {"type": "plain_text", "text": kind.label[:75]}, "value": key}
            for key, kind in self.engine.prompts.homework_types.items()
        ]

        def text_input(field: str, *, optional: bool = True, multiline: bool = False) -> dict[str, Any]:
            return {
                "type": "input",
                "block_id": field,
                "optional": optional,
                "label": {"type": "plain_text", "text": t(f"field.{field}")},
                "element": {"type": "plain_text_input", "action_id": "value", "multiline": multiline},
            }

        blocks: list[dict[str, Any]] = []
        if notice:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": notice}})
        blocks += [
            {
                "type": "input",
                "block_id": "client",
                "label": {"type": "plain_text", "text": t("slack.client_label")},
                "element": {"type": "static_select", "action_id": "value", "options": options},
            },
            text_input("title", optional=False),
            {
                "type": "input",
                "block_id": "type",
                "label": {"type": "plain_text", "text": t("field.type")},
                "element": {
                    "type": "static_select",
                    "action_id": "value",
                    "options": types,
                    "initial_option": types[-1],
                },
            },
            text_input("what", multiline=True),
            text_input("when"),
            text_input("where"),
            text_input("with_whom"),
            text_input("record"),
            text_input("rationale", multiline=True),
            text_input("due"),
            text_input("nudges"),
        ]
        return {
            "type": "modal",
            "callback_id": MODAL,
            "title": {"type": "plain_text", "text": t("slack.modal_title")},
            "submit": {"type": "plain_text", "text": t("slack.modal_submit")},
            "private_metadata": metadata,
            "blocks": blocks,
        }

    async def _submit(self, ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        """Validate, name what is missing once (save again to save anyway), then set it through the engine."""
        user = body["user"]["id"]
        found = self._therapist(user)
        values = view.get("state", {}).get("values", {})

        def value(block: str) -> str:
            element = values.get(block, {}).get("value", {})
            chosen = element.get("selected_option") or {}
            return str(element.get("value") or chosen.get("value") or "").strip()

        t = self.engine.prompts.text
        if found is None:
            await ack(response_action="errors", errors={"client": t("slack.not_linked")})
            return
        _, clients = found
        name = value("client")
        # A crafted payload may name anyone: only this therapist's own clients are accepted.
        if not any(c.name == name for c in clients):
            await ack(response_action="errors", errors={"client": t("slack.not_your_client")})
            return
        if not value("title"):
            await ack(response_action="errors", errors={"title": t("slack.title_required")})
            return
        fields = {f: value(f) for f in _TEXT_FIELDS if value(f)}
        fields["type"] = value("type") or "custom"
        missing = missing_elements(fields)
        warned = view.get("private_metadata") == "warned"
        if missing and not warned:
            notice = t("therapist.homework.missing", missing=", ".join(t(f"therapist.missing.{m}") for m in missing))
            notice += " " + t("slack.save_anyway")
            await ack(response_action="update", view=self._modal(clients, notice=notice, metadata="warned"))
            return
        await ack()
        lines = [f"/homework {name}"] + [f"{f.replace('_', ' ')}: {' '.join(v.split())}" for f, v in fields.items()]
        key = f"modal:{view.get('id')}:{view.get('hash')}"
        await self._turn(user, "\n".join(lines), key)
        if missing:  # the engine shows its review for an incomplete homework; this submission says "save"
            await self._turn(user, "save", key + ":save")

    async def _plan(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """``/plan [NAME]``: the safety plan modal, filled in with the named client's plan so far."""
        found = self._therapist(body["user_id"])
        if found is None:
            await ack(text=self.engine.prompts.text("slack.not_linked"))
            return
        therapist, clients = found
        if not clients:
            await ack(text=self.engine.prompts.text("therapist.clients.empty"))
            return
        await ack()
        named = " ".join((body.get("text") or "").split()).casefold()
        chosen = next((c for c in clients if c.name_key == named), None)
        current = await asyncio.to_thread(self._plan_values, therapist, chosen) if chosen else {}
        view = plan_modal(self.engine.prompts, clients, chosen, current)
        await self.client.views_open(trigger_id=body["trigger_id"], view=view)

    def _plan_values(self, therapist: Therapist, client: Client) -> dict[str, str]:
        with self.db.unit_of_work() as session:
            own = access.own_client(session, therapist_id=therapist.id or 0, client_id=client.id or 0)
            plan = safety_plan.plan_of(session, own.id or 0) if own else None
            if plan is None:
                return {}
            access.audit(
                session,
                actor=access.therapist_actor(therapist.id or 0),
                action="plan.read",
                now=self.engine.clock.now(),
                client=own,
                via="slack",
            )
            return {f: "\n".join(safety_plan.items(getattr(plan, f))) for f in SAFETY_PLAN_FIELDS}

    async def _submit_plan(self, ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        """Only this therapist's own clients; the plan goes through the engine as ``/plan NAME`` + step lines."""
        user = body["user"]["id"]
        found = self._therapist(user)
        values = view.get("state", {}).get("values", {})

        def value(block: str) -> str:
            element = values.get(block, {}).get("value", {})
            chosen = element.get("selected_option") or {}
            return str(element.get("value") or chosen.get("value") or "").strip()

        t = self.engine.prompts.text
        if found is None:
            await ack(response_action="errors", errors={"client": t("slack.not_linked")})
            return
        name = value("client")
        if not any(c.name == name for c in found[1]):
            await ack(response_action="errors", errors={"client": t("slack.not_your_client")})
            return
        await ack()
        # Lines inside a step become "; " (one line per step in the command); an emptied step is cleared.
        lines = [f"/plan {name}"] + [
            f"{f}: {'; '.join(safety_plan.items(value(f))) or '-'}" for f in SAFETY_PLAN_FIELDS
        ]
        await self._turn(user, "\n".join(lines), f"modal:{view.get('id')}:{view.get('hash')}")

    async def _ack_alert(self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        await self._turn(body["user"]["id"], str(action.get("value") or ""), f"action:{body.get('trigger_id')}")

    # --- outbound ---------------------------------------------------------------------

    async def send(self, address: str, message: Outbound, progress: Progress | None = None) -> str | None:
        """Post to a user (their DM with the app) or a channel, natively: Block Kit digests, alert buttons.

        The platform id is ``CHANNEL:TS`` of the last message posted (what
        chat.update needs: the DM's channel id, not the user's); a digest's
        parts (its messages, then the chart) are reported to ``progress``. An
        ``edit`` updates the message it names with chat.update and no buttons.
        """
        try:
            if message.kind == "edit":
                return await self._edit(message)
            if message.ref and message.ref.get("type") == "digest":
                return await self._send_digest(address, message, progress)
            if message.kind == "alert" and message.options:
                option = message.options[0]
                return _ts(
                    await self.client.chat_postMessage(
                        channel=address,
                        text=message.text,
                        blocks=alert_blocks(message.text, option.value, option.label),
                    )
                )
            return _ts(await self.client.chat_postMessage(channel=address, text=render_plain(message)[:39000]))
        except SlackApiError as exc:
            raise _delivery_error(exc) from exc
        except (TimeoutError, OSError) as exc:
            raise Transient(exc.__class__.__name__) from exc

    async def _edit(self, message: Outbound) -> str:
        target = str((message.ref or {}).get("platform_id") or "")
        channel, _, ts = target.partition(":")
        if not channel or not ts:
            raise Rejected("nothing to edit")
        await self.client.chat_update(
            channel=channel, ts=ts, text=message.text[:3000], blocks=acknowledged_blocks(message.text)
        )
        return target

    async def _send_digest(self, address: str, message: Outbound, progress: Progress | None) -> str | None:
        assert message.ref is not None
        model = await asyncio.to_thread(
            self._digest_model, int(message.ref["client_id"]), int(message.ref["therapist_id"])
        )
        if model is None:  # the client is gone: the text the outbox holds is still true
            return _ts(await self.client.chat_postMessage(channel=address, text=message.text[:39000]))
        parts: list[list[Any] | None] = list(digest_messages(model, self.engine.prompts))
        if any(p.debriefs for p in model.trend):
            parts.append(None)  # the chart, after the messages

        async def one(blocks: list[Any] | None) -> str | None:
            if blocks is not None:
                return _ts(await self.client.chat_postMessage(channel=address, text=message.text[:3000], blocks=blocks))
            # The digest is delivered; the chart is a bonus. A failed upload is
            # logged, not retried, so the digest itself is never posted twice.
            try:
                await self._upload_chart(address, model)
            except (SlackApiError, OSError) as exc:
                log.warning("slack: the adherence chart could not be attached (%s)", exc.__class__.__name__)
            return None

        return await send_parts(parts, one, progress)

    async def _upload_chart(self, address: str, model: Any) -> None:
        from dialogs.digest_chart import adherence_png

        png = await asyncio.to_thread(adherence_png, model, self.engine.prompts)
        channel = address
        if address.startswith("U"):  # files go to a conversation, not a user id
            opened = await self.client.conversations_open(users=address)
            channel = opened["channel"]["id"]
        await self.client.files_upload_v2(
            channel=channel,
            content=png,
            filename=f"adherence-{model.client_id}.png",
            title=self.engine.prompts.text("digest.chart.title", client=model.client),
        )

    def _digest_model(self, client_id: int, therapist_id: int) -> Any:
        with self.db.unit_of_work() as session:
            client, therapist = session.get(Client, client_id), session.get(Therapist, therapist_id)
            if client is None or therapist is None:
                return None
            model = build_client_digest(
                session, prompts=self.engine.prompts, client=client, therapist=therapist, now=self.engine.clock.now()
            )
            # LLM mode: the narrative this process wrote for the digest being delivered (never a new call).
            return with_narrative(
                session, llm=self.engine.llm, digest=model, prompts=self.engine.prompts, now=model.end, call=False
            )


def well_formed(body: Any) -> bool:
    """Whether a request has the shape Slack always gives its kind; bolt and the listeners rely on it.

    A slash command names its user; a button tap or a modal submission names
    its user in ``user.id``; an event, and a message inside one, is an
    object; actions are objects with an ``action_id``; a view is an object
    with a ``type``, and a submitted one a ``callback_id`` and
    ``state.values`` mapping blocks to elements to objects. Anything else is
    not from Slack. (Bolt and its middleware index into these before any
    listener runs, so this is checked in front of bolt.)
    """
    if not isinstance(body, dict):
        return False
    if "command" in body:
        return isinstance(body.get("user_id"), str) and bool(body["user_id"])
    event = body.get("event", {})
    if not isinstance(event, dict) or not all(isinstance(event.get(k, {}), dict) for k in _EVENT_OBJECTS):
        return False
    actions = body.get("actions", [{"action_id": ""}])
    if not (
        isinstance(actions, list)
        and actions
        and all(isinstance(a, dict) and isinstance(a.get("action_id"), str) for a in actions)
    ):
        return False
    view = body.get("view", {"type": ""})
    if not (isinstance(view, dict) and isinstance(view.get("type"), str)):
        return False
    kind = body.get("type")
    if kind not in ("block_actions", "view_submission"):
        return True  # nothing of ours listens to it: bolt answers "unhandled"
    user = body.get("user")
    if not (isinstance(user, dict) and isinstance(user.get("id"), str) and user["id"]):
        return False
    if kind == "block_actions":
        return "actions" in body
    state = view.get("state")
    values = state.get("values") if isinstance(state, dict) else None
    return (
        isinstance(view.get("callback_id"), str)
        and isinstance(values, dict)
        and all(
            isinstance(block, dict)
            and all(
                isinstance(element, dict) and isinstance(element.get("selected_option") or {}, dict)
                for element in block.values()
            )
            for block in values.values()
        )
    )


def _ts(response: Any) -> str | None:
    """``CHANNEL:TS`` of a posted message, from chat.postMessage's answer."""
    channel, ts = response.get("channel"), response.get("ts")
    return f"{channel}:{ts}" if isinstance(channel, str) and isinstance(ts, str) else None


def _delivery_error(exc: SlackApiError) -> Exception:
    response = exc.response
    error = str(response.get("error", "")) if response is not None else ""
    status = getattr(response, "status_code", 0)
    if status == 429 or error == "ratelimited":
        headers = getattr(response, "headers", {}) or {}
        retry = headers.get("Retry-After") or headers.get("retry-after") or 1
        return RetryLater(float(retry))
    if error in UNREACHABLE_ERRORS:
        return Unreachable(error)
    if status >= 500:
        return Transient(f"HTTP {status}")
    return Rejected(error or f"HTTP {status}")
