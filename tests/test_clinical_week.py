"""The clinical week: the safety plan set in Slack, PHQ-9 in Telegram chat with item 9 routed at once, the review loop.

One service with both platforms: the real python-telegram-bot against the
fake Bot API for the client, real signed Slack requests and the real
slack_sdk against the fake Web API for the therapist.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import select

from bot.http import create_app
from bot.wiring import Companion
from dialogs.clock import FrozenClock
from scheduler.sweep import sweep
from storage import Homework, MeasureResponse, SafetyFlag
from tests.conftest import make_companion
from tests.fake_slack import FakeSlackAPI, block_action, sign, slash_command, view_submission
from tests.fake_telegram import FakeBotAPI, callback_update, message_update
from tests.support import add_therapist, invite_code
from tests.test_slack import DANA, link
from tests.test_slack import SECRET as SLACK_SECRET
from tests.test_telegram import SECRET as TELEGRAM_SECRET
from tests.test_telegram import WEBHOOK

SAM = 2002


class Week:
    """One running service; Dana on Slack, Sam on Telegram."""

    def __init__(self, companion: Companion, slack: FakeSlackAPI, telegram: FakeBotAPI) -> None:
        self.companion, self.slack, self.telegram = companion, slack, telegram
        self.app = create_app(companion, background=False)
        self.ids = itertools.count(1)
        self.seen: dict[str, int] = {}

    async def __aenter__(self) -> Week:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://service")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self._lifespan.__aexit__(None, None, None)

    async def deliver(self) -> None:
        for name in ("telegram", "slack"):
            while await self.app.state.senders[name].drain_once():
                pass

    # --- Dana on Slack ---------------------------------------------------------------------

    async def slack_post(self, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(body, SLACK_SECRET, int(time.time()))}
        response = await self.http.post("/slack/events", content=body, headers=headers)
        await self.deliver()
        return response

    async def dana(self, command: str, text: str) -> str:
        await self.slack_post(slash_command(command, text, user_id=DANA, trigger_id=f"t.{next(self.ids)}"))
        return self.dana_new()

    def dana_new(self) -> str:
        texts = self.slack.texts(DANA)
        fresh = texts[self.seen.get("dana", 0) :]
        self.seen["dana"] = len(texts)
        return "\n".join(fresh)

    # --- Sam on Telegram -------------------------------------------------------------------

    async def _telegram(self, update: dict[str, Any]) -> str:
        headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
        response = await self.http.post("/telegram/hook", json=update, headers=headers)
        assert response.status_code == 200, response.text
        await self.deliver()
        return self.sam_new()

    async def sam(self, text: str) -> str:
        return await self._telegram(message_update(next(self.ids), SAM, text))

    async def tap(self, data: str) -> str:
        return await self._telegram(callback_update(next(self.ids), SAM, data))

    def sam_new(self) -> str:
        texts = self.telegram.texts(SAM)
        fresh = texts[self.seen.get("sam", 0) :]
        self.seen["sam"] = len(texts)
        return "\n".join(fresh)

    def buttons(self) -> list[str]:
        keyboard = self.telegram.sent(SAM)[-1]["reply_markup"]["inline_keyboard"]
        return [b["callback_data"] for row in keyboard for b in row]


def test_a_clinical_week_on_telegram_with_the_therapist_on_slack(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path
) -> None:
    with FakeSlackAPI() as slack, FakeBotAPI() as telegram:
        companion = make_companion(
            sqlite_url,
            clock,
            tmp_path,
            slack={"api_base_url": slack.base_url, "messages_per_second": 1000, "per_chat_per_second": 100},
            SLACK_BOT_TOKEN=slack.token,
            SLACK_SIGNING_SECRET=SLACK_SECRET,
            telegram={
                "api_base_url": telegram.base_url,
                "webhook_url": WEBHOOK,
                "polling_timeout": 0,
                "request_timeout": 1,
                "messages_per_second": 1000,
                "per_chat_per_second": 100,
            },
            TELEGRAM_BOT_TOKEN=telegram.token,
            TELEGRAM_WEBHOOK_SECRET=TELEGRAM_SECRET,
        )
        add_therapist(companion, "Dana", "Europe/London")
        code = link(companion, tmp_path)
        asyncio.run(_week(companion, slack, telegram, clock, code))
        _check_rows(companion)
        companion.db.dispose()


async def _week(companion: Companion, slack: FakeSlackAPI, telegram: FakeBotAPI, clock: FrozenClock, code: str) -> None:
    async with Week(companion, slack, telegram) as w:
        # Monday 09:00, in session: Dana links Slack, invites Sam, sets homework; Sam joins on Telegram.
        await w.dana("/companion", f"link {code}")
        invite = invite_code(await w.dana("/companion", "invite Sam"))
        await w.dana(
            "/companion",
            "homework Sam\ntitle: Activity plan\ntype: activity scheduling\nwhat: a 20-minute walk\n"
            "when: 10:00 daily\nwhere: the park\nwith whom: alone\nrecord: mood 0-10 before and after\n"
            "rationale: doing more lifts mood before motivation comes",
        )
        for step in (f"/start {invite}", "yes", "London"):
            await w.sam(step)
        assert "In your own words" in await w.sam("6pm")
        assert "How confident" in await w.sam("doing things lifts my mood")
        assert w.buttons() == [str(n) for n in range(11)]
        # Importance is asked after confidence; 8 and 9 are both fine.
        assert "how important" in (await w.tap("8")).casefold()
        assert w.buttons() == [str(n) for n in range(11)]
        assert "send “done”" in await w.tap("9")

        # The safety plan, written together in session, set through the Slack modal.
        await w.dana("/plan", "Sam")
        values = {
            "client": {"value": {"type": "static_select", "selected_option": {"value": "Sam"}}},
            "warning_signs": {"value": {"type": "plain_text_input", "value": "staying in bed\nnot answering texts"}},
            "coping": {"value": {"type": "plain_text_input", "value": "cold water on my face\nthe breathing app"}},
            "people": {"value": {"type": "plain_text_input", "value": "Alex (sister): 07700 900123"}},
            "professionals": {"value": {"type": "plain_text_input", "value": "Dana's practice, Mon–Fri 9–5"}},
        }
        await w.slack_post(view_submission("plan_modal", values, user_id=DANA, view_id="VPLAN"))
        assert "Saved Sam's safety plan" in w.dana_new()
        assert "saved the safety plan you made together" in w.sam_new()
        mine = await w.sam("/plan")
        assert "Your safety plan, made with Dana" in mine and "• cold water on my face" in mine

        # PHQ-9 once, at Sam's reminder time (18:00 London).
        assert "PHQ-9 for Sam: once" in await w.dana("/companion", "measure Sam phq9 once")
        clock.set(datetime(2026, 11, 23, 18, 0, tzinfo=UTC))
        sweep(db=companion.db, engine=companion.engine)
        await w.deliver()
        asked = w.sam_new()
        assert "PHQ-9 (10 questions" in asked and "Over the last 2 weeks" in asked
        assert "1/10. Little interest or pleasure in doing things" in asked
        assert w.buttons() == ["0", "1", "2", "3"]
        for answer in ("1", "1", "2", "1", "0", "1", "1"):
            await w.tap(answer)
        # A free-text message mid-questionnaire is still screened (a concern here), and the item stays open.
        screened = await w.sam("Honestly I feel like such a burden to everyone")
        assert "Thank you for sharing that" in screened and "Please answer with a number from 0 to 3" in screened
        assert "9/10. Thoughts that you would be better off dead" in await w.tap("0")
        # Item 9 above 0: the direct question at once, and Dana alerted at once, before item 10.
        routed = await w.tap("1")
        assert "are you thinking about ending your life, or are you in danger right now?" in routed
        assert "10/10" not in routed
        alert = w.dana_new()
        assert "URGENT" in alert and "better off dead or of hurting yourself in some way: Several days" in alert
        # "No": the questionnaire goes on with the remaining question.
        resumed = await w.tap("no")
        assert "Thank you for answering" in resumed and "9 of 10 answered" in resumed and "10/10." in resumed
        assert "Not difficult at all" in json.dumps(w.telegram.sent(SAM)[-1]["reply_markup"])
        assert "that's all" in await w.tap("1")

        # Tuesday evening: a crisis message is answered with Sam's own plan first.
        clock.set(datetime(2026, 11, 24, 21, 0, tzinfo=UTC))
        reply = await w.sam("I can't go on, I'm going to kill myself tonight")
        assert reply.index("cold water on my face") < reply.index("Alex (sister)") < reply.index("Samaritans")
        assert "URGENT" in w.dana_new()

        # After Monday's next session: the digest shows the score, the plan and the review count; Dana
        # marks the homework reviewed from the digest's button.
        clock.set(datetime(2026, 11, 30, 11, 0, tzinfo=UTC))
        await w.dana("/companion", "digest Sam")
        digest = json.dumps([p.get("blocks") for p in slack.posted(DANA) if p.get("blocks")][-3:])
        assert "PHQ-9: 8/27 (mild)" in digest
        assert "item 9 (thoughts of death or self-harm) answered 1" in digest
        assert "Safety plan: last reviewed" in digest and "Importance: 9/10" in digest
        button = next(
            e
            for p in slack.posted(DANA)
            for b in p.get("blocks") or []
            if b["type"] == "actions"
            for e in b["elements"]
            if e["action_id"] == "mark_reviewed"
        )
        assert button["value"] == "/reviewed Sam 1"
        await w.slack_post(block_action("mark_reviewed", button["value"], user_id=DANA, trigger_id="t.review"))
        assert "Marked homework #1 “Activity plan” reviewed for Sam" in w.dana_new()

        # Next homework starts; the first is closed (reviewed), the second closed early without a review.
        await w.dana("/companion", "close Sam 1")
        await w.dana(
            "/companion",
            "homework Sam\ntitle: Worry time\nwhat: postpone worries to one slot\nwhen: 18:00 daily\n"
            "where: the kitchen table\nwith whom: alone\nrecord: worries postponed\n"
            "rationale: postponing shows worry can wait",
        )
        await w.dana("/companion", "close Sam 2")
        await w.dana("/companion", "digest Sam")
        digest = json.dumps([p.get("blocks") for p in slack.posted(DANA) if p.get("blocks")][-3:])
        assert "Reviewed in session: 1 of the last 2 homework(s)" in digest
        assert "Not reviewed: #2" in digest


def _check_rows(companion: Companion) -> None:
    with companion.db.unit_of_work() as session:
        (response,) = session.exec(select(MeasureResponse)).all()
        assert response.answers == [1, 1, 2, 1, 0, 1, 1, 0, 1, 1] and response.score == 8 and response.band == "mild"
        flags = session.exec(select(SafetyFlag).order_by(SafetyFlag.id)).all()  # type: ignore[arg-type]
        measure_flag = next(f for f in flags if any(s.get("layer") == "measure" for s in f.signals or []))
        assert measure_flag.question_status == "no"
        assert any(f.level == "crisis" for f in flags)
        first = session.get(Homework, 1)
        assert first is not None and first.reviewed_at is not None and first.importance == 9
