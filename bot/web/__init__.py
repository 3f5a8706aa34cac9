"""The browser pages: the local try-it chat (``/``) and the therapist dashboard (``/dashboard``)."""

from __future__ import annotations

from bot.web._mount import is_loopback, mount

__all__ = ["is_loopback", "mount"]
