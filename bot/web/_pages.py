"""What the page modules share: the templates (words from prompts/), times in the therapist's zone, row ids."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Final

from fastapi import Path as InPath
from fastapi import Query
from fastapi.templating import Jinja2Templates

from dialogs.timeparse import format_local
from prompts import Prompts

TEMPLATES: Final = Path(__file__).resolve().parent / "templates"
# A database row id in a URL: SQLite cannot even compare a column with an int outside 64 bits
# (OverflowError, a 500), so a larger one is refused as malformed (422) before any query.
_ROW_ID_MIN, _ROW_ID_MAX = -(2**63), 2**63 - 1
RowId = Annotated[int, InPath(ge=_ROW_ID_MIN, le=_ROW_ID_MAX)]
RowIdQuery = Annotated[int, Query(ge=_ROW_ID_MIN, le=_ROW_ID_MAX)]


def templates(prompts: Prompts) -> Jinja2Templates:
    """Autoescaping Jinja2 templates with ``t(key, **fields)`` for every sentence and ``when(moment, zone)``."""
    pages = Jinja2Templates(directory=TEMPLATES)
    pages.env.globals["t"] = prompts.text
    pages.env.globals["type_label"] = prompts.type_label
    pages.env.globals["when"] = when
    return pages


def when(moment: datetime | None, timezone: str) -> str:
    return (format_local(moment, timezone) or moment.isoformat()) if moment is not None else "—"
