"""Scrubbing other people's names from client text before it leaves the machine (dialogs.names)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialogs.llm import scrub
from dialogs.names import scrub_names

# (message, the names in it that must not leave)
NAMED = [
    ("Rode the bus with my sister Maria, she was great", ["Maria"]),
    ("Maria said I was overreacting.", ["Maria"]),  # sentence-initial, before a speech verb
    ("Tom and I went to the shop. Then Priya called.", ["Tom", "Priya"]),
    ("My boss, Karen, frowned at me in the meeting", ["Karen"]),
    ("went out with my friend jake and it was ok", ["jake"]),  # lower-case texting
    ("jake said it was fine lol", ["jake"]),
    ("texted maria after, felt better", ["maria"]),
    ("Ahmed texted me at 9 to check in", ["Ahmed"]),
    ("had lunch with Siobhan and it went ok", ["Siobhan"]),
    ("my flatmate oluwaseun was home so I practised in my room", ["oluwaseun"]),
    ("I told Grace about the exposure and she was kind", ["Grace"]),
    ("my partner, called Alex, came along", ["Alex"]),
    ("ok so i rang nadia n she said its fine", ["nadia"]),
]
# Ordinary messages: nothing in them is a name, and they reach the model as written.
PLAIN = [
    "Yesterday was hard. Anxious all day.",
    "I felt about 80% anxious at 10:30, did 2 stops",
    "The first minute was awful then it got easier",
    "Honestly it went ok. Nothing much to say",
    "My mum said I did well",
    "Monday was better than Friday",
    "i did it!! felt proud tbh",
    "Went to work, then home, then the gym",
]


@pytest.mark.parametrize(("text", "names"), NAMED)
def test_other_peoples_names_are_removed(text: str, names: list[str]) -> None:
    scrubbed = scrub_names(text)
    for name in names:
        assert name not in scrubbed, scrubbed
    assert "[name]" in scrubbed


@pytest.mark.parametrize("text", PLAIN)
def test_ordinary_words_stay(text: str) -> None:
    assert scrub_names(text) == text


def test_the_client_and_therapist_keep_their_own_placeholders() -> None:
    scrubbed = scrub("Sam called me, Dana said hi, Maria too", names=["Sam"], pseudonym="Client 1", therapist=["Dana"])
    assert scrubbed == "Client 1 called me, the therapist said hi, [name] too"


@given(st.text(max_size=300))
def test_scrub_never_raises_and_never_leaves_a_known_name_or_a_delimiter(text: str) -> None:
    scrubbed = scrub(f"{text} Sam Lee", names=["Sam Lee", "Sam", "Lee"], pseudonym="Client 1")
    assert "<" not in scrubbed and ">" not in scrubbed
    assert re.search(r"(?<!\w)(Sam|Lee)(?!\w)", scrubbed, re.IGNORECASE) is None
