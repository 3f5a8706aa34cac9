"""Builds the companion's parts from settings: database, prompts, clock, engine."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import prompts
from bot.config import Settings
from dialogs.clock import Clock, SystemClock
from dialogs.engine import Engine
from storage import Database

log = logging.getLogger("companion")


@dataclass
class Companion:
    settings: Settings
    db: Database
    engine: Engine
    clock: Clock


def build(settings: Settings, *, clock: Clock | None = None, upgrade: bool = True) -> Companion:
    """Wire the parts; ``upgrade`` brings the schema to the latest migration first."""
    clock = clock or SystemClock()
    db = Database(settings.url)
    if upgrade:
        db.upgrade()
    engine = Engine(prompts=prompts.load(settings.dialog.locale), clock=clock, settings=settings.dialog_settings())
    return Companion(settings=settings, db=db, engine=engine, clock=clock)
