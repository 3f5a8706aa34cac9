"""Tests for the risk screen's lexicon layer: recall and false alarms on the labelled sets, hostile input, properties.

These test ``dialogs.safety.lexicon`` alone (the layer these sets were written
for); the combined screen, ``dialogs.safety.assess``, is tested in
tests/test_safety_learned.py, which also checks that it keeps every one of the
lexicon's crises here.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dialogs.safety import lexicon as safety
from dialogs.safety.lexicon import LEVELS, RiskAssessment, assess, known_reasons

DATA_DIR: Final = Path(__file__).resolve().parent / "data"
# The original labelled set, and a second batch written independently, before its author read
# the lexicon, to measure (and keep) generalisation rather than sentence memorisation.
LABELLED: Final = {
    "original": DATA_DIR / "safety_labelled.yaml",
    "fresh": DATA_DIR / "safety_labelled_2.yaml",
}
DATA: Final = LABELLED["original"]
CONCERN_RECALL: Final = 0.90
NONE_TO_CRISIS: Final = 0.03


def _load(path: Path = DATA) -> list[dict[str, Any]]:
    items = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(items, list) and items, f"the labelled set {path.name} is empty"
    for item in items:
        assert set(item) == {"text", "level"}, item
        assert item["level"] in LEVELS, item
        assert isinstance(item["text"], str) and item["text"].strip(), item
    return items


SETS: Final = {name: _load(path) for name, path in LABELLED.items()}
ITEMS: Final = SETS["original"]
ALL_ITEMS: Final = [item for items in SETS.values() for item in items]


def _of(level: str, items: list[dict[str, Any]] = ITEMS) -> list[str]:
    return [item["text"] for item in items if item["level"] == level]


def _show(failures: list[tuple[str, RiskAssessment]]) -> str:
    return "\n".join(f"  - {r.level} {list(r.reasons)}: {text!r}" for text, r in failures)


# --------------------------------------------------------------------------- the labelled set


def test_labelled_set_shape() -> None:
    assert len(ITEMS) >= 300
    assert len(_of("crisis")) >= 90
    assert len(_of("concern")) >= 90
    assert len(_of("none")) >= 120
    long_risky = [i for i in ITEMS if i["level"] != "none" and len(i["text"]) >= 300]
    long_benign = [i for i in ITEMS if i["level"] == "none" and len(i["text"]) >= 300]
    assert len(long_risky) >= 20, "need long homework reports with a buried risk statement"
    assert len(long_benign) >= 10, "need long benign reports with trigger words"
    texts = [i["text"] for i in ITEMS]
    assert len(texts) == len(set(texts)), "duplicate messages in the labelled set"


def test_fresh_labelled_set_shape() -> None:
    items = SETS["fresh"]
    assert len(items) >= 200
    assert len(_of("crisis", items)) >= 90
    assert len(_of("concern", items)) >= 50
    assert len(_of("none", items)) >= 60
    texts = [i["text"] for i in items]
    assert len(texts) == len(set(texts)), "duplicate messages in the fresh labelled set"
    assert not set(texts) & {i["text"] for i in ITEMS}, "the fresh set must not repeat the original set"
    assert any(i["level"] == "crisis" and len(i["text"]) >= 300 for i in items), "need a buried crisis"


@pytest.mark.parametrize("name", sorted(SETS))
def test_every_crisis_message_is_crisis(name: str) -> None:
    failures = [(text, r) for text in _of("crisis", SETS[name]) if (r := assess(text)).level != "crisis"]
    assert not failures, f"{name}: {len(failures)} crisis message(s) missed:\n{_show(failures)}"


@pytest.mark.parametrize("name", sorted(SETS))
def test_concern_recall(name: str) -> None:
    texts = _of("concern", SETS[name])
    failures = [(text, r) for text in texts if (r := assess(text)).level == "none"]
    recall = 1 - len(failures) / len(texts)
    assert recall >= CONCERN_RECALL, f"{name}: concern recall {recall:.1%} < {CONCERN_RECALL:.0%}:\n{_show(failures)}"


@pytest.mark.parametrize("name", sorted(SETS))
def test_few_false_crises(name: str) -> None:
    texts = _of("none", SETS[name])
    failures = [(text, r) for text in texts if (r := assess(text)).level == "crisis"]
    rate = len(failures) / len(texts)
    assert rate <= NONE_TO_CRISIS, f"{name}: none -> crisis {rate:.1%} > {NONE_TO_CRISIS:.0%}:\n{_show(failures)}"


# --------------------------------------------------------------------------- behaviour the spec names


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("I'm not going to kill myself but I think about dying a lot", "concern"),
        ("I would never hurt anyone", "none"),
        ("I don't want to die", "none"),  # documented choice: fear of dying is common in panic work
        ("I overdosed two years ago", "concern"),
        ("I just took 30 pills", "crisis"),
        ("this deadline is killing me", "none"),
        ("watched Kill Bill", "none"),
        ("kms", "crisis"),
        ("this is goodbye, thank you for everything", "crisis"),
        ("I'm going to kill Dave tonight", "crisis"),  # a name, known only by its capital
        ("I'm so angry at my sister", "none"),
    ],
)
def test_spec_examples(text: str, level: str) -> None:
    assert assess(text).level == level


@pytest.mark.parametrize(
    ("text", "level"),
    [
        # Death wishes that sound active are crisis; passive or denied ones are not.
        ("I want to die", "crisis"),
        ("wanna die tbh", "crisis"),
        ("feeling suicidal", "crisis"),
        ("I don't want to be alive anymore", "crisis"),
        ("sometimes I wish I could just not wake up", "concern"),
        ("I tried to kill myself when I was 16", "concern"),
        ("I'd never act on it but I think about death a lot", "concern"),
        # The backstop: new wordings of the same concepts, in a first-person clause.
        ("I'm going to starve myself until I die", "crisis"),
        ("i keep cutting deeper every night", "crisis"),
        ("lined up the pills again", "crisis"),
        ("I've bought a rope. Mood 1/10.", "crisis"),
        ("i keep stepping closer to the edge of the platform", "crisis"),
        ("im taking myself out of the picture tonight", "crisis"),
        ("i want to dye, no joke", "crisis"),
        # ... and what explains them away, locally.
        ("I want to dye my hair blue", "none"),
        ("Hot thought: I'm going to die. Belief 90%.", "none"),
        ("I felt like I was dying during the panic attack", "none"),
        ("I think my nan is going to die soon, the hospice called", "none"),
        ("I'd die for a pizza", "none"),
        ("i'm dead 💀 that video", "none"),
        ("I'm dead worried about my son's exams", "none"),
        ("I keep cutting myself off in meetings", "none"),
        ("I bought a new rope for bouldering", "none"),
        ("I've got my meds ready for the week in the organiser", "none"),
        ("I'm on the roof fixing the leak, worksheet later", "none"),
        ("Said my goodbyes to the old house today", "none"),
        ("I read a memoir about suicide for book club", "none"),
    ],
)
def test_concepts_not_sentences(text: str, level: str) -> None:
    assert assess(text).level == level, assess(text)


def test_capitalised_titles_are_recognised_after_inflected_verbs() -> None:
    # The cheap gate in front of the case-sensitive title patterns must open for "reading".
    assert assess("Started reading Suicide Notes from Beautiful Girls, the twist is wild").level == "none"


def test_with_requires_the_companion_in_the_same_clause() -> None:
    lexicon = safety._compile(
        {"rules": [{"id": "r", "level": "crisis", "reason": "x", "with": "me|i", "patterns": ["boom"]}]}, "xx"
    )
    assert safety._screen("boom goes the dynamite", lexicon).level == "none"
    assert safety._screen("boom, said I", lexicon).level == "none"  # another clause
    assert safety._screen("i said boom", lexicon).level == "crisis"
    assert safety._screen("boom said i", lexicon).level == "crisis"  # any order
    with pytest.raises(ValueError, match="bad safety pattern"):
        safety._compile(
            {"rules": [{"id": "r", "level": "crisis", "reason": "x", "with": "(", "patterns": ["a"]}]}, "xx"
        )


def test_hyperbole_is_suppressed_only_in_its_own_clause() -> None:
    assert assess("This deadline is killing me.").level == "none"
    assert assess("This deadline is killing me and I want to kill myself.").level == "crisis"
    assert assess("My phone died, and honestly I have the pills ready for tonight.").level == "crisis"


def test_risk_buried_in_a_long_report_is_found() -> None:
    filler = "I did the breathing exercise and the thought record, and the walk helped a little. " * 20
    text = filler + "I have taken all my tablets an hour ago. " + filler
    assert len(text) > 3000
    assert assess(text).level == "crisis"


def test_past_and_present_tense() -> None:
    assert assess("I cut myself when I was 15").level == "concern"
    assert assess("I cut myself last night").level == "crisis"


def test_reasons_are_severity_ordered_and_from_the_lexicon() -> None:
    r = assess("I feel like a burden. I'm going to kill myself tonight.")
    assert r.level == "crisis"
    assert r.reasons and set(r.reasons) <= known_reasons()
    assert "feeling a burden" in r.reasons
    assert r.reasons.index("feeling a burden") > 0  # crisis reasons first
    assert assess("lovely walk by the river").reasons == ()


def test_reasons_never_contain_the_message() -> None:
    vocabulary = known_reasons()
    for item in ALL_ITEMS:
        r = assess(item["text"])
        assert set(r.reasons) <= vocabulary
        for reason in r.reasons:
            assert item["text"] not in reason
            assert item["text"].lower().strip(" .!?") not in reason.lower()


def test_unknown_or_odd_locale_falls_back_to_english() -> None:
    text = "I'm going to kill myself tonight"
    for locale in ("xx", "en-GB", "EN_us", "../../etc/passwd", "", "zz-ZZ"):
        assert assess(text, locale=locale).level == "crisis", locale


def test_lexicon_compiles_and_patterns_are_lower_case() -> None:
    # Rules run on case-folded text without IGNORECASE, so an upper-case letter in a rule would
    # silently never match.  (Escapes such as \W and \S are fine.)
    safety._cache.clear()
    lexicon = safety._lexicon("en")  # raises on a broken pattern: no fail-safe here
    assert lexicon.rules and lexicon.combos
    for rule in lexicon.rules:
        for regex, _keywords in rule.parts:
            assert not re.search(r"(?<!\\)[A-Z]", regex.pattern), (rule.id, regex.pattern[:80])
    assert safety._FAILSAFE_REASON in known_reasons()


def test_keyword_prefilters_never_change_a_result() -> None:
    # The prefilters derived from the patterns may only skip work that could not match.
    from dataclasses import replace

    lexicon = safety._lexicon("en")

    def unfiltered(subs: safety._Subs) -> safety._Subs:
        return safety._Subs.of([replace(sub, keywords=None) for sub in subs.items])

    plain = replace(
        lexicon,
        rules=tuple(replace(r, parts=tuple((rx, None) for rx, _ in r.parts)) for r in lexicon.rules),
        part_index={},
        part_keys=frozenset(),
        unfiltered_parts=tuple((ri, pi) for ri, r in enumerate(lexicon.rules) for pi in range(len(r.parts))),
        pre_substitutions=unfiltered(lexicon.pre_substitutions),
        substitutions=unfiltered(lexicon.substitutions),
        benign=unfiltered(lexicon.benign),
        cased_benign_if=None,
    )
    texts = (
        [item["text"] for item in ALL_ITEMS] + HOSTILE[:6] + ["kil myslef 2nite", "sewer slide tn 💊", "u wanna od?"]
    )
    for text in texts:
        assert safety._screen(text, lexicon) == safety._screen(text, plain), text


def test_lexicon_validation_rejects_unknown_tags_and_modifiers() -> None:
    base: dict[str, Any] = {
        "rules": [{"id": "r", "level": "concern", "reason": "x", "tags": ["a"], "patterns": ["foo"]}],
        "combos": [{"id": "c", "all": ["a", "typo"], "level": "crisis", "reason": "y"}],
    }
    with pytest.raises(ValueError, match="typo"):
        safety._compile(base, "xx")
    base["combos"] = []
    base["rules"][0]["caps"] = {"nonexistent": "none"}
    with pytest.raises(ValueError, match="nonexistent"):
        safety._compile(base, "xx")
    base["rules"][0]["caps"] = {}
    base["rules"][0]["patterns"] = ["(unclosed"]
    with pytest.raises(ValueError, match="bad safety pattern"):
        safety._compile(base, "xx")


# --------------------------------------------------------------------------- hostile input


HOSTILE: Final = [
    "",
    " ",
    "\n\n\t",
    "a" * 10_000,
    "kill " * 2_000,
    "I am fine. " * 1_000,
    "\x00\x01\x02\x07\x1b[31mhello\x7f",
    "\u202eأريد أن أموت\u202c",  # right-to-left override around Arabic
    "אני רוצה למות",
    "🔪💊⚰️🩸" * 100,
    "😂😂😂",
    "\ud800",  # lone surrogate
    "k\u200bill my\u200dself",
    "(((((((((((((((((((( [[[[[[[ ***** ++++ ????",
    "\\" * 500,
    "é" * 5000 + " ǅ ﬁ ℌ ① ",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_never_raises(text: str) -> None:
    r = assess(text)
    assert isinstance(r, RiskAssessment)
    assert r.level in LEVELS
    assert all(isinstance(x, str) for x in r.reasons)
    assert r.reasons == () or r.level != "none"


def test_not_even_a_string() -> None:
    assert assess(None).level == "none"  # type: ignore[arg-type]
    assert assess(12345).level in LEVELS  # type: ignore[arg-type]


def test_zero_width_characters_cannot_hide_words() -> None:
    assert assess("k\u200bill my\u200dself tonight").level == "crisis"


def test_a_broken_lexicon_fails_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(locale: str) -> safety._Lexicon:
        raise RuntimeError("lexicon missing")

    monkeypatch.setattr(safety, "_lexicon", broken)
    r = assess("anything at all")
    assert r.level == "concern"
    assert r.reasons == (safety._FAILSAFE_REASON,)


def test_long_input_is_linear_and_fast() -> None:
    assess("warm up")
    start = time.perf_counter()
    for text in ("I am fine. " * 1_000, "a " * 5_000, "kill my " * 1_500):
        assess(text)
    assert time.perf_counter() - start < 1.0
    # One long clause repeating a risk phrase: every match reads its modifiers, which must not
    # rescan the clause each time (this took seconds before modifier answers were memoised).
    start = time.perf_counter()
    for text in ("i want to die " * 700, "i am not going to kill myself " * 330):
        assert assess(text).level != "none"
    assert time.perf_counter() - start < 1.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["and", "i", "not", "want", "to", "die", "never", "so", "because", "x"]), max_size=40))
def test_bounded_prefix_equals_the_whole_clause_prefix(words: list[str]) -> None:
    lexicon = safety._lexicon("en")
    clause = " ".join([*words, "end"])
    ctx = safety._Context(lexicon, [])
    start = len(clause) - len("end")
    before = clause[:start]
    breaks = list(lexicon.breakers.finditer(before))
    if breaks:
        before = before[breaks[-1].end() :]
    assert ctx.prefix(clause, start) == " ".join(before.split()[-lexicon.prefix_words :])


def test_typical_message_is_fast() -> None:
    text = (
        "Thought record: my manager asked to see me after the meeting. Anxious 80%. Hot thought: "
        "I'm going to get fired. Evidence against: he said I did well on the account. Balanced thought: "
        "one meeting doesn't mean I'm getting fired. Re-rated 40%, which felt like progress to me."
    )
    assert 250 <= len(text) <= 320
    for _ in range(20):
        assess(text)
    runs = 200
    start = time.perf_counter()
    for _ in range(runs):
        assess(text)
    per_call = (time.perf_counter() - start) / runs
    assert per_call < 0.005, f"{per_call * 1e3:.2f} ms per call"  # generous: shared CI machines


# --------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_gets_a_valid_level(text: str) -> None:
    r = assess(text)
    assert r.level in LEVELS
    assert isinstance(r.reasons, tuple)
    assert set(r.reasons) <= known_reasons()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(sorted({w for i in ALL_ITEMS for w in i["text"].split()})), max_size=60))
def test_word_salad_from_the_labelled_set_is_valid_and_deterministic(words: list[str]) -> None:
    text = " ".join(words)
    first = assess(text)
    assert first.level in LEVELS
    assert assess(text) == first
