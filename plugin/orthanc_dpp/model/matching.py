"""Matching of C-FIND keys against records: the matching types of PS3.4 C.2.2.2.

One matcher per key, compiled by ``query.compile_query``: :class:`Leaf`
(single value, UID list, wild card and range matching), :class:`SequenceKey`
(sequence matching) and :class:`CombinedDateTime` (Instance Creation Date and
Time as one range). Key values and stored values go through the same
normalizer of their VR (:func:`normalizer`, also used by the index's value
indexes); DA, TM and DT are compared by the instants they denote
(:func:`date_bounds`, :func:`time_bounds`, :func:`datetime_bounds`). The
choices where PS3.4 leaves room are listed in ``query``'s docstring.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from orthanc_dpp.model.record import Record

# -- normalization: the same on key values and stored values ---------------------


def _strip(value: Any) -> str:
    return str(value).strip(" ")


def _rstrip(value: Any) -> str:
    return str(value).rstrip(" ")


def _uid(value: Any) -> str:
    return str(value).strip(" \x00")


def _person_name(value: Any) -> str:
    """PN compared ignoring case, Unicode form and insignificant delimiters."""
    text = unicodedata.normalize("NFC", str(value)).casefold().rstrip(" ")
    groups = ["^".join(c.strip(" ") for c in g.split("^")).rstrip("^") for g in text.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _number(value: Any) -> float | None:
    try:
        return float(str(value).strip(" "))
    except ValueError:
        return None


def _identity(value: Any) -> Any:
    return value


_DA_RE: Final = re.compile(r"(\d{4})(\d{2})(\d{2})")
_TM_RE: Final = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?")
_DT_RE: Final = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
    r"([+-]\d{4})?"
)


def date_bounds(text: str) -> tuple[str, str] | None:
    """DA as ('YYYYMMDD', 'YYYYMMDD'), or None if not a valid date."""
    m = _DA_RE.fullmatch(text.strip(" ").replace(".", "") if "." in text else text.strip(" "))
    if not m:
        return None
    year, month, day = (int(g) for g in m.groups())
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(max(year, 1), month)[1]):
        return None
    return m.group(0), m.group(0)


def time_bounds(text: str) -> tuple[str, str] | None:
    """TM as the first and last instant it denotes, 'HHMMSSffffff' each."""
    m = _TM_RE.fullmatch(text.strip(" ").replace(":", ""))
    if not m:
        return None
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        return None
    lo = hh + (mm or "00") + (ss or "00") + (frac or "").ljust(6, "0")
    hi = hh + (mm or "59") + (ss or "59") + (frac.ljust(6, "9") if frac else "999999")
    return lo, hi


def datetime_bounds(text: str) -> tuple[datetime, datetime] | None:
    """DT as the first and last instant it denotes, in UTC when an offset is given."""
    m = _DT_RE.fullmatch(text.strip(" "))
    if not m:
        return None
    year, month, day, hh, mm, ss, frac, offset = m.groups()
    try:
        y = int(year)
        lo_month, hi_month = (int(month), int(month)) if month else (1, 12)
        hi_day_max = calendar.monthrange(max(y, 1), hi_month)[1]
        lo_day, hi_day = (int(day), int(day)) if day else (1, hi_day_max)
        lo = datetime(
            y,
            lo_month,
            lo_day,
            int(hh or 0),
            int(mm or 0),
            min(int(ss or 0), 59),
            int((frac or "").ljust(6, "0")),
        )
        hi = datetime(
            y,
            hi_month,
            hi_day,
            int(hh) if hh else 23,
            int(mm) if mm else 59,
            min(int(ss), 59) if ss else 59,
            int(frac.ljust(6, "9")) if frac else 999999,
        )
        if offset:
            sign = -1 if offset[0] == "-" else 1
            hours, minutes = int(offset[1:3]), int(offset[3:5])
            if hours > 14 or minutes > 59:
                return None
            shift = sign * timedelta(hours=hours, minutes=minutes)
            lo, hi = lo - shift, hi - shift
    except (ValueError, OverflowError):
        return None
    return lo, hi


def _stored_date(value: Any) -> str | None:
    bounds = date_bounds(str(value))
    return bounds[0] if bounds else None


def _stored_time(value: Any) -> str | None:
    bounds = time_bounds(str(value))
    return bounds[0] if bounds else None


def _stored_datetime(value: Any) -> datetime | None:
    bounds = datetime_bounds(str(value))
    return bounds[0] if bounds else None


_NORMALIZERS: Final[dict[str, Callable[[Any], Any]]] = {
    **dict.fromkeys(("AE", "AS", "CS", "LO", "SH", "UR"), _strip),
    **dict.fromkeys(("LT", "ST", "UT", "UC"), _rstrip),
    "UI": _uid,
    "PN": _person_name,
    "DA": _stored_date,
    "TM": _stored_time,
    "DT": _stored_datetime,
    "DS": _number,
    "IS": _number,
}


def normalizer(vr: str) -> Callable[[Any], Any]:
    """How a stored value of this VR is put in comparable form (None: unusable)."""
    return _NORMALIZERS.get(vr, _identity)


# -- matchers: one small function per matching type (PS3.4 C.2.2.2) --------------


@dataclass(frozen=True, slots=True, eq=False)
class Leaf:
    """A matching key on a non-sequence attribute.

    ``test`` takes one normalized stored value; ``exact`` lists normalized
    values that match, when matching is plain equality (the index looks
    them up instead of scanning).
    """

    tag: int
    vr: str
    kind: str
    test: Callable[[Any], bool]
    exact: frozenset[Any] | None = None
    norm: Callable[[Any], Any] = _identity
    spans: tuple[tuple[Any, Any], ...] = ()  # range matching: (low, high) bounds

    def matches(self, record: Record) -> bool:
        values = record.values(self.tag)
        if not values:
            return False  # absent, empty or not kept: fails any matching key (K.2.2)
        norm, test = self.norm, self.test
        for value in values:
            if isinstance(value, Record):
                return False  # stored as a sequence: a value key cannot match it
            value = norm(value)
            if value is not None and test(value):
                return True
        return False


@dataclass(frozen=True, slots=True, eq=False)
class SequenceKey:
    """Sequence matching: all item keys must match one stored item (C.2.2.2.6)."""

    tag: int
    items: tuple[Matcher, ...]
    kind: str = "sequence"

    def matches(self, record: Record) -> bool:
        stored = record.values(self.tag)
        if not stored:
            return False
        return any(self.item_matches(item) for item in stored if isinstance(item, Record))

    def item_matches(self, item: Record) -> bool:
        return all(m.matches(item) for m in self.items)


@dataclass(frozen=True, slots=True, eq=False)
class CombinedDateTime:
    """A DA range and a TM range matched as one DateTime (Table HH.6-1 remark)."""

    date_tag: int
    time_tag: int
    lo: datetime | None
    hi: datetime | None
    kind: str = "combined range"

    @property
    def tag(self) -> int:
        return self.date_tag

    def matches(self, record: Record) -> bool:
        date = _stored_date(record.first(self.date_tag) or "")
        time = _stored_time(record.first(self.time_tag) or "")
        if date is None or time is None:
            return False
        moment = datetime.strptime(date + time, "%Y%m%d%H%M%S%f")
        return (self.lo is None or self.lo <= moment) and (self.hi is None or moment <= self.hi)


Matcher = Leaf | SequenceKey | CombinedDateTime


def single_value(tag: int, vr: str, values: Iterable[Any]) -> Leaf:
    """Single Value Matching (C.2.2.2.1); several values: any of them."""
    norm = normalizer(vr)
    wanted = frozenset(norm(v) for v in values)
    if vr == "PN":
        return Leaf(tag, vr, "single value", _person_name_test(wanted), None, norm)
    return Leaf(tag, vr, "single value", wanted.__contains__, wanted, norm)


def _person_name_test(wanted: frozenset[str]) -> Callable[[str], bool]:
    whole_only = {w for w in wanted if "=" in w}
    any_group = wanted - whole_only

    def test(value: str) -> bool:
        if value in wanted:
            return True
        return "=" in value and any(g in any_group for g in value.split("="))

    return test


def uid_list(tag: int, values: Iterable[str]) -> Leaf:
    """List of UID Matching (C.2.2.2.2)."""
    wanted = frozenset(_uid(v) for v in values)
    return Leaf(tag, "UI", "list of UID", wanted.__contains__, wanted, _uid)


def wild_card(tag: int, vr: str, patterns: Iterable[str]) -> Leaf:
    """Wild Card Matching (C.2.2.2.4): '*' any run, '?' any one character."""
    norm = normalizer(vr)
    globs = [_Glob(norm(p)) for p in patterns]
    if vr == "PN":

        def test(value: str) -> bool:
            groups = value.split("=") if "=" in value else ()
            return any(
                g(value) or (not g.has_group_delimiter and any(map(g, groups))) for g in globs
            )

    else:

        def test(value: str) -> bool:
            return any(g(value) for g in globs)

    return Leaf(tag, vr, "wild card", test, None, norm)


def range_match(tag: int, vr: str, intervals: Iterable[tuple[Any, Any]]) -> Leaf:
    """Range Matching (C.2.2.2.5) for DA, TM and DT; bounds may be None (open)."""
    spans = tuple(intervals)

    def test(value: Any) -> bool:
        return any((lo is None or lo <= value) and (hi is None or value <= hi) for lo, hi in spans)

    exact = None
    if vr == "DA" and all(lo == hi and lo is not None for lo, hi in spans):
        exact = frozenset(lo for lo, _ in spans)
    return Leaf(tag, vr, "range", test, exact, normalizer(vr), spans)


def sequence(tag: int, items: tuple[Matcher, ...]) -> SequenceKey:
    """Sequence Matching (C.2.2.2.6)."""
    return SequenceKey(tag, items)


class _Glob:
    """Wild card pattern matched without backtracking regexes (no ReDoS)."""

    __slots__ = ("has_group_delimiter", "parts")

    def __init__(self, pattern: str) -> None:
        self.has_group_delimiter = "=" in pattern
        self.parts = [_Segment(p) for p in re.sub(r"\*+", "*", pattern).split("*")]

    def __call__(self, text: str) -> bool:
        parts = self.parts
        if len(parts) == 1:
            return len(text) == len(parts[0]) and parts[0].at(text, 0)
        first, last = parts[0], parts[-1]
        end = len(text) - len(last)
        if end < len(first) or not first.at(text, 0) or not last.at(text, end):
            return False
        pos = len(first)
        for part in parts[1:-1]:  # leftmost placement of each middle part is optimal
            found = part.find(text, pos, end)
            if found < 0:
                return False
            pos = found + len(part)
        return True


class _Segment:
    """A run of pattern characters between '*'s; '?' matches any one character."""

    __slots__ = ("regex", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.regex = (
            re.compile("".join("." if c == "?" else re.escape(c) for c in text), re.DOTALL)
            if "?" in text
            else None
        )

    def __len__(self) -> int:
        return len(self.text)

    def at(self, text: str, pos: int) -> bool:
        if self.regex is None:
            return text.startswith(self.text, pos)
        return self.regex.match(text, pos, pos + len(self.text)) is not None

    def find(self, text: str, start: int, end: int) -> int:
        if self.regex is None:
            return text.find(self.text, start, end)
        m = self.regex.search(text, start, end)
        return -1 if m is None else m.start()
