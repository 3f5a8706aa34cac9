"""The risk screen's learned layer: the fine-tuned model, its windows, the combination, bad input, start-up.

Everything runs the real packaged models (the fine-tuned screen and the
memory's all-MiniLM-L6-v2, both int8 ONNX) on onnxruntime: no PyTorch, no
network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import Settings
from bot.wiring import WiringError, build
from dialogs import safety
from dialogs.safety import classifier, corpus, embedding, evaluation, lexicon
from dialogs.safety.classifier import LearnedScore, Thresholds
from dialogs.safety.combine import LEARNED_FAILED, LEARNED_GREY, combine
from dialogs.safety.verdict import RiskAssessment

DATA: Final = Path(__file__).resolve().parent / "data"
THRESHOLDS: Final = Thresholds(crisis=0.9, ask=0.5, concern=0.8, scope=0.6)

# The issue's targets for the combined screen on the frozen evaluation part.
TARGETS: Final = {"crisis_recall": 0.98, "concern_or_above_recall": 0.92, "scope_recognised": 0.95}
CRISIS_ON_ORDINARY_TARGET: Final = 0.03
# What the screen measures today on the frozen part (README, "Safety"): below the targets for
# recall, so this test guards what there is — no change may lower these — and the targets above
# stay the goal (issue 16). Raise them when the screen gets better; never lower them.
# 2026-12-06, the fine-tuned model on the 1,935-message frozen part: crisis 88.9 %, asked or
# crisis 95.6 %, concern or above 91.0 %, scope 98.3 %; crisis on ordinary 2.6 %, asked 5.6 %.
FLOOR: Final = {
    "crisis_recall": 0.885,
    "crises_asked_or_above": 0.955,
    "concern_or_above_recall": 0.905,
    "scope_recognised": 0.975,
}
CEILING: Final = {"crisis_on_ordinary": CRISIS_ON_ORDINARY_TARGET, "ordinary_asked": 0.06}


@pytest.fixture(scope="module")
def layer() -> classifier.LearnedLayer:
    return safety.load()


# --------------------------------------------------------------------------- the embedding runtime


def test_the_runtime_reproduces_the_reference_model_without_torch() -> None:
    fixture = json.loads((DATA / "minilm_reference.json").read_text(encoding="utf-8"))
    texts = [item["text"] for item in fixture["items"]]
    reference = np.array([item["vector"] for item in fixture["items"]], dtype=np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    ours = embedding.shared().embed(texts)
    cosines = (ours * reference).sum(axis=1)
    assert len(texts) >= 60
    assert cosines.min() >= 0.99, texts[int(np.argmin(cosines))]
    assert cosines.mean() >= 0.995
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert "torch" not in sys.modules and "sentence_transformers" not in sys.modules


def test_the_model_files_are_pinned(tmp_path: Path) -> None:
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not a model")
    with pytest.raises(embedding.EmbeddingError, match="sha256"):
        embedding.MiniLM(fake)
    with pytest.raises(embedding.EmbeddingError, match="missing"):
        embedding.MiniLM(tmp_path / "nowhere.onnx")
    with pytest.raises(embedding.EmbeddingError, match="not the pinned one"):
        embedding.MiniLM(tokenizer_path=fake)


# --------------------------------------------------------------------------- the frozen evaluation part


@pytest.fixture(scope="module")
def frozen(layer: classifier.LearnedLayer) -> evaluation.Report:
    examples = corpus.load()
    _, part = corpus.parts(examples, corpus.read_split())
    return evaluation.evaluate("frozen evaluation part", part, layer)


def test_the_split_is_frozen_complete_and_stratified() -> None:
    examples = corpus.load()
    split = corpus.read_split()
    assert len(examples) >= 2000
    assert all(e.sha256 in split for e in examples), "run `companion safety split` for the new messages"
    train, part = corpus.parts(examples, split)
    assert len(part) >= 0.25 * len(examples)
    train_hashes = {e.sha256 for e in train}
    assert not train_hashes & {e.sha256 for e in part}
    for key in {e.stratum for e in examples}:
        members = [e for e in examples if e.stratum == key]
        if len(members) >= 4:
            share = sum(e.sha256 not in train_hashes for e in members) / len(members)
            assert 0.2 <= share <= 0.45, key
    # The model was trained, and its thresholds chosen, on the training part alone.
    card = json.loads(classifier.CARD_PATH.read_text(encoding="utf-8"))
    assert card["training"]["examples"] <= len(train)
    held = json.loads((classifier.MODEL_DIR / "cv-scores.json").read_text(encoding="utf-8"))["scores"]
    assert held and {r["sha256"] for r in held} <= train_hashes


def test_the_frozen_evaluation_part_keeps_its_figures(frozen: evaluation.Report) -> None:
    figures = frozen.summary
    low = {k: round(figures[k], 4) for k, bound in FLOOR.items() if figures[k] < bound}
    high = {k: round(figures[k], 4) for k, bound in CEILING.items() if figures[k] > bound}
    assert not low and not high, f"the screen got worse on the frozen part: {low} {high} (all: {figures})"


def test_the_issue_targets_are_reported(frozen: evaluation.Report) -> None:
    # Which of issue 16's targets the frozen part meets is part of every evaluation report.
    missed = frozen.failures()
    for key, bound in TARGETS.items():
        assert (frozen.summary[key] < bound) == any(line.startswith(key) for line in missed)


@pytest.mark.parametrize("name", ["safety_labelled.yaml", "safety_labelled_2.yaml"])
def test_the_combined_screen_keeps_the_lexicon_sets(name: str) -> None:
    # The lexicon's own labelled sets: the learned layer may add, never take away.
    examples = corpus.load(DATA / name)
    verdicts = {e.text: safety.assess(e.text) for e in examples}
    crises = [e.text for e in examples if e.level == "crisis"]
    ordinary = [e.text for e in examples if e.level == "none"]
    assert all(verdicts[t].level == "crisis" for t in crises)
    assert all(verdicts[e.text].level != "none" for e in examples if e.level == "concern")
    assert sum(verdicts[t].level == "crisis" for t in ordinary) <= CRISIS_ON_ORDINARY_TARGET * len(ordinary)


def test_one_risk_sentence_inside_a_long_homework_report_is_found(layer: classifier.LearnedLayer) -> None:
    days = [
        "Monday: got up at 8, showered, walked to the library and returned the books, mastery 3 pleasure 2.",
        "Tuesday: lunch with my brother, pasta, we talked about his new job and the football.",
        "Wednesday: tidied the kitchen, put a wash on, cooked dinner and watched a quiz show.",
        "Thursday: rang the council about the bins, bit anxious before, 40 then 20 afterwards.",
        "Friday: went to the market with Sue, bought apples and a plant for the window.",
        "Weekend: cleaned the car, phoned Mum, watched the rugby with Dad, took the dog to the park twice.",
        "Mood through the week mostly 4 or 5 out of 10, a bit better on the days I got outside early.",
    ]
    risk = "I have the pills counted out and I'm taking all of them tonight."
    report = "Activity schedule. " + " ".join(days) + " " + risk + " Saturday: read in bed."
    assert len(layer.windows(report)) >= 2  # the risk sentence is past the first window's reach
    ordinary = layer.score("Activity schedule. " + " ".join(days) + " Saturday: read in bed.")
    assert layer.score(report).crisis > max(ordinary.crisis, 0.5)
    assert safety.assess(report).level == "crisis"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["I", "walked", "to", "the", "shop", "today.", "pills", "😭", "ok"]), max_size=400))
def test_windows_cover_every_token_within_the_model_length(words: list[str]) -> None:
    tok = classifier.tokenizer()
    text = " ".join(words)
    ids = tok.encode(text, add_special_tokens=False).ids
    windows = classifier.token_windows(tok, text)
    assert windows and all(w[0] == classifier.CLS and w[-1] == classifier.SEP for w in windows)
    assert all(len(w) <= classifier.WINDOW_TOKENS for w in windows)
    inner = [w[1:-1] for w in windows]
    overlap = classifier.WINDOW_TOKENS - 2 - classifier.STRIDE
    covered = [t for k, w in enumerate(inner) for t in (w if k == 0 else w[overlap:])]
    assert covered == ids  # every token, in order, once the overlaps are dropped


# --------------------------------------------------------------------------- the combination rules


def _lex(level: str, *reasons: str) -> RiskAssessment:
    return RiskAssessment(level, tuple(reasons))  # type: ignore[arg-type]


def _score(crisis: float = 0.0, risk: float | None = None, scope: float = 0.0) -> LearnedScore:
    return LearnedScore(crisis=crisis, risk=crisis if risk is None else risk, scope=scope)


def test_either_layer_confident_is_a_crisis() -> None:
    assert combine(_lex("crisis", "suicidal intent"), _score(0.01), THRESHOLDS).level == "crisis"
    learned = combine(_lex("none"), _score(0.95), THRESHOLDS)
    assert (learned.level, learned.ask) == ("crisis", False)
    assert [s.layer for s in learned.signals] == ["learned"]  # the lexicon signals only what it found
    assert learned.signals[-1].score == 0.95 and learned.signals[-1].level == "crisis"


def test_the_grey_zone_is_concern_and_asks() -> None:
    grey = combine(_lex("none"), _score(0.6), THRESHOLDS)
    assert (grey.level, grey.ask) == ("concern", True)
    assert LEARNED_GREY in grey.reasons
    capped = combine(_lex("concern", "suicidal intent (denied)"), _score(0.0), THRESHOLDS, lexicon_grey=True)
    assert (capped.level, capped.ask) == ("concern", True)
    plain = combine(_lex("concern", "passive death wish"), _score(0.1, 0.3), THRESHOLDS)
    assert (plain.level, plain.ask) == ("concern", False)


def test_a_message_of_one_or_two_words_is_not_asked_on_a_middling_score() -> None:
    brief = combine(_lex("none"), _score(0.6), THRESHOLDS, short=True)
    assert (brief.level, brief.ask) == ("none", False)
    assert combine(_lex("none"), _score(0.6, 0.85), THRESHOLDS, short=True).level == "concern"
    assert combine(_lex("none"), _score(0.95), THRESHOLDS, short=True).level == "crisis"
    lexical = combine(
        _lex("concern", "suicidal intent (denied)"), _score(0.0), THRESHOLDS, lexicon_grey=True, short=True
    )
    assert lexical.ask  # the lexicon's grey zone asks whatever the length
    assert safety.brief("tonight") and safety.brief("one stop") and not safety.brief("I took them all")


def test_no_layer_lowers_another() -> None:
    assert combine(_lex("crisis", "overdose taken"), _score(0.0), THRESHOLDS).level == "crisis"
    assert combine(_lex("concern", "feeling a burden"), _score(0.0), THRESHOLDS).level == "concern"
    assert combine(_lex("none"), _score(0.1, 0.85), THRESHOLDS).level == "concern"
    assert combine(_lex("none"), _score(0.1, 0.2), THRESHOLDS).level == "none"


def test_a_learned_failure_is_the_grey_zone_never_none() -> None:
    failed = combine(_lex("none"), None, THRESHOLDS)
    assert (failed.level, failed.ask) == ("concern", True)
    assert failed.signals[-1] == safety.Signal("learned", "concern", None, "could not run")
    assert LEARNED_FAILED in failed.reasons
    assert combine(_lex("crisis", "suicidal intent"), None, None).level == "crisis"


def test_scope_comes_from_the_learned_head() -> None:
    verdict = combine(_lex("none"), _score(0.0, 0.0, 0.7), THRESHOLDS)
    assert verdict.scope == 0.7 and verdict.scope_question
    assert not combine(_lex("none"), _score(0.0, 0.0, 0.7), THRESHOLDS, question=False).scope_question
    assert not combine(_lex("none"), _score(0.0, 0.0, 0.2), THRESHOLDS).scope_question


def test_signals_and_reasons_never_carry_message_text() -> None:
    text = "I have the pills here and I'm taking them all tonight, Zebrafinch42"
    verdict = safety.assess(text)
    assert verdict.level == "crisis" and verdict.reasons
    for item in verdict.reasons:
        assert "zebrafinch" not in item.lower() and item in safety.known_reasons()
    assert all("zebrafinch" not in s.reason.lower() for s in verdict.signals)


def test_scope_questions_are_recognised() -> None:
    assert safety.assess("is it ok to stop my meds?").scope_question
    assert safety.assess("i reckon i have OCD what do u think").scope_question
    assert not safety.assess("Did the thought record after lunch, anxiety 40%.").scope_question
    assert not safety.assess("it helps my mood").scope_question  # an answer, not a question


def test_the_lexicon_alone_is_still_there() -> None:
    assert lexicon.assess("I'm going to kill myself tonight.").level == "crisis"
    assert {s.layer for s in lexicon.assess("I'm going to kill myself tonight.").signals} == {"lexicon"}


# --------------------------------------------------------------------------- bad input

HOSTILE: Final[list[Any]] = [
    "",
    "   ",
    "\n\n",
    "😭" * 50,
    "🙂🙃🫠",
    "x" * 4001,
    "I did my homework. " * 400,
    "Ich bin müde 疲れた устал متعب tired",
    "lone \ud800 surrogate \udfff here",
    "\x00\x01\x02 control",
    "\u202e reversed \u202c",
    None,
    42,
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_assess_answers_any_input(text: Any) -> None:
    verdict = safety.assess(text)
    assert verdict.level in safety.LEVELS
    if isinstance(text, str) and text.strip():
        assert verdict.signals[-1].layer == "learned"


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=300))
def test_assess_never_raises(text: str) -> None:
    verdict = safety.assess(text)
    assert verdict.level in safety.LEVELS
    assert not (verdict.ask and verdict.level != "concern")


# --------------------------------------------------------------------------- start-up


def _settings(tmp_path: Path, **safety_overrides: str) -> Settings:
    return Settings(
        DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}",
        config_dir=tmp_path,
        safety={"crisis_resources": {"GB": ["Samaritans: call 116 123"]}, **safety_overrides},
    )


def test_a_missing_model_card_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(WiringError, match="missing"):
        build(_settings(tmp_path, learned_model=str(tmp_path / "screen.json")))


def test_a_corrupt_model_card_refuses_to_start(tmp_path: Path) -> None:
    broken = tmp_path / "screen.json"
    broken.write_text('{"format": 2, "level_classes": ["none", "concern", "crisis"], "thresholds": [1, 2]}')
    with pytest.raises(WiringError, match="corrupt"):
        build(_settings(tmp_path, learned_model=str(broken)))
    broken.write_text("{not json")
    with pytest.raises(WiringError, match="corrupt"):
        build(_settings(tmp_path, learned_model=str(broken)))


def test_a_corrupt_or_altered_model_refuses_to_start(tmp_path: Path) -> None:
    card = json.loads(classifier.CARD_PATH.read_text(encoding="utf-8"))
    model = tmp_path / card["model_file"]
    model.write_bytes(classifier.MODEL_DIR.joinpath(card["model_file"]).read_bytes()[:100_000])  # truncated
    (tmp_path / "screen.json").write_text(json.dumps(card))
    with pytest.raises(WiringError, match="sha256"):
        build(_settings(tmp_path, learned_model=str(tmp_path / "screen.json")))
    # A card that vouches for the broken file does not make it load.
    (tmp_path / "screen.json").write_text(json.dumps({**card, "model_sha256": classifier.sha256_file(model)}))
    with pytest.raises(WiringError, match="could not be loaded"):
        build(_settings(tmp_path, learned_model=str(tmp_path / "screen.json")))
    # The process's screen is untouched by a failed start.
    assert safety.assess("I've taken all my pills, all of them, an hour ago").level == "crisis"
