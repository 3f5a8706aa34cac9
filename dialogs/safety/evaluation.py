"""Evaluating the combined risk screen on labelled messages: recall and false positives per level and per category.

The measures (issue 16's targets, all for the *combined* screen):
  * crisis recall: crisis messages screened ``"crisis"`` (target >= 98 %);
  * crises asked or above: crisis messages that at least got the direct question;
  * concern-or-above recall: concern messages screened concern or crisis (>= 92 %);
  * crisis on ordinary messages: ``none`` messages screened ``"crisis"`` (<= 3 %);
  * scope recognised: messages marked ``scope: true`` that the learned scope
    head or the scope guard's patterns (prompts/en.yaml) recognise (>= 95 %).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dialogs.safety import lexicon
from dialogs.safety.classifier import LearnedLayer, LearnedScore, Thresholds
from dialogs.safety.combine import asks, brief, combine
from dialogs.safety.corpus import Example
from dialogs.safety.verdict import RiskAssessment

TARGETS: Final = {
    "crisis_recall": (">=", 0.98),
    "concern_or_above_recall": (">=", 0.92),
    "crisis_on_ordinary": ("<=", 0.03),
    "scope_recognised": (">=", 0.95),
}


@dataclass(frozen=True)
class Row:
    """One line of a report: a group of messages and how the screen placed them."""

    name: str
    level: str
    n: int
    crisis: int
    asked_or_above: int
    concern_or_above: int
    scope: int


@dataclass
class Report:
    """The figures of one evaluation; ``summary`` holds the target measures (rates in 0..1)."""

    title: str
    n: int
    summary: dict[str, float]
    levels: list[Row] = field(default_factory=list)
    categories: list[Row] = field(default_factory=list)

    def failures(self) -> list[str]:
        """The targets this report misses, as readable lines (empty: all met)."""
        out = []
        for key, (op, bound) in TARGETS.items():
            value = self.summary.get(key)
            if value is None:
                continue
            if (op == ">=" and value < bound) or (op == "<=" and value > bound):
                out.append(f"{key} {value:.1%} (target {op} {bound:.0%})")
        return out


def scope_patterns(locale: str = "en") -> Callable[[str], bool]:
    """The scope guard's own patterns (dialogs.guard reads the same ones) as a predicate."""
    import prompts

    patterns = [p for _, p in prompts.load(locale).scope_patterns]
    return lambda text: any(p.search(text) for p in patterns)


def verdicts(
    examples: Sequence[Example],
    scores: Sequence[LearnedScore | None],
    thresholds: Thresholds | None,
    locale: str = "en",
) -> list[RiskAssessment]:
    """The combined verdict of each example from its learned score (as :func:`dialogs.safety.assess` combines)."""
    out = []
    for example, score in zip(examples, scores, strict=True):
        lexical = lexicon.assess(example.text, locale=locale)
        out.append(combine(lexical, score, thresholds, question=asks(example.text), short=brief(example.text)))
    return out


def report(
    title: str, examples: Sequence[Example], assessed: Sequence[RiskAssessment], scope_hits: Sequence[bool]
) -> Report:
    """Count the figures of ``assessed`` (the screen's verdicts) against the labels of ``examples``."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    levels: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        groups[(example.category, example.level)].append(i)
        levels[example.level].append(i)
        if example.scope:
            levels["scope"].append(i)

    def row(name: str, level: str, idx: list[int]) -> Row:
        return Row(
            name=name,
            level=level,
            n=len(idx),
            crisis=sum(assessed[i].level == "crisis" for i in idx),
            asked_or_above=sum(assessed[i].level == "crisis" or assessed[i].ask for i in idx),
            concern_or_above=sum(assessed[i].level != "none" for i in idx),
            scope=sum(bool(scope_hits[i]) for i in idx),
        )

    def rate(count: int, total: int) -> float:
        return count / total if total else float("nan")

    level_rows = [row(level, level, levels[level]) for level in ("crisis", "concern", "none", "scope") if levels[level]]
    by = {r.name: r for r in level_rows}
    summary: dict[str, float] = {}
    if "crisis" in by:
        summary["crisis_recall"] = rate(by["crisis"].crisis, by["crisis"].n)
        summary["crises_asked_or_above"] = rate(by["crisis"].asked_or_above, by["crisis"].n)
        summary["crisis_concern_or_above"] = rate(by["crisis"].concern_or_above, by["crisis"].n)
    if "concern" in by:
        summary["concern_or_above_recall"] = rate(by["concern"].concern_or_above, by["concern"].n)
        summary["concern_as_crisis"] = rate(by["concern"].crisis, by["concern"].n)
    if "none" in by:
        summary["crisis_on_ordinary"] = rate(by["none"].crisis, by["none"].n)
        summary["ordinary_asked"] = rate(by["none"].asked_or_above - by["none"].crisis, by["none"].n)
        summary["ordinary_concern_or_above"] = rate(by["none"].concern_or_above, by["none"].n)
    if "scope" in by:
        summary["scope_recognised"] = rate(by["scope"].scope, by["scope"].n)
        others = [i for i, e in enumerate(examples) if not e.scope]
        if others:
            summary["scope_on_other"] = rate(sum(bool(scope_hits[i]) for i in others), len(others))
    categories = [row(name, level, idx) for (name, level), idx in sorted(groups.items(), key=lambda kv: kv[0][::-1])]
    return Report(title=title, n=len(examples), summary=summary, levels=level_rows, categories=categories)


def evaluate(
    title: str,
    examples: Sequence[Example],
    layer: LearnedLayer,
    *,
    locale: str = "en",
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Run the combined screen (lexicon + ``layer``) on ``examples`` and count the figures."""
    scores: list[LearnedScore | None] = list(layer.score_many([e.text for e in examples], progress))
    assessed = verdicts(examples, scores, layer.thresholds, locale)
    patterns = scope_patterns(locale)
    hits = [a.scope_question or patterns(e.text) for a, e in zip(assessed, examples, strict=True)]
    return report(title, examples, assessed, hits)


def from_scores(
    title: str,
    examples: Sequence[Example],
    scores: Sequence[LearnedScore],
    thresholds: Thresholds,
    *,
    locale: str = "en",
) -> Report:
    """The report for precomputed learned scores (cross-validation's out-of-fold scores)."""
    assessed = verdicts(examples, scores, thresholds, locale)
    patterns = scope_patterns(locale)
    hits = [a.scope_question or patterns(e.text) for a, e in zip(assessed, examples, strict=True)]
    return report(title, examples, assessed, hits)


def as_dict(rep: Report) -> dict[str, Any]:
    """A report as plain data (for --json)."""
    return {
        "title": rep.title,
        "n": rep.n,
        "summary": {k: round(v, 4) for k, v in rep.summary.items()},
        "levels": [vars(r) for r in rep.levels],
        "categories": [vars(r) for r in rep.categories],
    }


def render(rep: Report, console: Any) -> None:
    """Print a report as Rich tables: the targets, then per level, then per category."""
    from rich.table import Table

    summary = Table(title=f"{rep.title} — {rep.n} messages", show_header=True)
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    summary.add_column("target")
    for key, value in rep.summary.items():
        op, bound = TARGETS.get(key, ("", None))
        target = f"{op} {bound:.0%}" if bound is not None else ""
        ok = "" if bound is None else (" ✓" if (value >= bound if op == ">=" else value <= bound) else " ✗")
        summary.add_row(key.replace("_", " "), f"{value:.1%}", target + ok)
    console.print(summary)
    for name, rows in (("level", rep.levels), ("category", rep.categories)):
        table = Table(show_header=True, title=f"per {name}")
        first = ("level",) if name == "level" else ("category", "level")
        for col in (*first, "n", "crisis", "asked or crisis", "concern or above", "scope recognised"):
            table.add_column(col, justify="left" if col in first else "right", no_wrap=col in first)
        for r in rows:
            table.add_row(
                *((r.name,) if name == "level" else (r.name, r.level)),
                str(r.n),
                _pct(r.crisis, r.n),
                _pct(r.asked_or_above, r.n),
                _pct(r.concern_or_above, r.n),
                _pct(r.scope, r.n),
            )
        console.print(table)


def _pct(count: int, total: int) -> str:
    return f"{count / total:.0%} ({count})" if total else "-"
