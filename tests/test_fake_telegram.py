"""The fake Telegram Bot API, proven against the real python-telegram-bot client."""

from __future__ import annotations

import asyncio
import datetime as dtm
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.ext import Application, CommandHandler, ContextTypes

from tests.fake_telegram import (
    FakeBotAPI,
    UploadedFile,
    callback_update,
    edited_message_update,
    group_message_update,
    message_update,
    my_chat_member_update,
    photo_update,
    sticker_update,
    voice_update,
)

# PTB 22.2+ warns whenever an int time period (RetryAfter.retry_after, Voice.duration) is read.
pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

T = TypeVar("T")
CHAT = 4242


@pytest.fixture
def fake() -> Iterator[FakeBotAPI]:
    api = FakeBotAPI().start()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="module")
def offline_bot() -> Bot:
    """A Bot that is never initialized: enough for Update.de_json (building one costs ~30 ms)."""
    return Bot("123456:TEST-TOKEN")


def run_with_bot(fake: FakeBotAPI, body: Callable[[Bot], Coroutine[Any, Any, T]], *, token: str | None = None) -> T:
    """Run ``body`` with an initialized PTB Bot pointed at the fake, shutting the Bot down afterwards."""

    async def main() -> T:
        bot = Bot(token or fake.token, base_url=fake.base_url)
        async with bot:
            return await body(bot)

    return asyncio.run(main())


def seconds(value: int | float | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def test_initialize_and_get_me(fake: FakeBotAPI) -> None:
    async def body(bot: Bot) -> None:
        assert bot.username == "companion_test_bot"
        assert bot.id == 123456
        me = await bot.get_me()
        assert me.is_bot and me.can_join_groups and me.supports_inline_queries is False

    run_with_bot(fake, body)
    assert [call.method for call in fake.calls] == ["getMe", "getMe"]
    assert fake.calls[0].at <= fake.calls[1].at


def test_send_message_records_decoded_reply_markup(fake: FakeBotAPI) -> None:
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Done", callback_data="hw:done:7")]])

    async def body(bot: Bot) -> list[Any]:
        first = await bot.send_message(CHAT, "Did you try the thought record?", reply_markup=keyboard)
        second = await bot.send_message(CHAT, "42")
        other = await bot.send_message(777, "hello")
        return [first, second, other]

    first, second, other = run_with_bot(fake, body)
    assert (first.message_id, second.message_id, other.message_id) == (1, 2, 1)
    assert first.reply_markup == keyboard
    assert first.from_user is not None and first.from_user.username == "companion_test_bot"
    assert first.chat.type == "private"
    params = fake.sent(CHAT)[0]
    assert params["chat_id"] == CHAT
    assert params["reply_markup"] == {"inline_keyboard": [[{"text": "Done", "callback_data": "hw:done:7"}]]}
    # A str parameter is sent raw by PTB; the fake keeps text a str rather than decoding "42" to 42.
    assert fake.texts(CHAT) == ["Did you try the thought record?", "42"]
    assert fake.texts(str(CHAT)) == fake.texts(CHAT)
    assert len(fake.sent()) == 3


def test_retry_after_from_429(fake: FakeBotAPI) -> None:
    fake.fail_next("sendMessage", status=429, retry_after=3)

    async def body(bot: Bot) -> None:
        with pytest.raises(RetryAfter) as info:
            await bot.send_message(CHAT, "nudge")
        assert seconds(info.value.retry_after) == 3  # an int (with a deprecation warning) or a timedelta
        await bot.send_message(CHAT, "nudge again")  # the fault was for one call only

    run_with_bot(fake, body)
    assert fake.texts(CHAT) == ["nudge again"]
    assert len(fake.calls_to("sendMessage")) == 2
    assert fake.calls_to("sendMessage")[0].params["text"] == "nudge"


def test_fault_statuses_map_to_ptb_exceptions(fake: FakeBotAPI) -> None:
    fake.fail_next("sendMessage", status=403, description="Forbidden: bot was blocked by the user")
    fake.fail_next("sendMessage", status=500)
    fake.fail_next("sendMessage", status=502)
    fake.fail_next("sendMessage", status=400, description="Bad Request: chat not found")
    fake.fail_next("sendMessage", status=400, migrate_to_chat_id=-1001234)

    async def body(bot: Bot) -> None:
        with pytest.raises(Forbidden, match="bot was blocked by the user"):
            await bot.send_message(CHAT, "a")
        for _ in range(2):
            with pytest.raises(NetworkError) as info:
                await bot.send_message(CHAT, "b")
            assert type(info.value) is NetworkError  # BadRequest and TimedOut subclass NetworkError
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            await bot.send_message(CHAT, "c")
        with pytest.raises(ChatMigrated) as migrated:
            await bot.send_message(CHAT, "d")
        assert migrated.value.new_chat_id == -1001234

    run_with_bot(fake, body)
    assert fake.sent() == []


def test_fault_can_target_one_chat(fake: FakeBotAPI) -> None:
    fake.fail_next("sendMessage", status=403, chat_id=CHAT, times=2)

    async def body(bot: Bot) -> None:
        await bot.send_message(1, "fine")
        for _ in range(2):
            with pytest.raises(Forbidden):
                await bot.send_message(CHAT, "blocked")
        await bot.send_message(CHAT, "unblocked")

    run_with_bot(fake, body)
    assert fake.texts(1) == ["fine"]
    assert fake.texts(CHAT) == ["unblocked"]


def test_hang_causes_timed_out_but_the_message_was_sent(fake: FakeBotAPI) -> None:
    fake.hang_next("sendMessage", seconds=2)

    async def body(bot: Bot) -> float:
        started = time.monotonic()
        with pytest.raises(TimedOut):
            await bot.send_message(CHAT, "slow", read_timeout=0.2)
        return time.monotonic() - started

    assert run_with_bot(fake, body) < 1.5
    assert fake.texts(CHAT) == ["slow"]  # like Telegram: the response was lost, not the message


def test_wrong_token_and_unknown_method(fake: FakeBotAPI) -> None:
    async def wrong(bot: Bot) -> None:
        raise AssertionError("initialize should have failed")

    with pytest.raises(InvalidToken):
        run_with_bot(fake, wrong, token="999:WRONG")

    async def body(bot: Bot) -> None:
        with pytest.raises(EndPointNotFound):
            await bot.do_api_request("sendHomework", api_kwargs={"chat_id": CHAT})

    run_with_bot(fake, body)
    assert [call.method for call in fake.calls] == ["getMe", "getMe", "sendHomework"]


def test_raw_envelopes(fake: FakeBotAPI) -> None:
    root = fake.base_url + fake.token
    with httpx.Client(timeout=5) as client:
        unknown = client.post(f"{root}/sendHomework", data={"chat_id": "1"})
        assert unknown.status_code == 404
        assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
        bad_token = client.post(f"{fake.base_url}999:NOPE/getMe")
        assert (bad_token.status_code, bad_token.json()["description"]) == (401, "Unauthorized")
        fake.fail_next("sendMessage", status=429, retry_after=5)
        limited = client.post(f"{root}/sendMessage", json={"chat_id": 1, "text": "x"})
        assert limited.status_code == 429
        assert limited.json() == {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 5",
            "parameters": {"retry_after": 5},
        }
        as_json = client.post(f"{root}/sendMessage", json={"chat_id": 1, "text": "json body", "reply_markup": "{}"})
        assert as_json.json()["result"]["text"] == "json body"
        by_get = client.get(f"{root}/sendmessage", params={"chat_id": "2", "text": "query string"})
        assert by_get.json()["ok"] is True
        empty = client.post(f"{root}/sendMessage", data={"chat_id": "2", "text": " "})
        assert (empty.status_code, empty.json()["description"]) == (400, "Bad Request: message text is empty")
    assert fake.texts(1) == ["json body"]
    assert fake.sent(1)[0]["reply_markup"] == {}
    assert fake.texts(2) == ["query string"]
    assert fake.calls[-2].method == "sendMessage"  # method names are case-insensitive, recorded canonically


def test_get_updates_and_offset_confirmation(fake: FakeBotAPI) -> None:
    fake.queue_update(message_update(10, CHAT, "/start"))
    fake.queue_update(message_update(11, CHAT, "hello"))
    fake.queue_update(message_update(12, CHAT, "third"))

    async def body(bot: Bot) -> None:
        updates = await bot.get_updates(timeout=1)
        assert all(isinstance(update, Update) for update in updates)
        assert [u.message.text for u in updates if u.message] == ["/start", "hello", "third"]
        limited = await bot.get_updates(offset=11, limit=1, timeout=1)  # confirms 10
        assert [u.update_id for u in limited] == [11]
        assert [u.update_id for u in await bot.get_updates(timeout=0)] == [11, 12]
        assert await bot.get_updates(offset=13, timeout=0) == ()
        assert await bot.get_updates(offset=0, timeout=0) == ()  # confirmed updates are gone for good

    run_with_bot(fake, body)
    assert fake.pending_updates == []
    with pytest.raises(ValueError, match="confirmed"):
        fake.queue_update(message_update(12, CHAT, "again"))


def test_long_poll_returns_early_when_an_update_arrives(fake: FakeBotAPI) -> None:
    timer = threading.Timer(0.2, fake.queue_update, args=(message_update(1, CHAT, "late"),))

    async def body(bot: Bot) -> tuple[tuple[Update, ...], float]:
        timer.start()
        started = time.monotonic()
        updates = await bot.get_updates(timeout=3)
        return updates, time.monotonic() - started

    try:
        updates, elapsed = run_with_bot(fake, body)
    finally:
        timer.cancel()
    assert [u.message.text for u in updates if u.message] == ["late"]
    assert 0.1 < elapsed < 1.5


def test_long_poll_times_out_empty_and_stop_wakes_it(fake: FakeBotAPI) -> None:
    async def body(bot: Bot) -> None:
        started = time.monotonic()
        assert await bot.get_updates(timeout=dtm.timedelta(seconds=0.3)) == ()
        assert 0.25 < time.monotonic() - started < 1.5
        threading.Timer(0.1, fake.stop).start()
        started = time.monotonic()
        assert await bot.get_updates(timeout=3) == ()
        assert time.monotonic() - started < 1.5

    run_with_bot(fake, body)


def test_a_second_poller_terminates_the_first(fake: FakeBotAPI) -> None:
    async def body(bot: Bot) -> None:
        first = asyncio.create_task(bot.get_updates(timeout=3))
        while not fake.calls_to("getUpdates"):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # let the first poll settle into its wait
        other = Bot(fake.token, base_url=fake.base_url)
        async with other:
            assert await other.get_updates(timeout=0) == ()
        with pytest.raises(Conflict, match="terminated by other getUpdates"):
            await first

    run_with_bot(fake, body)


def test_webhook_lifecycle(fake: FakeBotAPI) -> None:
    fake.queue_update(message_update(1, CHAT, "pending"))

    async def body(bot: Bot) -> None:
        assert await bot.set_webhook("https://companion.example/tg", secret_token="s3cr3t_-X", max_connections=5)
        info = await bot.get_webhook_info()
        assert (info.url, info.pending_update_count, info.max_connections) == ("https://companion.example/tg", 1, 5)
        with pytest.raises(Conflict, match="webhook is active"):
            await bot.get_updates(timeout=0)
        with pytest.raises(BadRequest, match=r"(?i)https url must be provided"):
            await bot.set_webhook("http://companion.example/tg")
        with pytest.raises(BadRequest, match=r"(?i)unallowed characters"):
            await bot.set_webhook("https://companion.example/tg", secret_token="has space")
        assert await bot.delete_webhook(drop_pending_updates=True)
        assert await bot.get_updates(timeout=0) == ()

    run_with_bot(fake, body)
    assert fake.webhook is None
    first = fake.calls_to("setWebhook")[0].params
    assert first["secret_token"] == "s3cr3t_-X"
    assert first["url"] == "https://companion.example/tg"
    assert first["max_connections"] == 5


def test_set_webhook_with_certificate_is_multipart(fake: FakeBotAPI) -> None:
    async def body(bot: Bot) -> None:
        assert await bot.set_webhook(
            "https://companion.example/tg", certificate=b"-----BEGIN CERTIFICATE-----", allowed_updates=["message"]
        )
        assert (await bot.get_webhook_info()).has_custom_certificate

    run_with_bot(fake, body)
    webhook = fake.webhook
    assert webhook is not None
    assert webhook["allowed_updates"] == ["message"]
    certificate = webhook["certificate"]
    assert isinstance(certificate, UploadedFile)
    assert certificate.data == b"-----BEGIN CERTIFICATE-----"


def test_edit_delete_answer_commands_leave(fake: FakeBotAPI) -> None:
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Yes", callback_data="y")]])

    async def body(bot: Bot) -> None:
        sent = await bot.send_message(CHAT, "Ready?", reply_markup=keyboard)
        edited = await bot.edit_message_text("Ready!", chat_id=CHAT, message_id=sent.message_id)
        assert edited is not True and edited.text == "Ready!" and edited.reply_markup is None
        with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
            await bot.edit_message_reply_markup(chat_id=CHAT, message_id=sent.message_id)
        relabelled = await bot.edit_message_reply_markup(chat_id=CHAT, message_id=99, reply_markup=keyboard)
        assert relabelled is not True and relabelled.reply_markup == keyboard
        assert await bot.edit_message_text("inline", inline_message_id="abc") is True
        assert await bot.delete_message(CHAT, sent.message_id)
        assert await bot.answer_callback_query("cbq-1", text="Saved")
        assert await bot.set_my_commands([("start", "Begin"), ("homework", "This week's homework")])
        with pytest.raises(BadRequest, match=r"(?i)bot_command_invalid"):
            await bot.set_my_commands([("Check-In", "Bad name")])
        assert await bot.leave_chat(-100)

    run_with_bot(fake, body)
    commands = fake.calls_to("setMyCommands")[0].params["commands"]
    assert commands == [
        {"command": "start", "description": "Begin"},
        {"command": "homework", "description": "This week's homework"},
    ]


def test_wait_for_sees_calls_from_other_threads(fake: FakeBotAPI) -> None:
    def later() -> None:
        httpx.post(f"{fake.base_url}{fake.token}/sendMessage", data={"chat_id": "9", "text": "from a thread"})

    thread = threading.Thread(target=later)
    thread.start()
    try:
        assert fake.wait_for(lambda: fake.texts(9) == ["from a thread"], timeout=3)
    finally:
        thread.join()
    assert fake.wait_for(lambda: False, timeout=0.05) is False


@pytest.mark.parametrize(
    ("update", "check"),
    [
        (message_update(1, CHAT, "hello"), lambda u: u.message.text == "hello" and u.effective_chat.id == CHAT),
        (edited_message_update(2, CHAT, "fixed"), lambda u: u.edited_message.text == "fixed"),
        (
            photo_update(3, CHAT, caption="my log"),
            lambda u: u.message.caption == "my log" and len(u.message.photo) == 3,
        ),
        (photo_update(4, CHAT), lambda u: u.message.caption is None and u.message.photo[-1].width == 1280),
        (sticker_update(5, CHAT), lambda u: u.message.sticker.emoji == "🙂"),
        (voice_update(6, CHAT), lambda u: seconds(u.message.voice.duration) == 3),
        (callback_update(7, CHAT, "hw:done:7"), lambda u: u.callback_query.data == "hw:done:7"),
        (
            callback_update(8, CHAT, "x", message_id=12),
            lambda u: u.callback_query.message.message_id == 12 and u.callback_query.message.from_user.is_bot,
        ),
        (my_chat_member_update(9, CHAT), lambda u: u.my_chat_member.new_chat_member.status == "kicked"),
        (
            my_chat_member_update(10, CHAT, new_status="member"),
            lambda u: (
                u.my_chat_member.new_chat_member.status == "member"
                and u.my_chat_member.old_chat_member.status == "left"
            ),
        ),
        (
            my_chat_member_update(11, -55, new_status="administrator", chat_type="group"),
            lambda u: u.my_chat_member.new_chat_member.status == "administrator",
        ),
        (
            my_chat_member_update(12, -55, new_status="restricted", chat_type="supergroup"),
            lambda u: u.my_chat_member.new_chat_member.status == "restricted",
        ),
        (
            group_message_update(13, 55, "hi all"),
            lambda u: u.effective_chat.type == "group" and u.effective_chat.id == -55 and u.message.text == "hi all",
        ),
    ],
    ids=lambda value: str(value.get("update_id")) if isinstance(value, dict) else "",
)
def test_builders_parse_with_ptb(offline_bot: Bot, update: dict[str, Any], check: Callable[[Update], bool]) -> None:
    parsed = Update.de_json(update, offline_bot)
    assert parsed.update_id == update["update_id"]
    assert check(parsed)


def test_command_messages_carry_bot_command_entities(fake: FakeBotAPI) -> None:
    fake.queue_update(message_update(1, CHAT, "/start abc123"))
    fake.queue_update(group_message_update(2, 55, "/homework@companion_test_bot"))

    async def body(bot: Bot) -> tuple[Update, ...]:
        return await bot.get_updates(timeout=0)

    start, homework = run_with_bot(fake, body)
    assert CommandHandler("start", lambda *_: None).check_update(start)
    assert CommandHandler("homework", lambda *_: None).check_update(homework)
    assert start.message is not None and start.message.entities[0].type == "bot_command"


def test_application_polling_round_trip(fake: FakeBotAPI) -> None:
    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_chat is not None
        await update.effective_chat.send_message("Welcome back")

    async def main() -> bool:
        app = Application.builder().token(fake.token).base_url(fake.base_url).build()
        app.add_handler(CommandHandler("start", start))
        async with app:
            await app.start()
            assert app.updater is not None
            await app.updater.start_polling(timeout=2, poll_interval=0)
            fake.queue_update(message_update(1, CHAT, "/start"))
            replied = await asyncio.to_thread(fake.wait_for, lambda: fake.texts(CHAT) == ["Welcome back"], 3)
            await app.updater.stop()
            await app.stop()
        return replied

    assert asyncio.run(main())
    methods = [call.method for call in fake.calls]
    assert methods[:3] == ["getMe", "deleteWebhook", "getUpdates"]
    assert fake.calls_to("getUpdates")[-1].params["offset"] == 2  # the update was confirmed on the way out
