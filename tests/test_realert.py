"""Re-alerts reach the chats a therapist reads, and an acknowledged alert is edited on the platform.

Through the real slack_sdk and python-telegram-bot against the local fakes:
a crisis alert not acknowledged within ``alert_ack_minutes`` goes again to
the Slack DM (or the Telegram chat), not to the console chat `companion
therapist add` created; Acknowledge then edits every copy of the alert so
it says who acknowledged and when, and has no button left to press.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlmodel import col, select

from bot.wiring import Companion
from dialogs.clock import FrozenClock
from scheduler.sweep import sweep
from storage import OutboxMessage
from tests import test_slack, test_telegram
from tests.conftest import make_companion
from tests.fake_slack import FakeSlackAPI, block_action
from tests.fake_telegram import FakeBotAPI
from tests.support import Chat, add_therapist, invite_code

CRISIS = "I'm going to kill myself tonight"


def _alert_rows(companion: Companion) -> list[OutboxMessage]:
    with companion.db.unit_of_work() as session:
        return list(
            session.exec(
                select(OutboxMessage).where(OutboxMessage.subject == "alert:1").order_by(col(OutboxMessage.id))
            ).all()
        )


def test_a_slack_only_therapist_gets_the_re_alert_in_slack_and_the_ack_edits_both(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path
) -> None:
    fake = FakeSlackAPI().start()
    service = make_companion(
        sqlite_url,
        clock,
        tmp_path,
        slack={"api_base_url": fake.base_url, "messages_per_second": 1000, "per_chat_per_second": 100},
        SLACK_BOT_TOKEN=fake.token,
        SLACK_SIGNING_SECRET=test_slack.SECRET,
    )
    try:
        add_therapist(service)
        code = test_slack.link(service, tmp_path)
        dana = test_slack.DANA

        async def scenario(h: test_slack.Harness) -> None:
            await h.command("/companion", f"link {code}")
            await h.command("/companion", "invite Sam")
            sam = Chat(service, "client", "sam")
            for line in (f"/start {invite_code(test_slack.texts(fake))}", "yes", "London", "18:00"):
                sam.send(line)
            sam.send(CRISIS)
            await h.deliver()
            assert sum("URGENT" in t for t in fake.texts(dana)) == 1

            clock.advance(service.engine.settings.alert_ack_timeout + timedelta(minutes=1))
            assert sweep(db=service.db, engine=service.engine).alerts_escalated == 1
            await h.deliver()
            alerts = [p for p in fake.posted(dana) if "URGENT" in str(p.get("text"))]
            assert len(alerts) == 2 and str(alerts[1]["text"]).startswith("REMINDER, not yet acknowledged")
            # Nobody reads the console chat `therapist add` made: nothing goes there.
            assert "URGENT" not in Chat(service, "therapist", "Dana").open()

            await h.post(block_action("ack_alert", "/ack 1", user_id=dana))
            await h.deliver()
            assert "Alert #1 for Sam acknowledged" in test_slack.texts(fake)
            for row in _alert_rows(service):
                assert row.platform_id is not None
                channel, _, ts = row.platform_id.partition(":")
                shown = fake.message(channel, ts)
                assert shown is not None and "Acknowledged by Dana at" in shown["text"]
                assert "URGENT" in shown["text"]
                assert all(block["type"] != "actions" for block in shown["blocks"])  # no button to press again
            assert len(fake.calls_to("chat.update")) == 2

        test_slack.run(service, scenario)
    finally:
        service.db.dispose()
        fake.stop()


def test_a_telegram_only_therapist_gets_the_re_alert_in_telegram_and_the_ack_edits_both(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from bot.cli import app as cli

    fake = FakeBotAPI().start()
    try:
        service = test_telegram.telegram_companion(sqlite_url, clock, tmp_path, fake, webhook=True)
        add_therapist(service)
        config = tmp_path / "link.yaml"
        config.write_text(f"database:\n  path: {service.settings.url.removeprefix('sqlite:///')}\n", encoding="utf-8")
        printed = CliRunner().invoke(cli, ["therapist", "link", "Dana", "--telegram", "--config", str(config)])
        code = next(line.split()[-1] for line in printed.output.splitlines() if line.startswith("/start "))
        dana, sam = 2002, 1001

        async def scenario(h: test_telegram.Harness) -> None:
            assert "linked to therapist Dana" in await h.say(dana, f"/start {code}")
            invite = invite_code(await h.say(dana, "/invite Sam"))
            for line in (f"/start {invite}", "yes", "London", "18:00"):
                await h.say(sam, line)
            await h.say(sam, CRISIS)
            assert "URGENT" in await h.new_texts(dana)

            clock.advance(service.engine.settings.alert_ack_timeout + timedelta(minutes=1))
            assert sweep(db=service.db, engine=service.engine).alerts_escalated == 1
            again = await h.new_texts(dana)
            assert again.startswith("REMINDER, not yet acknowledged")
            assert "URGENT" not in Chat(service, "therapist", "Dana").open()
            buttons = fake.sent(dana)[-1]["reply_markup"]["inline_keyboard"]
            assert [b["callback_data"] for row in buttons for b in row] == ["/ack 1"]

            assert "Alert #1 for Sam acknowledged" in await h.tap(dana, "/ack 1")
            edits = {int(c.params["message_id"]): c.params for c in fake.calls_to("editMessageText")}
            rows = _alert_rows(service)
            assert len(rows) == 2 and set(edits) == {int(r.platform_id or 0) for r in rows}
            for params in edits.values():
                assert str(params["chat_id"]) == str(dana)
                assert "Acknowledged by Dana at" in params["text"] and "URGENT" in params["text"]
                assert "reply_markup" not in params  # the keyboard is gone: the button cannot be pressed again

        test_telegram.run(service, fake, True, scenario)
        service.db.dispose()
    finally:
        fake.stop()
