"""Hand-written time parsing: a tiny grammar that must be predictable and DST-correct; date libraries guess too much."""

from __future__ import annotations

import functools
import re
import string
import unicodedata
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from dialogs.places import ZoneChoice, zones_for

__all__ = [
    "ZoneChoice",
    "format_local",
    "local_to_utc",
    "parse_clock_time",
    "parse_when",
    "resolve_timezone",
    "timezone_choices",
    "utc_to_local",
]

# Inputs longer than these are rejected before any work is done.
_MAX_TZ_LEN = 100
_MAX_CLOCK_LEN = 40
_MAX_WHEN_LEN = 200

# Top-level IANA regions whose last path component is a city (or island, base, ...).
# Legacy folders (US/, Canada/, Brazil/, Etc/, ...) are reachable only by full name.
_CITY_REGIONS = frozenset(
    {"Africa", "America", "Antarctica", "Arctic", "Asia", "Atlantic", "Australia", "Europe", "Indian", "Pacific"}
)

# Abbreviations and region names people type for their zone, mapped to the region's real zone, which keeps
# its daylight-saving rules: IANA's own "EST", "MST" and "HST" are fixed offsets, so a New Yorker who typed
# EST was an hour late all summer. Several zones: the abbreviation means different places; ask which.
# Arizona keeps MST all year: MST reads as Denver, and the confirmation shows the local time to correct it.
_ABBREVIATIONS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("est", "edt", "et", "eastern", "easterntime", "usest"), ("America/New_York",)),
    **dict.fromkeys(("cst", "cdt", "ct", "central", "centraltime"), ("America/Chicago",)),
    **dict.fromkeys(("mst", "mdt", "mt", "mountain", "mountaintime"), ("America/Denver",)),
    **dict.fromkeys(("pst", "pdt", "pt", "pacific", "pacifictime"), ("America/Los_Angeles",)),
    **dict.fromkeys(("akst", "akdt", "alaska"), ("America/Anchorage",)),
    **dict.fromkeys(("hst", "hast", "hawaii"), ("Pacific/Honolulu",)),
    **dict.fromkeys(("ast", "adt", "atlantic"), ("America/Halifax",)),
    **dict.fromkeys(("nst", "ndt", "newfoundland"), ("America/St_Johns",)),
    **dict.fromkeys(("bst", "uk", "uktime", "britishtime"), ("Europe/London",)),
    "gmt": ("Europe/London", "GMT"),  # UK time (BST in summer), or GMT all year (Accra, Reykjavik)
    **dict.fromkeys(("wet", "west"), ("Europe/Lisbon",)),
    **dict.fromkeys(("cet", "cest", "met", "mest"), ("Europe/Paris",)),  # Paris and Berlin share the EU rules
    **dict.fromkeys(("eet", "eest"), ("Europe/Athens",)),
    "msk": ("Europe/Moscow",),
    "ist": ("Asia/Kolkata", "Europe/Dublin", "Asia/Jerusalem"),  # India, Irish, Israel
    "pkt": ("Asia/Karachi",),
    "jst": ("Asia/Tokyo",),
    "kst": ("Asia/Seoul",),
    "hkt": ("Asia/Hong_Kong",),
    "sgt": ("Asia/Singapore",),
    **dict.fromkeys(("aest", "aedt"), ("Australia/Sydney",)),
    **dict.fromkeys(("acst", "acdt"), ("Australia/Adelaide",)),
    "awst": ("Australia/Perth",),
    **dict.fromkeys(("nzst", "nzdt"), ("Pacific/Auckland",)),
    "sast": ("Africa/Johannesburg",),
    "cat": ("Africa/Maputo",),
    "eat": ("Africa/Nairobi",),
    "wat": ("Africa/Lagos",),
    "brt": ("America/Sao_Paulo",),
    "art": ("America/Argentina/Buenos_Aires",),
}

# Cities, countries and names that are not (or not unambiguously) the last component
# of an IANA zone. Keys are compared after _city_key(); an alias wins over the
# zone-component lookup but never over an exact IANA name.
_ALIASES: dict[str, str] = {
    # United States and Canada
    "san francisco": "America/Los_Angeles",
    "seattle": "America/Los_Angeles",
    "san diego": "America/Los_Angeles",
    "las vegas": "America/Los_Angeles",
    "sacramento": "America/Los_Angeles",
    "oakland": "America/Los_Angeles",
    "california": "America/Los_Angeles",
    "pacific": "America/Los_Angeles",
    "pacific time": "America/Los_Angeles",
    "boston": "America/New_York",
    "washington": "America/New_York",
    "washington dc": "America/New_York",
    "dc": "America/New_York",
    "miami": "America/New_York",
    "philadelphia": "America/New_York",
    "atlanta": "America/New_York",
    "baltimore": "America/New_York",
    "pittsburgh": "America/New_York",
    "nyc": "America/New_York",
    "eastern": "America/New_York",
    "eastern time": "America/New_York",
    "houston": "America/Chicago",
    "dallas": "America/Chicago",
    "austin": "America/Chicago",
    "minneapolis": "America/Chicago",
    "new orleans": "America/Chicago",
    "st louis": "America/Chicago",
    "central": "America/Chicago",
    "central time": "America/Chicago",
    "salt lake city": "America/Denver",
    "albuquerque": "America/Denver",
    "mountain": "America/Denver",
    "mountain time": "America/Denver",
    "hawaii": "Pacific/Honolulu",
    "alaska": "America/Anchorage",
    "montreal": "America/Toronto",
    "ottawa": "America/Toronto",
    "quebec": "America/Toronto",
    "calgary": "America/Edmonton",
    # United Kingdom and Ireland
    "manchester": "Europe/London",
    "edinburgh": "Europe/London",
    "glasgow": "Europe/London",
    "cardiff": "Europe/London",
    "belfast": "Europe/London",
    "birmingham": "Europe/London",
    "liverpool": "Europe/London",
    "leeds": "Europe/London",
    "bristol": "Europe/London",
    "oxford": "Europe/London",
    "cambridge": "Europe/London",
    "uk": "Europe/London",
    "united kingdom": "Europe/London",
    "england": "Europe/London",
    "scotland": "Europe/London",
    "wales": "Europe/London",
    "britain": "Europe/London",
    "cork": "Europe/Dublin",
    "galway": "Europe/Dublin",
    "ireland": "Europe/Dublin",
    # Continental Europe
    "munich": "Europe/Berlin",
    "hamburg": "Europe/Berlin",
    "frankfurt": "Europe/Berlin",
    "cologne": "Europe/Berlin",
    "stuttgart": "Europe/Berlin",
    "dusseldorf": "Europe/Berlin",
    "germany": "Europe/Berlin",
    "lyon": "Europe/Paris",
    "marseille": "Europe/Paris",
    "france": "Europe/Paris",
    "barcelona": "Europe/Madrid",
    "seville": "Europe/Madrid",
    "spain": "Europe/Madrid",
    "milan": "Europe/Rome",
    "naples": "Europe/Rome",
    "florence": "Europe/Rome",
    "venice": "Europe/Rome",
    "italy": "Europe/Rome",
    "geneva": "Europe/Zurich",
    "krakow": "Europe/Warsaw",
    "rotterdam": "Europe/Amsterdam",
    "the hague": "Europe/Amsterdam",
    "istanbul": "Europe/Istanbul",
    "nicosia": "Asia/Nicosia",
    # Asia, Oceania, Africa, South America
    "mumbai": "Asia/Kolkata",
    "bombay": "Asia/Kolkata",
    "delhi": "Asia/Kolkata",
    "new delhi": "Asia/Kolkata",
    "bangalore": "Asia/Kolkata",
    "bengaluru": "Asia/Kolkata",
    "chennai": "Asia/Kolkata",
    "hyderabad": "Asia/Kolkata",
    "pune": "Asia/Kolkata",
    "india": "Asia/Kolkata",
    "beijing": "Asia/Shanghai",
    "shenzhen": "Asia/Shanghai",
    "guangzhou": "Asia/Shanghai",
    "china": "Asia/Shanghai",
    "osaka": "Asia/Tokyo",
    "kyoto": "Asia/Tokyo",
    "japan": "Asia/Tokyo",
    "abu dhabi": "Asia/Dubai",
    "tel aviv": "Asia/Jerusalem",
    "lahore": "Asia/Karachi",
    "islamabad": "Asia/Karachi",
    "hanoi": "Asia/Ho_Chi_Minh",
    "saigon": "Asia/Ho_Chi_Minh",
    "ho chi minh city": "Asia/Ho_Chi_Minh",
    "canberra": "Australia/Sydney",
    "wellington": "Pacific/Auckland",
    "new zealand": "Pacific/Auckland",
    "cape town": "Africa/Johannesburg",
    "pretoria": "Africa/Johannesburg",
    "rio": "America/Sao_Paulo",
    "rio de janeiro": "America/Sao_Paulo",
    # Universal time
    "utc": "UTC",
    "z": "UTC",
    "coordinated universal time": "UTC",
}

_WEEKDAYS: dict[str, int] = {
    "mon": 0,
    "monday": 0,
    "tue": 1,
    "tues": 1,
    "tuesday": 1,
    "wed": 2,
    "weds": 2,
    "wednesday": 2,
    "thu": 3,
    "thur": 3,
    "thurs": 3,
    "thursday": 3,
    "fri": 4,
    "friday": 4,
    "sat": 5,
    "saturday": 5,
    "sun": 6,
    "sunday": 6,
}
_MONTHS: dict[str, int] = {
    "jan": 1,
    "january": 1,
    "feb": 2,
    "february": 2,
    "mar": 3,
    "march": 3,
    "apr": 4,
    "april": 4,
    "may": 5,
    "jun": 6,
    "june": 6,
    "jul": 7,
    "july": 7,
    "aug": 8,
    "august": 8,
    "sep": 9,
    "sept": 9,
    "september": 9,
    "oct": 10,
    "october": 10,
    "nov": 11,
    "november": 11,
    "dec": 12,
    "december": 12,
}
_WD_ABBR = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MON_ABBR = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_WD_ALT = "|".join(sorted(_WEEKDAYS, key=len, reverse=True))
_MON_ALT = "|".join(sorted(_MONTHS, key=len, reverse=True))
_NUM = r"(?P<n>[0-9]{1,4}|an?|one)"
_ORD = r"(?:st|nd|rd|th)?"

_CLOCK_RE = re.compile(
    r"(?P<h>[0-9]{1,2})"
    r"(?:(?P<sep>[:.])(?P<m>[0-9]{2})(?::(?P<s>[0-9]{2}))?|(?P<hsep>h)(?P<hm>[0-9]{2})?)?"
    r"(?:\s*(?P<ap>[ap])\.?\s?m\.?)?",
    re.ASCII | re.IGNORECASE,
)
_NAMED_TIMES: dict[str, time] = {
    "noon": time(12),
    "midday": time(12),
    "12 noon": time(12),
    "12noon": time(12),
    "midnight": time(0),
    "12 midnight": time(0),
    "12midnight": time(0),
}
_TZ_ALLOWED = frozenset(string.ascii_letters + string.digits + " _/+-.'")
_WHEN_FILLERS = frozenset({"at", "on", "@"})

_RE_ISO_T = re.compile(r"([0-9]{4}-[0-9]{1,2}-[0-9]{1,2})t(?=[0-9])", re.ASCII)
_RE_IN_SPAN = re.compile(
    _NUM + r" (?P<u>hours?|hrs?|h|minutes?|mins?|m)"
    r"(?: (?:and )?(?P<n2>[0-9]{1,4}) (?P<u2>minutes?|mins?|m))?",
    re.ASCII,
)
_RE_IN_DAYS = re.compile(_NUM + r" (?P<u>days?|weeks?)", re.ASCII)
_RE_WEEKDAY = re.compile(rf"(?:(?P<q>this|next) )?(?P<wd>{_WD_ALT})", re.ASCII)
_RE_DAY_MONTH = re.compile(
    rf"(?:(?P<wd>{_WD_ALT}) )?(?P<d>[0-9]{{1,2}}){_ORD} (?:of )?(?P<mon>{_MON_ALT})"
    r"(?: (?P<y>[0-9]{4}))?",
    re.ASCII,
)
_RE_MONTH_DAY = re.compile(
    rf"(?:(?P<wd>{_WD_ALT}) )?(?P<mon>{_MON_ALT}) (?P<d>[0-9]{{1,2}}){_ORD}"
    r"(?: (?P<y>[0-9]{4}))?",
    re.ASCII,
)
_RE_ISO_DATE = re.compile(r"(?P<y>[0-9]{4})-(?P<m>[0-9]{1,2})-(?P<d>[0-9]{1,2})", re.ASCII)


# --------------------------------------------------------------------------- zones


@functools.lru_cache(maxsize=1)
def _available() -> frozenset[str]:
    """The IANA zone names zoneinfo can load here, plus "UTC" (always accepted)."""
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


@functools.lru_cache(maxsize=1)
def _by_lower() -> dict[str, str]:
    """Map lower-cased IANA name -> IANA name (names are unique ignoring case)."""
    return {z.lower(): z for z in _available()}


def _city_key(text: str) -> str:
    """Lower-case *text* and drop everything but ASCII letters and digits."""
    return "".join(c for c in text.lower() if c.isascii() and c.isalnum())


@functools.lru_cache(maxsize=1)
def _by_city() -> dict[str, str]:
    """Map _city_key(last component) -> zone for zones under _CITY_REGIONS.

    Where two zones share a last component (e.g. America/Buenos_Aires and
    America/Argentina/Buenos_Aires) the deeper path wins, then the alphabetically first;
    _ALIASES overrides the remaining real ambiguities (Istanbul, Nicosia).
    """
    out: dict[str, str] = {}
    for zone in sorted(_available(), key=lambda z: (-z.count("/"), z)):
        if zone.split("/", 1)[0] in _CITY_REGIONS and "/" in zone:
            out.setdefault(_city_key(zone.rsplit("/", 1)[-1]), zone)
    return out


@functools.lru_cache(maxsize=1)
def _aliases() -> dict[str, str]:
    """_ALIASES keyed by _city_key, keeping only targets that exist on this machine."""
    avail = _available()
    return {_city_key(k): v for k, v in _ALIASES.items() if v in avail}


@functools.lru_cache(maxsize=64)
def _zone(tz: str) -> tzinfo | None:
    """The tzinfo for an exact IANA name in _available(), else None; "UTC" never fails."""
    if tz not in _available():
        return None
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return UTC if tz == "UTC" else None


def _tz_or_none(tz: object) -> tzinfo | None:
    """_zone(tz) for a str, None for anything else."""
    return _zone(tz) if isinstance(tz, str) else None


def _strip_edges(text: str) -> str:
    """Remove whitespace and punctuation (ASCII or Unicode category P*) at both ends."""

    def edge(c: str) -> bool:
        return c.isspace() or c in string.punctuation or unicodedata.category(c).startswith("P")

    start, end = 0, len(text)
    while start < end and edge(text[start]):
        start += 1
    while end > start and edge(text[end - 1]):
        end -= 1
    return text[start:end]


def resolve_timezone(text: str, *, country: str | None = None) -> str | None:
    """The one IANA zone what a user typed names, or None (unknown, or ambiguous: see :func:`timezone_choices`)."""
    choices = timezone_choices(text, country=country)
    return choices[0].zone if len(choices) == 1 else None


def timezone_choices(text: str, *, country: str | None = None) -> tuple[ZoneChoice, ...]:
    """What a user typed as IANA zones: none (unknown), one, or several to ask about (likeliest first).

    Tried in order, after stripping surrounding whitespace/punctuation and accents:
    1. an abbreviation or region name ("EST", "Pacific", "CET", "BST"): the
       region's real zone with its daylight-saving rules, never IANA's fixed
       "EST"; "GMT" and "IST" mean several places and ask;
    2. an exact IANA name, case-insensitively ("europe/london" -> "Europe/London";
       spaces may stand for underscores: "america/new york");
    3. the alias table (cities and countries that are not zone components, e.g.
       "San Francisco" -> "America/Los_Angeles", "Belfast" -> "Europe/London",
       "utc"/"z" -> "UTC");
    4. the last component of a zone under a continental/ocean region, ignoring case,
       spaces, underscores, hyphens and apostrophes ("new york", "Sao Paulo",
       "São Paulo", "st john's");
    5. a town of 15,000+ people from GeoNames (dialogs.places), optionally as
       "town, region" ("Nottingham", "München", "Portland, Maine"); a name
       several sizeable towns in different zones share ("Portland") gives
       them all. ``country`` (ISO code, e.g. the therapist's) settles a
       choice when exactly one reading lies in it.
    Only zones present on this machine (or "UTC") are returned. Non-str input,
    over-long text, emoji, control characters and other non-Latin symbols give
    nothing. Never raises.
    """
    if not isinstance(text, str) or len(text) > _MAX_TZ_LEN:
        return ()
    decomposed = unicodedata.normalize("NFKD", _strip_edges(text))
    cleaned = "".join(c for c in decomposed if not unicodedata.combining(c))
    cleaned = cleaned.replace("\u2019", "'")
    town, _, region = cleaned.partition(",")
    town, region = town.strip(), _strip_edges(region)
    if not town or not set(town) <= _TZ_ALLOWED or not set(region) <= _TZ_ALLOWED:
        return ()
    available = _available()
    key = _city_key(town)
    if not region:
        abbreviation = [z for z in _ABBREVIATIONS.get(key, ()) if z in available]
        if abbreviation:
            return tuple(ZoneChoice(z, _zone_label(z)) for z in abbreviation)
        words = town.split()
        full = "_".join(words).replace("_/", "/").replace("/_", "/").lower()
        hit = _by_lower().get(full)
        if hit is not None:
            return (ZoneChoice(hit, hit),)
        if "/" in full:
            return ()
        if not key:
            return ()
        known = _aliases().get(key) or _by_city().get(key)
        if known is not None:
            return (ZoneChoice(known, known),)
    if not key or "/" in town:
        return ()
    return tuple(c for c in zones_for(town, region or None, country=country) if c.zone in available)


def _zone_label(zone: str) -> str:
    """A zone named for asking: "Europe/Dublin (Ireland)"."""
    from dialogs.places import country_name

    name = country_name(zone_country(zone))
    return f"{zone} ({name})" if name else zone


# --------------------------------------------------------------------------- clock


def parse_clock_time(text: str) -> time | None:
    """Parse a wall-clock time, or return None.

    Accepted (case-insensitive, surrounding spaces and trailing ".,;!?" ignored):
    24-hour "18:00", "06:30", "19.15", "18h", "18h30", optionally with seconds
    "18:00:05"; 12-hour "6pm", "6 pm", "6.30pm", "6:30 p.m.", "12am" (= 00:00),
    "12pm" (= 12:00); "noon"/"midday"/"12 noon" (12:00) and "midnight" (00:00).
    Rejected: hours > 23 or minutes/seconds > 59, 12-hour hours outside 1..12
    ("13pm", "0am"), "24:00", single-digit minutes ("6:5"), and a bare number
    ("6", "18") because it does not say whether it is a time or which half of the day.
    The result is naive (no tzinfo). Never raises.
    """
    if not isinstance(text, str) or len(text) > _MAX_CLOCK_LEN:
        return None
    s = " ".join(text.split()).lower().rstrip(",;!?").strip()
    if s.endswith(".") and not s.endswith("m."):
        s = s[:-1]
    named = _NAMED_TIMES.get(s)
    if named is not None:
        return named
    m = _CLOCK_RE.fullmatch(s)
    if m is None:
        return None
    hour = int(m["h"])
    minute = int(m["m"] or m["hm"] or 0)
    second = int(m["s"] or 0)
    ap = m["ap"]
    if ap is None:
        if m["sep"] is None and m["hsep"] is None:
            return None
        if hour > 23:
            return None
    else:
        if m["hsep"] is not None or not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ap == "p" else 0)
    if minute > 59 or second > 59:
        return None
    return time(hour, minute, second)


# --------------------------------------------------------------------------- zones <-> UTC


def local_to_utc(day: date, at: time, tz: str) -> datetime | None:
    """Convert the wall-clock *day* + *at* in IANA zone *tz* to an aware UTC datetime.

    Built with fold=0 then round-tripped through UTC, so: a time that does not exist
    (spring-forward gap) moves forward by the gap (01:30 on the London spring-forward
    day -> 02:30 BST = 01:30 UTC); an ambiguous time (fall-back) takes its first
    occurrence, the pre-transition offset (01:30 on the London fall-back day -> 01:30
    BST = 00:30 UTC). Any tzinfo or fold on *at* is ignored. Returns None (never
    raises) for an unknown *tz*, non-date/time arguments, or a result out of range.
    """
    zone = _tz_or_none(tz)
    if zone is None or not isinstance(day, date) or not isinstance(at, time):
        return None
    if isinstance(day, datetime):
        day = day.date()
    try:
        local = datetime.combine(day, at.replace(tzinfo=None, fold=0)).replace(tzinfo=zone)
        return local.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def utc_to_local(dt: datetime, tz: str) -> datetime | None:
    """Convert an aware datetime (any offset, normally UTC) to an aware datetime in *tz*.

    The result carries the zone's tzinfo and the correct fold for repeated wall times.
    Returns None (never raises) for a naive *dt*, an unknown *tz*, or overflow.
    """
    zone = _tz_or_none(tz)
    if zone is None or not _is_aware(dt):
        return None
    try:
        return dt.astimezone(zone)
    except (OverflowError, ValueError):
        return None


def format_local(dt_utc: datetime, tz: str) -> str | None:
    """Render an aware datetime in *tz* as e.g. "Tue 1 Dec 10:00 (Europe/London)".

    English names regardless of locale, 24-hour clock, no year (the output can be fed
    back to parse_when, which picks the next such date). Returns None (never raises)
    for a naive datetime or an unknown *tz*.
    """
    local = utc_to_local(dt_utc, tz)
    if local is None:
        return None
    return (
        f"{_WD_ABBR[local.weekday()]} {local.day} {_MON_ABBR[local.month - 1]} "
        f"{local.hour:02d}:{local.minute:02d} ({tz})"
    )


def _is_aware(dt: object) -> bool:
    """True for a datetime whose tzinfo yields a UTC offset."""
    if not isinstance(dt, datetime) or dt.tzinfo is None:
        return False
    try:
        return dt.utcoffset() is not None
    except (ValueError, OverflowError):
        return False


# --------------------------------------------------------------------------- appointments


def _count(word: str) -> int:
    """ "a"/"an"/"one" -> 1, digits -> int."""
    return 1 if word in ("a", "an", "one") else int(word)


def _next_yearly(month: int, day: int, today: date) -> list[date]:
    """Candidate dates for day/month with no year: this year's and the following ones.

    Covers 8 years so that 29 Feb always has a leap year among the candidates.
    """
    out: list[date] = []
    for year in range(today.year, today.year + 9):
        try:
            out.append(date(year, month, day))
        except ValueError:
            continue
    return out


def _date_candidates(tokens: list[str], today: date) -> tuple[list[date], int | None]:
    """Interpret the date words of an appointment relative to the local date *today*.

    Returns (candidate local dates in order of preference, weekday the chosen date must
    fall on or None); the caller takes the first candidate that is in the future. A
    specific day (today, tomorrow, a date with a year, "in N days", "next tue") gives a
    single candidate; an empty list means the words are not understood.
    """
    s = " ".join(tokens)
    if s == "":
        return [today, today + timedelta(days=1)], None
    if s in ("today", "tonight"):
        return [today], None
    if s in ("tomorrow", "tmrw"):
        return [today + timedelta(days=1)], None
    if s.startswith("in "):
        m = _RE_IN_DAYS.fullmatch(s[3:])
        if m is None:
            return [], None
        n = _count(m["n"]) * (7 if m["u"].startswith("week") else 1)
        return [today + timedelta(days=n)], None
    m = _RE_WEEKDAY.fullmatch(s)
    if m is not None:
        delta = (_WEEKDAYS[m["wd"]] - today.weekday()) % 7
        if m["q"] == "next":
            return [today + timedelta(days=delta or 7)], None
        first = today + timedelta(days=delta)
        return [first, first + timedelta(days=7)], None
    m = _RE_DAY_MONTH.fullmatch(s) or _RE_MONTH_DAY.fullmatch(s)
    if m is not None:
        month, day = _MONTHS[m["mon"]], int(m["d"])
        check = _WEEKDAYS[m["wd"]] if m["wd"] else None
        if m["y"] is not None:
            try:
                return [date(int(m["y"]), month, day)], check
            except ValueError:
                return [], None
        return _next_yearly(month, day, today), check
    m = _RE_ISO_DATE.fullmatch(s)
    if m is not None:
        try:
            return [date(int(m["y"]), int(m["m"]), int(m["d"]))], None
        except ValueError:
            return [], None
    return [], None


def _normalise_when(text: str) -> list[str] | None:
    """Lower-case, split, drop fillers ("at", "on", "@", commas); None if not ASCII."""
    s = " ".join(text.split()).lower()
    if not s.isascii():
        return None
    s = _RE_ISO_T.sub(r"\1 ", s.replace(",", " ").replace("@", " @ "))
    s = s.rstrip("!?;").strip()
    tokens = []
    for tok in s.split():
        if tok in _WHEN_FILLERS:
            continue
        if tok.endswith(".") and tok[:-1].isalpha():  # "dec." / "tue." (not "a.m.")
            tok = tok[:-1]
        tokens.append(tok)
    return tokens


def _split_time(tokens: list[str]) -> list[tuple[time, list[str]]]:
    """All ways to read 1 or 2 tokens at the end (preferred) or start as a clock time."""
    out: list[tuple[time, list[str]]] = []
    for k in (1, 2):
        if len(tokens) >= k:
            t = parse_clock_time(" ".join(tokens[-k:]))
            if t is not None:
                out.append((t, tokens[:-k]))
    for k in (1, 2):
        if len(tokens) > k:
            t = parse_clock_time(" ".join(tokens[:k]))
            if t is not None:
                out.append((t, tokens[k:]))
    return out


def parse_when(text: str, *, now: datetime, tz: str) -> datetime | None:
    """Parse a future appointment time typed in zone *tz*; return an aware UTC datetime.

    *now* is the injected clock (aware; converted to UTC), *tz* an exact IANA name
    (use resolve_timezone first). Case-insensitive, extra spaces, commas and the
    fillers "at"/"on"/"@" are ignored; the time may come before or after the day.
    Grammar (DATE then TIME, TIME as in parse_clock_time):
      * "2026-12-01 10:00", "2026-12-01T10:00"             - ISO date (year first only);
      * "1 dec 10am", "1st of December 10am", "dec 1 10:30", "1 december 2026 14:00",
        optionally led by a weekday that must match ("Tue 1 Dec 10:00", the
        format_local output); without a year, the next such date that is still ahead;
      * "tue 10am", "this tue 10am" - the next occurrence in the future: today if today
        is Tuesday and 10:00 is still ahead, else the coming Tuesday (up to +7 days);
      * "next tue 10am" - the first Tuesday after today (same as "tue" unless today is
        Tuesday, then +7 days, even if 10:00 today is still ahead);
      * "today 3pm"/"tonight 9pm", "tomorrow 9:30", "tomorrow at 9:30",
        "in 3 days 10am", "in 2 weeks 10am" - local calendar days, then the time;
      * "in 2 hours", "in 90 minutes", "in 1 hour 30 minutes" - elapsed time from *now*
        (no clock time allowed), truncated to the minute;
      * "10am" alone - the next occurrence of 10:00 (today if still ahead, else
        tomorrow). "midnight" is 00:00 at the start of the named day.
    Local wall times go through local_to_utc: a time in a spring-forward gap moves
    forward by the gap, an ambiguous fall-back time takes its first occurrence.
    Returns None, never raising, for: anything not in the grammar; a date with no time
    (a session needs a time); numeric day/month forms such as "1/12" or "01-12"
    (d/m vs m/d is ambiguous, so they are rejected rather than guessed); two-digit
    years; explicit time-zone suffixes; impossible dates ("32 dec", "31 feb");
    results not strictly after *now*; a naive *now*; an unknown *tz*; non-str
    or over-long text.
    """
    if not isinstance(text, str) or len(text) > _MAX_WHEN_LEN:
        return None
    if _tz_or_none(tz) is None or not _is_aware(now):
        return None
    try:
        return _parse_when(text, now.astimezone(UTC), tz)
    except (OverflowError, ValueError):
        return None


def _parse_when(text: str, now: datetime, tz: str) -> datetime | None:
    """parse_when after argument validation; may raise OverflowError/ValueError."""
    tokens = _normalise_when(text)
    if not tokens:
        return None
    if tokens[0] == "in":
        m = _RE_IN_SPAN.fullmatch(" ".join(tokens[1:]))
        if m is not None:
            hours = m["u"].startswith("h")
            delta = timedelta(hours=_count(m["n"])) if hours else timedelta(minutes=_count(m["n"]))
            if m["n2"] is not None:
                if not hours:
                    return None
                delta += timedelta(minutes=int(m["n2"]))
            result = (now + delta).replace(second=0, microsecond=0)
            return result if result > now else None
    local_now = utc_to_local(now, tz)
    if local_now is None:
        return None
    today = local_now.date()
    for at, date_tokens in _split_time(tokens):
        candidates, weekday = _date_candidates(date_tokens, today)
        if not candidates:
            continue
        for day in candidates:
            found = local_to_utc(day, at, tz)
            if found is not None and found > now:
                if weekday is not None and day.weekday() != weekday:
                    return None
                return found
        return None
    return None


@functools.cache
def _zone_countries() -> dict[str, str]:
    """IANA zone → ISO 3166 country code, from zone.tab (tzdata package first, then the system)."""
    text = None
    try:
        from importlib.resources import files

        text = (files("tzdata") / "zoneinfo" / "zone.tab").read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError, OSError):
        for path in ("/usr/share/zoneinfo/zone.tab", "/usr/lib/zoneinfo/zone.tab"):
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
                break
            except OSError:
                continue
    countries: dict[str, str] = {}
    for line in (text or "").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) >= 3:
            countries[parts[2]] = parts[0]
    return countries


def zone_country(zone: str | None) -> str | None:
    """The ISO 3166 country code of an IANA zone ("Europe/London" → "GB"), or None.

    Used to pick the crisis resources that apply where a client lives; zones
    shared by several countries map to the one zone.tab names.
    """
    if not zone:
        return None
    return _zone_countries().get(zone)
