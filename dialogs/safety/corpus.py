"""The labelled corpus of the learned layer: loading, identity by sha256, and the frozen training/evaluation split.

Format (``dialogs/safety/corpus/<level>/*.yaml``, and any file given to
``companion safety evaluate --file``): a YAML list of entries
``{text, level: none|concern|crisis, category, scope: true (optional)}``;
the older labelled sets (``- level: ... text: ...``, no category) load too,
with the category ``unlabelled-<level>``.

The split is frozen in ``split.json`` beside the corpus: the sha256 of every
message's text and the part it belongs to. A message is never moved once
recorded. New messages are assigned by :func:`extend_split`, stratum by
stratum (category, level, scope), in sha256 order, so that each stratum's
evaluation share stays at :data:`EVALUATION_SHARE` (rounded half up); the rule
depends only on the texts, so anyone re-running it on the same corpus gets
the same split. Messages not yet recorded are left out of both parts (a test
keeps the file complete).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import yaml

CORPUS_DIR: Final[Path] = Path(__file__).resolve().parent / "corpus"
SPLIT_PATH: Final[Path] = CORPUS_DIR / "split.json"
EVALUATION_SHARE: Final = 0.30
LEVEL_NAMES: Final = ("none", "concern", "crisis")

Part = Literal["train", "evaluation"]


class CorpusError(ValueError):
    """A corpus file that is not in the corpus format (the message names the file and the entry)."""


@dataclass(frozen=True)
class Example:
    """One labelled message."""

    text: str
    level: str
    category: str
    scope: bool = False
    source: str = ""

    @property
    def sha256(self) -> str:
        return text_sha256(self.text)

    @property
    def stratum(self) -> tuple[str, str, bool]:
        return (self.category, self.level, self.scope)


def text_sha256(text: str) -> str:
    """A message's identity: the sha256 of its UTF-8 text (surrounding whitespace ignored)."""
    return hashlib.sha256(text.strip().encode("utf-8", "surrogatepass")).hexdigest()


def load_file(path: Path) -> list[Example]:
    """The entries of one corpus-format YAML file; raises :class:`CorpusError` on a malformed entry."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: not readable YAML ({exc})") from exc
    if data is None:
        return []
    if not isinstance(data, list):
        raise CorpusError(f"{path}: expected a list of entries")
    out: list[Example] = []
    for i, entry in enumerate(data):
        out.append(_example(entry, f"{path}#{i + 1}"))
    return out


def _example(entry: Any, where: str) -> Example:
    if not isinstance(entry, dict):
        raise CorpusError(f"{where}: an entry must be a mapping with text and level")
    text, level = entry.get("text"), entry.get("level")
    if not isinstance(text, str) or not text.strip():
        raise CorpusError(f"{where}: text is missing or empty")
    if level not in LEVEL_NAMES:
        raise CorpusError(f"{where}: level must be one of {', '.join(LEVEL_NAMES)}, not {level!r}")
    category = entry.get("category")
    if category is None:
        category = f"unlabelled-{level}"
    scope = entry.get("scope", False)
    if not isinstance(scope, bool):
        raise CorpusError(f"{where}: scope must be true or false")
    return Example(text=text, level=str(level), category=str(category), scope=scope, source=where)


def load(paths: Iterable[Path] | Path = CORPUS_DIR) -> list[Example]:
    """Every entry under the given files or directories (``*.yaml``, recursively, in name order), deduplicated.

    The same text twice keeps its first entry; the same text with two
    different labels is an error (the corpus would contradict itself).
    """
    roots = [paths] if isinstance(paths, Path) else list(paths)
    files: list[Path] = []
    for root in roots:
        files.extend(sorted(root.rglob("*.yaml")) if root.is_dir() else [root])
    seen: dict[str, Example] = {}
    for file in files:
        for example in load_file(file):
            key = example.sha256
            first = seen.get(key)
            if first is None:
                seen[key] = example
            elif (first.level, first.scope) != (example.level, example.scope):
                raise CorpusError(f"{example.source}: the same text as {first.source} with another label")
    return list(seen.values())


# --------------------------------------------------------------------------- the frozen split


def read_split(path: Path = SPLIT_PATH) -> dict[str, Part]:
    """sha256 -> part, as recorded (empty when no split was frozen yet)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, Part] = {}
    for sha in data.get("evaluation", []):
        out[sha] = "evaluation"
    for sha in data.get("train", []):
        out[sha] = "train"
    return out


def extend_split(examples: Sequence[Example], recorded: dict[str, Part]) -> dict[str, Part]:
    """``recorded`` plus a part for every example not in it (see the module docstring); never moves one."""
    out = dict(recorded)
    strata: dict[tuple[str, str, bool], list[Example]] = defaultdict(list)
    for example in examples:
        strata[example.stratum].append(example)
    for members in strata.values():
        total = len(members)
        want = math.floor(total * EVALUATION_SHARE + 0.5)
        have = sum(1 for m in members if out.get(m.sha256) == "evaluation")
        for example in sorted((m for m in members if m.sha256 not in out), key=lambda m: m.sha256):
            if have < want:
                out[example.sha256] = "evaluation"
                have += 1
            else:
                out[example.sha256] = "train"
    return out


def write_split(split: dict[str, Part], path: Path = SPLIT_PATH) -> None:
    body = {
        "about": (
            "The frozen split of the safety corpus (dialogs/safety/corpus.py): sha256 of each message's text."
            " Never edit by hand; `companion safety split` adds new messages and never moves one."
        ),
        "evaluation_share": EVALUATION_SHARE,
        "evaluation": sorted(s for s, p in split.items() if p == "evaluation"),
        "train": sorted(s for s, p in split.items() if p == "train"),
    }
    path.write_text(json.dumps(body, indent=0) + "\n", encoding="utf-8")


def parts(examples: Sequence[Example], split: dict[str, Part]) -> tuple[list[Example], list[Example]]:
    """(training part, evaluation part) of ``examples``; messages the split does not know are in neither."""
    train = [e for e in examples if split.get(e.sha256) == "train"]
    evaluation = [e for e in examples if split.get(e.sha256) == "evaluation"]
    return train, evaluation
