"""The lexicon layer of the risk screen: deterministic, offline, explainable rules over normalised text."""

# Design in one paragraph: the language lives in prompts/safety/<locale>.yaml (emoji and
# texting-slang normalisation, benign idioms, modifiers such as negation or past tense, rules,
# and combinations of concepts); this module is only the mechanism.  A message is normalised,
# split into sentences and clauses, idioms and titles are blanked *inside the clause they occur
# in*, every rule is matched, each match is capped by the modifiers it lists (negated, past,
# joking, ...), concept tags from uncapped matches are combined (ideation + means, farewell +
# distress, ...) and the highest level wins.  A rule may also require a companion concept in the
# same clause (`with`): the lexicon's backstop rules use it to read concepts rather than phrasings
# (a first-person reference plus death, suicide, self-harm or farewell), with local contexts (panic,
# hyperbole, grief, someone else, the past, a denial) as caps.  Everything is regular expressions
# compiled once per locale; there is no nested quantifier over free text, and modifier answers are
# memoised per sentence and clause, so time is linear in the length.

from __future__ import annotations

import contextlib
import functools
import importlib
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import yaml

from dialogs.safety.verdict import LEVELS, Level, RiskAssessment, Signal

__all__ = ["DEFAULT_LOCALE", "LEVELS", "Level", "RiskAssessment", "Signal", "assess", "known_reasons"]

DEFAULT_LOCALE: Final = "en"
LEXICON_DIR: Final[Path] = Path(__file__).resolve().parents[2] / "prompts" / "safety"
# The only locale names ever turned into a file name: no path tricks through `locale`.
_LOCALE_SHAPE: Final = re.compile(r"[a-z]{2,3}")
_RANK: Final[Mapping[str, int]] = {"none": 0, "concern": 1, "crisis": 2}
_SCOPES: Final = frozenset({"prefix", "clause", "sentence", "window", "message"})
# Spans removed as idioms/titles become this barrier: it is not a word character, so no rule
# can match across the place where the idiom was, and it never appears in normalised text.
_BLANK: Final = " | "
# Screening must fail safe: a bug or a missing lexicon must not silently read as "no risk",
# and must not flood therapists with crises either.
_FAILSAFE_REASON: Final = "screen could not run"
# Modifiers that cap a crisis rule without settling it: a denial, a hypothetical, a joke, a resisted
# urge or a passive wish may still hide active risk, so the screen asks directly (the grey zone).
# Modifiers that explain the words away (sport, fiction, someone else, the past...) do not ask.
_GREY_LABELS: Final = frozenset({"denied", "hypothetical", "possibly joking", "urge resisted", "passive"})


_NO_RISK: Final = RiskAssessment("none", ())


# --------------------------------------------------------------------------- compiled lexicon


@dataclass(frozen=True)
class _Modifier:
    name: str
    scope: str
    label: str
    pattern: re.Pattern[str]
    unless: re.Pattern[str] | None
    unless_scope: str


@dataclass(frozen=True)
class _Rule:
    id: str
    level: Level
    reason: str
    # One regex per top-level alternative of each pattern, each with its own prefilter
    # keywords: some token of a matching clause starts with one of them (None: always run).
    parts: tuple[tuple[re.Pattern[str], frozenset[str] | None], ...]
    tags: frozenset[str]
    caps: tuple[tuple[str, Level], ...]  # (modifier name, highest level allowed when it applies)
    # Concepts that must also occur somewhere in the same clause, in any order ("with" in the
    # lexicon): the backstop pairs a risk concept with a first-person reference this way.
    with_: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True)
class _Combo:
    id: str
    level: Level
    reason: str
    scope: str
    needs: tuple[frozenset[str], ...]  # every group must be met by at least one tag
    any_n: int  # alternatively: this many distinct tags out of `pool`
    pool: frozenset[str]
    caps: tuple[tuple[str, Level], ...]


@dataclass(frozen=True)
class _Sub:
    """A substitution (or, with repl " | ", a blanked idiom) and the keywords it needs."""

    pattern: re.Pattern[str]
    repl: str
    keywords: frozenset[str] | None
    writes: frozenset[str]  # token prefixes of the words the replacement introduces


@dataclass(frozen=True)
class _Subs:
    """Ordered substitutions plus an index from keyword to the substitutions that need it."""

    items: tuple[_Sub, ...]
    keys: frozenset[str]
    index: Mapping[str, tuple[int, ...]]
    always: frozenset[int]

    @classmethod
    def of(cls, items: Sequence[_Sub]) -> _Subs:
        index: dict[str, list[int]] = {}
        for i, sub in enumerate(items):
            for keyword in sub.keywords or ():
                index.setdefault(keyword, []).append(i)
        always = frozenset(i for i, sub in enumerate(items) if sub.keywords is None)
        return cls(tuple(items), frozenset(index), {k: tuple(v) for k, v in index.items()}, always)


@dataclass(frozen=True)
class _Lexicon:
    locale: str
    emoji: Mapping[int, str]
    pre_substitutions: _Subs
    tokens: Mapping[str, str]
    substitutions: _Subs
    cased_benign: tuple[re.Pattern[str], ...]
    cased_benign_if: re.Pattern[str] | None
    cased_substitutions: tuple[tuple[re.Pattern[str], str], ...]
    sentence_split: re.Pattern[str]
    clause_split: re.Pattern[str]
    filler_sentence: re.Pattern[str] | None
    breakers: re.Pattern[str]
    prefix_words: int
    benign: _Subs
    modifiers: Mapping[str, _Modifier]
    rules: tuple[_Rule, ...]
    part_index: Mapping[str, tuple[tuple[int, int], ...]]  # keyword -> (rule, part) needing it
    part_keys: frozenset[str]
    unfiltered_parts: tuple[tuple[int, int], ...]  # parts without a keyword requirement
    combos: tuple[_Combo, ...]
    reasons: frozenset[str]


def _expand(pattern: str, macros: Mapping[str, str]) -> str:
    # Macros may use other macros; a few passes settle any sane nesting.
    for _ in range(5):
        if "{{" not in pattern:
            break
        for name, body in macros.items():
            pattern = pattern.replace("{{" + name + "}}", body)
    if "{{" in pattern:
        raise ValueError(f"unknown macro in safety pattern: {pattern[:80]}")
    return pattern


def _regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:  # name the culprit: a lexicon author needs more than "position 10"
        raise ValueError(f"bad safety pattern {pattern[:80]!r}: {exc}") from exc


def _alternation(patterns: Iterable[str], macros: Mapping[str, str], *, words: bool = True) -> str:
    body = "|".join(f"(?:{_expand(p, macros)})" for p in patterns)
    # Whole words by default, so "skill" never reads as "kill"; patterns say the rest.
    return rf"(?<!\w)(?:{body})(?!\w)" if words else body


# ----------------------------------------------------------------- keyword prefilter
#
# Running ~80 large patterns on every clause costs about a millisecond for a paragraph, yet most
# clauses contain none of the words a rule needs.  For each compiled pattern we derive, from its
# parse tree, a set of "keywords" such that any match must contain a token that *starts with*
# one of them; a clause whose tokens start with none of them cannot match and is skipped.  The
# derivation is conservative: every construct it does not fully understand yields "no filter",
# so it can only skip work, never findings (tests compare filtered and unfiltered results).

_sre_c: Any
_sre_p: Any
try:  # the parser is private; without it the screen still works, just without the prefilter
    _sre_c = importlib.import_module("re._constants")
    _sre_p = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - other Python versions
    _sre_c = _sre_p = None

_Req = frozenset[str] | None  # None: no requirement known
_WORD_HEAD: Final = re.compile(r"\w*")
_TOKENS: Final = re.compile(r"\w+")


def _better(a: _Req, b: _Req, common: frozenset[str]) -> _Req:
    # Either requirement is valid; keep the one that rules out more clauses: no function words
    # ("the", "have" occur everywhere), longer words, fewer alternatives.
    if a is None:
        return b
    if b is None:
        return a

    def score(req: frozenset[str]) -> tuple[bool, int, int]:
        shortest = min(map(len, req))
        return (shortest >= 3 and req.isdisjoint(common), min(4, shortest), -len(req))

    return a if score(a) >= score(b) else b


def _run_keyword(run: str, left_bounded: bool) -> _Req:
    # Words after a space start a token; the first word only if the run itself does.  Any
    # word is at least a prefix of a token (the run may stop mid-word: "kill" of "killing").
    # Only word characters count: tokens are runs of them ("w/" can only promise a "w...").
    parts = [_WORD_HEAD.match(w).group() for w in run.split(" ")]  # type: ignore[union-attr]
    usable = [w for i, w in enumerate(parts) if w and (i > 0 or left_bounded)]
    return frozenset({max(usable, key=len)[:_PREFIX_CAP]}) if usable else None


def _scan(items: Any, left: bool, common: frozenset[str]) -> tuple[_Req, bool]:
    """(requirement, ends at a word boundary) for a parsed sequence starting at boundary `left`."""
    c = _sre_c
    best: _Req = None
    run: list[str] = []
    run_left = left
    here = left  # is the current position a word boundary (start of a token)?
    for op, av in items:
        if op is c.LITERAL:
            if not run:
                run_left = here
            ch = chr(av)
            run.append(ch)
            here = ch == " "
            continue
        if run:
            text = "".join(run)
            best = _better(best, _run_keyword(text, run_left), common)
            if op is c.BRANCH and " " not in text[-1:]:
                # The parser factors shared prefixes out of alternations ("this|that" becomes
                # "th" + "is|at"): rejoin them, or every word starting "th" would wake the rule.
                heads = [_leading_literal(alt.data) for alt in av[1]]
                joined = [_run_keyword(text + head, run_left) for head in heads]
                if all(j is not None for j in joined):
                    best = _better(best, frozenset().union(*(j for j in joined if j is not None)), common)
            run = []
        req: _Req = None
        ends = False
        if op is c.SUBPATTERN:
            req, ends = _scan(av[-1].data, here, common)
        elif op is c.ATOMIC_GROUP:
            req, ends = _scan(av.data, here, common)
        elif op is c.BRANCH:
            scanned = [_scan(alt.data, here, common) for alt in av[1]]
            if all(r is not None for r, _ in scanned):
                req = frozenset().union(*(r for r, _ in scanned if r is not None))
            ends = all(e for _, e in scanned)
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            low, _high, sub = av
            sub_req, sub_ends = _scan(sub.data, here, common)
            req = sub_req if low >= 1 else None
            ends = sub_ends and (low >= 1 or here)
        elif op is c.ASSERT_NOT or op is c.ASSERT:
            ends = here or op is c.ASSERT_NOT  # "(?<!\w)" leaves us at a token start
        elif op is c.AT:
            ends = av in (c.AT_BEGINNING, c.AT_BEGINNING_STRING, c.AT_BOUNDARY) or here
        best = _better(best, req, common)
        here = ends
    if run:
        best = _better(best, _run_keyword("".join(run), run_left), common)
    return best, here


def _leading_literal(items: Any) -> str:
    """The literal characters an alternative starts with, up to its first space or other node."""
    out = []
    for op, av in items:
        if op is not _sre_c.LITERAL or chr(av) == " ":
            break
        out.append(chr(av))
    return "".join(out)


def _keywords(pattern: re.Pattern[str], common: frozenset[str] = frozenset()) -> frozenset[str] | None:
    if _sre_p is None:
        return None
    try:
        req, _ = _scan(_sre_p.parse(pattern.pattern, pattern.flags).data, True, common)
    except Exception:  # any surprise just means "no prefilter"
        return None
    return req


def _top_level_alternatives(pattern: str) -> list[str]:
    """Split `a|b|(c|d)` into `a`, `b`, `(c|d)`: each part gets its own, sharper prefilter."""
    parts, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "]" or pattern[i + 1 : i + 3] == "^]":  # "[]...]" or "[^]...]"
                i += 2 if pattern[i + 1] == "]" else 3
                continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    parts.append(pattern[start:])
    return parts


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _caps(
    raw: Mapping[str, Any] | None, modifiers: Mapping[str, _Modifier], where: str
) -> tuple[tuple[str, Level], ...]:
    out: list[tuple[str, Level]] = []
    for name, level in (raw or {}).items():
        if name not in modifiers:
            raise ValueError(f"{where}: unknown modifier {name!r}")
        if level not in _RANK:
            raise ValueError(f"{where}: bad level {level!r}")
        out.append((str(name), cast(Level, level)))
    return tuple(out)


def _compile(data: Mapping[str, Any], locale: str) -> _Lexicon:
    macros: dict[str, str] = {str(k): str(v) for k, v in (data.get("macros") or {}).items()}
    # The text is case-folded before any rule runs and patterns are written in lower case, so no
    # IGNORECASE: it would make every search about three times slower for nothing.
    flags = 0

    emoji: dict[int, str] = {}
    for symbol, word in (data.get("emoji") or {}).items():
        # Key on the base code point: variation selectors and skin tones are stripped later.
        emoji[ord(str(symbol)[0])] = f" {word} "

    tokens = {str(k).lower(): str(v) for k, v in (data.get("tokens") or {}).items()}

    # Performance only: words too common to be worth filtering on (see _keywords).
    common = frozenset(str(w)[:_PREFIX_CAP] for w in _as_list(data.get("prefilter_common_words")))

    def sub(pattern: str, repl: str, *, words: bool) -> _Sub:
        compiled = _regex(_alternation([pattern], macros, words=words), flags)
        # Words a replacement writes (never "\1" group text, which was in the input already)
        # join the prefix set when it fires, so later substitutions still see them.
        return _Sub(compiled, repl, _keywords(compiled, common), frozenset(_starts(re.sub(r"\\\d", " ", repl))))

    def subs(key: str) -> _Subs:
        return _Subs.of([sub(str(p), str(r), words=False) for p, r in (data.get(key) or [])])

    substitutions = subs("substitutions")
    cased_benign = tuple(re.compile(_expand(p, macros)) for p in _as_list(data.get("cased_benign")))
    cased_if = data.get("cased_benign_if")

    split = data.get("split") or {}
    titles = [re.escape(t.lower()).replace(r"\ ", " ") for t in _as_list(data.get("titles"))]
    benign_items = [sub(p, _BLANK, words=True) for p in _as_list(data.get("benign"))]
    if titles:
        benign_items.append(sub("|".join(titles), _BLANK, words=True))
    benign = _Subs.of(benign_items)

    modifiers: dict[str, _Modifier] = {}
    for name, spec in (data.get("modifiers") or {}).items():
        scope = str(spec.get("scope", "sentence"))
        if scope not in _SCOPES:
            raise ValueError(f"modifier {name}: bad scope {scope!r}")
        pattern = _alternation(_as_list(spec["pattern"]), macros)
        if scope == "prefix":
            pattern += r"\s*$"  # a prefix modifier must govern the match: it ends the prefix
        unless = _as_list(spec.get("unless"))
        modifiers[str(name)] = _Modifier(
            name=str(name),
            scope=scope,
            label=str(spec.get("label", name)),
            pattern=_regex(pattern, flags),
            unless=_regex(_alternation(unless, macros), flags) if unless else None,
            unless_scope=str(spec.get("unless_scope", scope)),
        )

    rules: list[_Rule] = []
    reasons: set[str] = set()
    for spec in data.get("rules") or []:
        rid = str(spec["id"])
        alternatives = [alt for p in _as_list(spec["patterns"]) for alt in _top_level_alternatives(_expand(p, macros))]
        parts = []
        for alt in alternatives:
            regex = _regex(_alternation([alt], macros), flags)
            parts.append((regex, _keywords(regex, common)))
        level = str(spec.get("level", "none"))
        if level not in _RANK:
            raise ValueError(f"rule {rid}: bad level {level!r}")
        reason = str(spec.get("reason", ""))
        if level != "none" and not reason:
            raise ValueError(f"rule {rid}: a rule with a level needs a reason")
        rules.append(
            _Rule(
                id=rid,
                level=cast(Level, level),
                reason=reason,
                parts=tuple(parts),
                tags=frozenset(_as_list(spec.get("tags"))),
                caps=_caps(spec.get("caps"), modifiers, f"rule {rid}"),
                with_=tuple(_regex(_alternation([w], macros), flags) for w in _as_list(spec.get("with"))),
            )
        )
        if reason:
            reasons.add(reason)

    combos: list[_Combo] = []
    for spec in data.get("combos") or []:
        cid = str(spec["id"])
        scope = str(spec.get("scope", "sentence"))
        if scope not in {"sentence", "window", "message"}:
            raise ValueError(f"combo {cid}: bad scope {scope!r}")
        combos.append(
            _Combo(
                id=cid,
                level=cast(Level, str(spec["level"])),
                reason=str(spec["reason"]),
                scope=scope,
                needs=tuple(frozenset(str(g).split("|")) for g in _as_list(spec.get("all"))),
                any_n=int(spec.get("any_n", 0)),
                pool=frozenset(_as_list(spec.get("of"))),
                caps=_caps(spec.get("caps"), modifiers, f"combo {cid}"),
            )
        )
        reasons.add(str(spec["reason"]))

    # A misspelt tag would silently switch a combination off: refuse to load instead.
    produced = frozenset().union(*(rule.tags for rule in rules))
    for combo in combos:
        unknown = frozenset().union(*combo.needs, combo.pool) - produced
        if unknown:
            raise ValueError(f"combo {combo.id}: no rule produces {sorted(unknown)}")

    labels = {mod.label for mod in modifiers.values()}
    reasons |= {f"{reason} ({label})" for reason in reasons for label in labels}

    index: dict[str, list[tuple[int, int]]] = {}
    unfiltered: list[tuple[int, int]] = []
    for ri, rule in enumerate(rules):
        for pi, (_compiled, keywords) in enumerate(rule.parts):
            if keywords is None:
                unfiltered.append((ri, pi))
            for keyword in keywords or ():
                index.setdefault(keyword, []).append((ri, pi))

    return _Lexicon(
        locale=locale,
        emoji=emoji,
        pre_substitutions=subs("pre_substitutions"),
        tokens=tokens,
        substitutions=substitutions,
        cased_benign=cased_benign,
        # The gate is a cheap pre-check, not a whole-word rule: "watch" must open it for "watched".
        cased_benign_if=re.compile(_alternation(_as_list(cased_if), macros, words=False)) if cased_if else None,
        cased_substitutions=tuple(
            (_regex(_expand(str(p), macros)), str(r)) for p, r in (data.get("cased_substitutions") or [])
        ),
        sentence_split=re.compile(str(split.get("sentence", r"[.!?;\n]+"))),
        clause_split=re.compile(str(split.get("clause", r","))),
        filler_sentence=re.compile(str(split["filler"])) if split.get("filler") else None,
        breakers=re.compile(_alternation(_as_list(split.get("breakers")), macros) or r"(?!)"),
        prefix_words=int(split.get("prefix_words", 6)),
        benign=benign,
        modifiers=modifiers,
        rules=tuple(rules),
        part_index={k: tuple(v) for k, v in index.items()},
        part_keys=frozenset(index),
        unfiltered_parts=tuple(unfiltered),
        combos=tuple(combos),
        reasons=frozenset(reasons),
    )


_cache: dict[str, _Lexicon] = {}
_cache_lock: Final = threading.RLock()  # re-entrant: an unknown locale loads English inside


def _normal_locale(locale: object) -> str:
    if not isinstance(locale, str):
        return DEFAULT_LOCALE
    primary = re.split(r"[-_.@]", locale.strip().lower(), maxsplit=1)[0]
    return primary if _LOCALE_SHAPE.fullmatch(primary) else DEFAULT_LOCALE


def _lexicon(locale: str) -> _Lexicon:
    """The compiled lexicon for `locale`, else English; loaded once per process and shared."""
    found = _cache.get(locale)
    if found is not None:
        return found
    with _cache_lock:
        found = _cache.get(locale)
        if found is not None:
            return found
        path = LEXICON_DIR / f"{locale}.yaml"
        if not path.is_file():
            found = _lexicon(DEFAULT_LOCALE) if locale != DEFAULT_LOCALE else None
            if found is None:
                raise FileNotFoundError(path)
        else:
            with path.open(encoding="utf-8") as fh:
                loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
                found = _compile(yaml.load(fh, Loader=loader), locale)
        _cache[locale] = found
        return found


def known_reasons(locale: str = DEFAULT_LOCALE) -> frozenset[str]:
    """Every reason string `assess` can return for `locale`: a fixed vocabulary from the lexicon."""
    return _lexicon(_normal_locale(locale)).reasons | {_FAILSAFE_REASON}


# --------------------------------------------------------------------------- normalisation

# Zero-width and bidi formatting characters carry no meaning for the screen but can split or
# hide words ("k\u200bill"): they vanish.  Control characters separate words: they become spaces.
_ZERO_WIDTH: Final = re.compile(
    "[\u00ad\u034f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufe00-\ufe0f\ufeff\U000e0000-\U000e007f]"
)
_INVISIBLE: Final = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_APOSTROPHES: Final = str.maketrans({c: "'" for c in "\u2018\u2019\u201b\u02bc\u02b9`\u00b4\u2032\uff07"})
_JOINERS: Final = re.compile(r"(?<=\w)[-\u2010\u2011\u2012\u2013\u2014_/](?=\w)")
# "dieeee", "killlll", "pleeease": three or more of a letter become two, which every word in
# the lexicon survives ("kill", "see") and the lexicon's substitutions finish the job.
_REPEATS: Final = re.compile(r"([^\W\d_])\1{2,}")
_NON_WORD: Final = re.compile(r"[^\w%|]+")
_SPACES: Final = re.compile(r"\s+")


_WORDISH: Final = re.compile(r"[\w']+")
# Words looked back beyond `prefix_words` when computing a prefix, so a breaker of a few words
# just before them is still seen.
_PREFIX_SLACK: Final = 4
# Keywords are compared as token prefixes up to this length (longer keywords are cut to it).
_PREFIX_CAP: Final = 6


@functools.lru_cache(maxsize=1 << 15)
def _token_starts(token: str) -> tuple[str, ...]:
    return tuple(token[:i] for i in range(1, min(len(token), _PREFIX_CAP) + 1))


def _starts(text: str) -> set[str]:
    """Every prefix (up to _PREFIX_CAP) of every token: what keyword prefilters are checked against."""
    out: set[str] = set()
    for token in set(_TOKENS.findall(text)):
        out.update(_token_starts(token))
    return out


@dataclass
class _Sentence:
    text: str  # the cleaned sentence, clauses joined by " , "
    clauses: list[str]
    starts: list[set[str]]  # per clause, for the rule prefilter


def _prepare(text: str, lex: _Lexicon) -> list[_Sentence]:
    text = text.translate(lex.emoji)
    text = unicodedata.normalize("NFKC", text)
    text = _ZERO_WIDTH.sub("", text)
    text = _INVISIBLE.sub(" ", text)
    # Titles are recognised by their capitals ("watched Kill Bill"), so before case folding.
    if lex.cased_benign and (lex.cased_benign_if is None or lex.cased_benign_if.search(text.lower())):
        for pattern in lex.cased_benign:
            text = pattern.sub(" , ", text)
    for pattern, repl in lex.cased_substitutions:  # e.g. names: "kill Dave" -> "kill someone"
        text = pattern.sub(repl, text)
    text = text.casefold().translate(_APOSTROPHES)
    text = _JOINERS.sub(" ", text)
    text = _REPEATS.sub(r"\1\1", text)
    starts = _starts(text)
    text, starts = _substitute(text, starts, lex.pre_substitutions)
    tokens = lex.tokens
    if tokens and not tokens.keys().isdisjoint(_WORDISH.findall(text)):
        text = _WORDISH.sub(lambda m: tokens.get(m.group(), m.group()), text)
        starts = _starts(text)  # once per message, and only when texting style was seen
    text, starts = _substitute(text, starts, lex.substitutions)

    sentences: list[_Sentence] = []
    for raw in lex.sentence_split.split(text):
        clauses: list[str] = []
        clause_starts: list[set[str]] = []
        for part in lex.clause_split.split(raw):
            clean = _SPACES.sub(" ", _NON_WORD.sub(" ", part.replace("'", ""))).strip()
            if not clean:
                continue
            blanked, here = _substitute(clean, _starts(clean), lex.benign)
            if blanked is not clean:
                clean = _SPACES.sub(" ", blanked).strip()
            if clean:
                clauses.append(clean)
                clause_starts.append(here)
        if not clauses:
            continue
        joined = " , ".join(clauses)
        # "kms. lol" – a sentence that is only laughter or emoji belongs to the one before it.
        if sentences and lex.filler_sentence is not None and lex.filler_sentence.fullmatch(joined):
            sentences[-1].clauses.extend(clauses)
            sentences[-1].starts.extend(clause_starts)
            sentences[-1].text += " , " + joined
            continue
        sentences.append(_Sentence(joined, clauses, clause_starts))
    return sentences


def _substitute(text: str, starts: set[str], subs: _Subs) -> tuple[str, set[str]]:
    """Apply `subs` in order, skipping those whose keywords are absent; keeps `starts` current."""
    wanted = set(subs.always)
    for keyword in starts & subs.keys:
        wanted.update(subs.index[keyword])
    i, done = 0, -1
    while wanted:
        i = min(wanted)
        wanted.discard(i)
        if i <= done:
            continue
        done = i
        sub = subs.items[i]
        new, count = sub.pattern.subn(sub.repl, text)
        if count:  # it may write words a later substitution needs; stale extras are harmless
            text = new
            fresh = sub.writes - starts
            if fresh:
                starts |= fresh
                for keyword in fresh & subs.keys:
                    wanted.update(j for j in subs.index[keyword] if j > i)
    return text, starts


# --------------------------------------------------------------------------- scoring


class _Context:
    """Lazily evaluated, memoised modifier tests for one message (most clauses match no rule)."""

    def __init__(self, lex: _Lexicon, sentences: Sequence[_Sentence]) -> None:
        self.lex = lex
        self.sentences = sentences
        self.message = " . ".join(s.text for s in sentences)
        self._memo: dict[tuple[str, int, str], bool] = {}

    def _scope_text(self, scope: str, si: int, clause: str, prefix: str) -> str:
        if scope == "prefix":
            return prefix
        if scope == "clause":
            return clause
        if scope == "sentence":
            return self.sentences[si].text
        if scope == "window":
            lo, hi = max(0, si - 1), min(len(self.sentences), si + 2)
            return " . ".join(s.text for s in self.sentences[lo:hi])
        return self.message

    def applies(self, mod: _Modifier, si: int, clause: str, prefix: str) -> bool:
        if mod.scope == "message" and mod.unless_scope == "message":
            si = -1  # one answer per message
        # Only a prefix depends on where the match is; every other answer is fixed by the sentence
        # (and the clause, for clause scopes), so it is computed once: a clause repeating a risk
        # word hundreds of times must not rescan itself for every match (time stays linear).
        memo_key: tuple[str, int, str] | None = None
        if "prefix" not in (mod.scope, mod.unless_scope):
            memo_key = (mod.name, si, clause if "clause" in (mod.scope, mod.unless_scope) else "")
            found = self._memo.get(memo_key)
            if found is not None:
                return found
        hit = mod.pattern.search(self._scope_text(mod.scope, si, clause, prefix)) is not None
        if hit and mod.unless is not None:
            hit = mod.unless.search(self._scope_text(mod.unless_scope, si, clause, prefix)) is None
        if memo_key is not None:
            self._memo[memo_key] = hit
        return hit

    def prefix(self, clause: str, start: int) -> str:
        # Only the last few words can count, so look back a bounded number of them (with room
        # for a breaker), not to the start of the clause: a long clause full of matches stays
        # linear.  The answer is the same as from the whole clause.
        lo = start
        for _ in range(self.lex.prefix_words + _PREFIX_SLACK):
            lo = clause.rfind(" ", 0, lo)
            if lo < 0:
                break
        before = clause[lo + 1 : start]
        breaks = list(self.lex.breakers.finditer(before))
        if breaks:  # only the words after the last "and"/"but"/"because" govern the match
            before = before[breaks[-1].end() :]
        words = before.split()
        return " ".join(words[-self.lex.prefix_words :])


def _capped(
    base: Level,
    caps: Sequence[tuple[str, Level]],
    test: Callable[[_Modifier], bool],
    lex: _Lexicon,
) -> tuple[Level, str | None]:
    """Apply every modifier that holds: the lowest cap wins; returns the level and its label."""
    level, label = base, None
    for name, cap in caps:
        if _RANK[cap] < _RANK[level]:
            mod = lex.modifiers[name]
            if test(mod):
                level, label = cap, mod.label
    return level, label


def _screen(text: str, lex: _Lexicon) -> RiskAssessment:
    sentences = _prepare(text, lex)
    if not sentences:
        return _NO_RISK
    ctx = _Context(lex, sentences)
    found: dict[str, int] = {}  # reason -> rank, insertion-ordered
    tags: list[set[str]] = [set() for _ in sentences]

    grey: list[bool] = [False]  # a crisis rule capped by a modifier that leaves the risk open

    def note(level: Level, reason: str, label: str | None, base: Level = "none") -> None:
        if base == "crisis" and label in _GREY_LABELS and level != "crisis":
            grey[0] = True
        if level == "none" or not reason:
            return
        key = f"{reason} ({label})" if label else reason
        found[key] = max(found.get(key, 0), _RANK[level])

    for si, sentence in enumerate(sentences):
        for clause, starts in zip(sentence.clauses, sentence.starts, strict=True):
            # Only patterns whose keywords begin some token here can match (see _keywords).
            candidates = set(lex.unfiltered_parts)
            index = lex.part_index
            for keyword in starts & lex.part_keys:
                candidates.update(index[keyword])
            for ri, pi in sorted(candidates):  # lexicon order is kept: reasons come out stable
                rule = lex.rules[ri]
                if rule.with_ and not all(w.search(clause) for w in rule.with_):
                    continue
                for match in rule.parts[pi][0].finditer(clause):
                    prefix = ctx.prefix(clause, match.start()) if rule.caps else ""
                    test = functools.partial(ctx.applies, si=si, clause=clause, prefix=prefix)
                    level, label = _capped(rule.level, rule.caps, test, lex)
                    if label is None:
                        # Only an unqualified statement feeds combinations: "I'd never take
                        # pills" must not pair with "tonight" into a crisis.
                        tags[si].update(rule.tags)
                    note(level, rule.reason, label, rule.level)

    everything = range(len(sentences))
    present = set().union(*tags)
    for combo in lex.combos:
        if not (
            all(group & present for group in combo.needs) if combo.needs else len(combo.pool & present) >= combo.any_n
        ):
            continue  # cheap message-wide check first: most messages meet no combination at all
        # The first group names the concept the combination is about ("do it", "at a height",
        # "relapse"); its modifiers are read where that concept was said, so "the presentation"
        # in one sentence cannot excuse "I'm going to do it" in the next, and vice versa.
        anchor = combo.needs[0] if combo.needs else combo.pool
        for si in everything if combo.scope != "message" else range(1):
            if combo.scope == "sentence":
                scope: Sequence[int] = (si,)
            elif combo.scope == "window":
                scope = range(max(0, si - 1), min(len(sentences), si + 2))
            else:
                scope = everything
            have = set().union(*(tags[i] for i in scope))
            met = bool(combo.needs) and all(group & have for group in combo.needs)
            if not met and combo.any_n:
                met = len(combo.pool & have) >= combo.any_n
            if not met:
                continue
            best: tuple[Level, str | None] = ("none", None)
            for ai in (i for i in scope if tags[i] & anchor):
                text_ai = sentences[ai].text
                test = functools.partial(ctx.applies, si=ai, clause=text_ai, prefix=text_ai)
                capped = _capped(combo.level, combo.caps, test, lex)
                if _RANK[capped[0]] > _RANK[best[0]] or best[0] == "none":
                    best = capped
                if capped[1] is None:  # an unqualified anchor: the full level stands
                    break
            note(best[0], combo.reason, best[1], combo.level)

    if not found:
        return _NO_RISK
    top = max(found.values())
    ordered = sorted(found, key=lambda r: -found[r])  # stable: crisis reasons first, then concern
    signals = tuple(Signal("lexicon", LEVELS[found[r]], None, r) for r in ordered)
    return RiskAssessment(LEVELS[top], tuple(ordered), ask=grey[0] and top < _RANK["crisis"], signals=signals)


def assess(text: str, *, locale: str = DEFAULT_LOCALE) -> RiskAssessment:
    """Screen one client message for risk; deterministic, offline, and it never raises.

    Contract:
      * ``level`` is ``"crisis"`` for suicidal intent, plan or means, self-harm happening now or
        just done, an overdose taken, farewell messages, intent to harm someone, or someone in
        immediate danger; ``"concern"`` for passive death wishes, feeling a burden, hopelessness,
        resisted self-harm urges, past self-harm or attempts, substance or medication misuse,
        abuse not happening now, and risk statements that are denied, joked about or in the
        past.  Death wishes that sound active ("I want to die", "wanna be dead", "I don't want
        to be alive anymore", "feeling suicidal") are ``"crisis"``.  ``"none"`` otherwise –
        including idioms ("this deadline is killing me"), titles ("Kill Bill"), grief, anger
        without threat and panic/health-anxiety predictions ("I'm going to die" in a thought
        record).  "I don't want to die" on its own is ``"none"``
        (fear of dying is common in panic work); with any disclosure of death wishes it is
        ``"concern"``.
      * The whole text is assessed sentence by sentence and clause by clause and the highest
        level wins, so a risk statement buried in a long homework report is found, and an
        idiom only neutralises its own clause.
      * ``reasons`` are short fixed strings from the lexicon (see :func:`known_reasons`), most
        severe first; they never contain text from the message.  Empty when ``level`` is
        ``"none"``.
      * ``locale`` picks ``prompts/safety/<locale>.yaml`` (``"en-GB"`` -> ``"en"``); an unknown
        locale falls back to English.
      * Any input (empty, huge, emoji-only, control characters, right-to-left script, not even a
        ``str``) returns a result.  Should the screen itself fail (say, a missing lexicon) the
        result is ``"concern"`` with the reason ``"screen could not run"`` – never a silent
        ``"none"``.  Time is linear in the length: about 0.1 ms for a short message, 0.3-1 ms
        for a 300-character homework report, a few tens of milliseconds at most for 10,000.
    """
    try:
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        if not text.strip():
            return _NO_RISK
        return _screen(text, _lexicon(_normal_locale(locale)))
    except Exception:  # the screen runs before every dialog: it must never take one down
        return RiskAssessment(
            "concern", (_FAILSAFE_REASON,), ask=True, signals=(Signal("lexicon", "concern", None, _FAILSAFE_REASON),)
        )


def _warm() -> None:
    # Compile the default lexicon at import so the first client message pays no start-up cost;
    # if that fails, assess() reports it, fail-safe, on every call.
    with contextlib.suppress(Exception):
        _lexicon(DEFAULT_LOCALE)


_warm()
