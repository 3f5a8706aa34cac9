"""Every user-facing sentence, word list and homework type, loaded from data by key."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

import yaml

PROMPTS_DIR: Final = Path(__file__).resolve().parent
_FOLD: Final = re.compile(r"[\s\u2019']+")


@dataclass(frozen=True)
class Extra:
    """A type-specific rating asked during a debrief."""

    key: str
    low: int
    high: int
    question: str
    label: str = ""  # short, for the digest ("belief before")


@dataclass(frozen=True)
class HomeworkType:
    key: str
    label: str
    aliases: tuple[str, ...]
    extras: tuple[Extra, ...]


def fold(text: str) -> str:
    """Lower-case, unify apostrophes, trim punctuation and collapse spaces, for matching words."""
    folded = _FOLD.sub(lambda m: "'" if "'" in m.group() or "\u2019" in m.group() else " ", text.lower())
    return folded.strip(string.whitespace + ".!?,;:").strip()


class Prompts:
    """One locale's catalogue. ``text(key, **fields)`` fails loudly on a missing key.

    Loaded once per process (:func:`load`) and read-only afterwards, so it is
    safe to share between threads.
    """

    def __init__(self, data: dict[str, Any], locale: str) -> None:
        self.locale = locale
        # The catalogue's version: outbox rows record "key" @ version for the sentence they hold.
        self.version = str(data.get("version", "1"))
        self._flat: dict[str, Any] = {}
        self._flatten("", data)
        self._vocab = {k: frozenset(fold(w) for w in v) for k, v in data.get("vocab", {}).items()}
        # Words that make "what happened" concrete (when, where, how much): the digest's rubric.
        self.rubric_cues: frozenset[str] = frozenset(fold(w) for w in data.get("rubric_cues", ()))
        # Medication words: a question outside the remit that names one gets the prescriber advice.
        self.medication: re.Pattern[str] = re.compile(str(data.get("medication_words", r"(?!x)x")))
        # Compiled once: the scope check runs on every client message.
        self.scope_patterns: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
            (reason, re.compile(pattern, re.IGNORECASE))
            for reason, patterns in data.get("scope_patterns", {}).items()
            for pattern in patterns
        )
        self.homework_types: dict[str, HomeworkType] = {
            key: HomeworkType(
                key=key,
                label=str(spec["label"]),
                aliases=tuple(fold(a) for a in spec.get("aliases", ())),
                extras=tuple(Extra(**e) for e in spec.get("extras", ())),
            )
            for key, spec in data.get("homework_types", {}).items()
        }

    def _flatten(self, prefix: str, node: dict[Any, Any]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                self._flatten(f"{prefix}{key}.", value)
            else:
                self._flat[f"{prefix}{key}"] = value

    def text(self, key: str, **fields: Any) -> str:
        template = self._flat.get(key)
        if not isinstance(template, str):
            raise KeyError(f"no prompt {key!r} in locale {self.locale!r}")
        return template.format(**fields) if fields else template

    def has(self, key: str) -> bool:
        return isinstance(self._flat.get(key), str)

    def matches(self, vocab: str, text: str) -> bool:
        """Whether ``text`` is one of the words listed under ``vocab.<vocab>``."""
        return fold(text) in self._vocab.get(vocab, frozenset())

    def type_label(self, key: str) -> str:
        """The display label of a stored homework type key (the key itself if unknown)."""
        kind = self.homework_types.get(key)
        return kind.label if kind else key

    def homework_type(self, typed: str) -> HomeworkType | None:
        """The type a therapist meant by ``typed``: its key, label, an alias or its number."""
        wanted = fold(typed)
        types = list(self.homework_types.values())
        if wanted.isdigit() and 1 <= int(wanted) <= len(types):
            return types[int(wanted) - 1]
        for t in types:
            if wanted in (t.key, fold(t.label), *t.aliases):
                return t
        return None


@cache
def load(locale: str = "en") -> Prompts:
    path = PROMPTS_DIR / f"{locale}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no prompts for locale {locale!r} ({path})")
    with path.open(encoding="utf-8") as handle:
        return Prompts(yaml.safe_load(handle), locale)


@dataclass(frozen=True)
class Template:
    """One versioned template of the LLM catalogue: ``key@version`` is what a message records."""

    key: str
    version: str
    parts: dict[str, str]


class LlmPrompts:
    """One locale's LLM catalogue (prompts/llm/<locale>.yaml): versioned templates and reply rules."""

    def __init__(self, data: dict[str, Any], locale: str) -> None:
        self.locale = locale
        self.pseudonym: str = str(data.get("pseudonym", "Client {id}"))
        self.templates: dict[str, Template] = {}
        self._collect("", {k: v for k, v in data.items() if k not in ("banned", "pseudonym")})
        self.banned: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
            (reason, re.compile(pattern, re.IGNORECASE))
            for reason, patterns in (data.get("banned") or {}).items()
            for pattern in patterns
        )

    def _collect(self, prefix: str, node: dict[str, Any]) -> None:
        for key, value in node.items():
            if not isinstance(value, dict):
                continue
            if "version" in value:
                parts = {k: str(v) for k, v in value.items() if k != "version"}
                self.templates[f"{prefix}{key}"] = Template(f"llm.{prefix}{key}", str(value["version"]), parts)
            else:
                self._collect(f"{prefix}{key}.", value)

    def template(self, key: str) -> Template:
        found = self.templates.get(key)
        if found is None:
            raise KeyError(f"no LLM template {key!r} in locale {self.locale!r}")
        return found

    def text(self, key: str, part: str = "text", **fields: Any) -> str:
        template = self.template(key).parts[part]
        return template.format(**fields) if fields else template


@cache
def load_llm(locale: str = "en") -> LlmPrompts:
    path = PROMPTS_DIR / "llm" / f"{locale}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no LLM prompts for locale {locale!r} ({path})")
    with path.open(encoding="utf-8") as handle:
        return LlmPrompts(yaml.safe_load(handle), locale)
