"""The adherence chart drawn in the page: an inline SVG's geometry from the digest's weekly numbers (no JS)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from dialogs.digest import ClientDigest
from dialogs.timeparse import utc_to_local

WIDTH: Final = 560
HEIGHT: Final = 240
LEFT, RIGHT, TOP, BOTTOM = 40, 16, 16, 48

Point = tuple[float, float, str]  # x, y, the value as shown


@dataclass(frozen=True)
class Series:
    key: str  # "amount" | "quality"
    segments: tuple[tuple[Point, ...], ...]  # weeks without debriefs break the line: no data is not zero

    @property
    def points(self) -> tuple[Point, ...]:
        return tuple(p for segment in self.segments for p in segment)

    def path(self, segment: tuple[Point, ...]) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in segment)


@dataclass(frozen=True)
class Week:
    x: float
    label: str
    debriefs: int
    amount: str
    quality: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    weeks: tuple[Week, ...]
    series: tuple[Series, ...]
    y_ticks: tuple[tuple[float, str], ...]

    @property
    def has_data(self) -> bool:
        return any(w.debriefs for w in self.weeks)


def _y(value: float) -> float:
    """0–4 to the plot's height (SVG's y grows downwards)."""
    return TOP + (HEIGHT - TOP - BOTTOM) * (1 - value / 4)


def adherence_chart(digest: ClientDigest) -> Chart:
    """Amount done (mean 0–4) and quality (share of rubric criteria met, scaled to 0–4) per trend week."""
    n = max(len(digest.trend), 1)
    step = (WIDTH - LEFT - RIGHT) / n
    xs = [LEFT + step * (i + 0.5) for i in range(n)]
    weeks = []
    for x, point in zip(xs, digest.trend, strict=False):
        local = utc_to_local(point.start, digest.timezone)
        weeks.append(
            Week(
                x=x,
                label=f"{local.day} {local:%b}" if local else "",
                debriefs=point.debriefs,
                amount=f"{point.quantity:.1f}" if point.quantity is not None else "—",
                quality=f"{round(point.quality * 100)}%" if point.quality is not None else "—",
            )
        )

    def series(key: str, values: list[float | None], shown: list[str]) -> Series:
        segments: list[tuple[Point, ...]] = []
        current: list[Point] = []
        for x, value, label in zip(xs, values, shown, strict=False):
            if value is None:
                if current:
                    segments.append(tuple(current))
                current = []
                continue
            current.append((x, _y(value), label))
        if current:
            segments.append(tuple(current))
        return Series(key, tuple(segments))

    amounts = [p.quantity for p in digest.trend]
    quality = [p.quality * 4 if p.quality is not None else None for p in digest.trend]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=RIGHT,
        top=TOP,
        bottom=BOTTOM,
        weeks=tuple(weeks),
        series=(
            series("amount", amounts, [w.amount for w in weeks]),
            series("quality", quality, [w.quality for w in weeks]),
        ),
        y_ticks=tuple((_y(v), str(v)) for v in range(5)),
    )
