"""Hypothesis building blocks shared by the HTTP fuzz suites (webhooks, web pages).

Hostile text, arbitrary JSON values, documents with slots deleted or
replaced, and bodies that are not even the right kind of thing.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

HOSTILE: list[str] = [
    "",
    " ",
    "\x00",
    "\ud7ff\ufeff\u202e",
    "🙂" * 50,
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "{0.__class__}",
    "%s%s%n",
    "../../etc/passwd",
    "-1",
    "1e309",
    "NaN",
    "99999999999999999999999999",
    "/start AAAAAAAA",
]
"""Strings that have broken parsers, templates and databases elsewhere; each suite adds its own commands."""


def fuzz_settings(default_examples: int) -> settings:
    """A fixed seed and a bounded number of examples in CI; ``COMPANION_FUZZ_EXAMPLES=2000`` for a longer run."""
    return settings(
        max_examples=int(os.environ.get("COMPANION_FUZZ_EXAMPLES", str(default_examples))),
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


def json_strategies(
    hostile: Sequence[str], *, text_size: int, max_leaves: int
) -> tuple[st.SearchStrategy[str], st.SearchStrategy[Any]]:
    """(hostile text, arbitrary JSON values): known-bad strings, random text and very long text, nested freely."""
    hostile_text = st.one_of(
        st.sampled_from(list(hostile)),
        st.text(max_size=text_size),
        st.integers(1000, 20_000).map(lambda n: "a" * n),
    )
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        hostile_text,
    )
    json_values = st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4),
        max_leaves=max_leaves,
    )
    return hostile_text, json_values


def slots(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) slot in a JSON document."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield node, key
        yield from slots(value)


def mutate(
    draw: st.DrawFn,
    base: Any,
    values: st.SearchStrategy[Any],
    *,
    changes: st.SearchStrategy[int],
    new_keys: st.SearchStrategy[str] | None = None,
) -> Any:
    """``base`` with ``changes`` slots deleted or replaced by ``values`` (and, given ``new_keys``, extra fields)."""
    doc = copy.deepcopy(base)
    for _ in range(draw(changes)):
        found = list(slots(doc))
        choice = draw(st.integers(0, 2)) if new_keys is not None else draw(st.integers(1, 2))
        if choice == 0 and new_keys is not None and isinstance(doc, dict):
            doc[draw(new_keys)] = draw(values)
        elif found:
            container, key = draw(st.sampled_from(found))
            if isinstance(container, dict) and choice == 1:
                del container[key]
            else:
                container[key] = draw(values)
    return doc


def junk_bodies(
    values: st.SearchStrategy[Any], *, nested: Callable[[int], bytes], max_body: int, binary: int
) -> st.SearchStrategy[bytes]:
    """Random bytes, invalid UTF-8, JSON of the wrong shape, nesting past the parser's limit, bodies over the limit."""
    return st.one_of(
        st.binary(max_size=binary),
        st.builds(lambda b: b"\xff\xfe" + b + b"\xc3\x28", st.binary(max_size=binary // 6)),  # invalid UTF-8
        values.map(lambda v: json.dumps(v).encode()),
        st.integers(100, 40_000).map(nested),  # deeper than Python's parser recursion limit at the top end
        st.integers(max_body + 1, 2 * max_body).map(lambda n: b"x" * n),  # over the body limit
    )
