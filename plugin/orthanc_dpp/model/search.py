"""Searching the protocol index for people: the ``GET /dpp/protocols`` parameters.

C-FIND follows DICOM's matching rules (exact values, ``*`` and ``?`` wild
cards, case-sensitive). Someone typing into the protocol library page's
search box expects something else: part of a name, in any case. So these
criteria match a case-insensitive part of a value, except the modality
(a code: equal, in any case) and the date (a range). They are answered from
the in-memory index, never by asking Orthanc.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from orthanc_dpp.model.index import CODE_SEQUENCES, Entry, ProtocolIndex
from orthanc_dpp.model.key_table import tag
from orthanc_dpp.model.record import Record

#: The text criteria, by query parameter.
TEXT_PARAMETERS: Final = ("name", "modality", "manufacturer", "model", "code")
PARAMETERS: Final = (*TEXT_PARAMETERS, "date")
#: Longer search texts are refused: nothing indexed is that long.
MAXIMUM_LENGTH: Final = 256

_NAME: Final = tag("ProtocolName")
_MODALITY: Final = tag("EquipmentModality")
_MANUFACTURER: Final = tag("Manufacturer")
_MODEL: Final = tag("ManufacturerModelName")
_MODELS: Final = tag("ModelSpecificationSequence")
_DATE: Final = tag("InstanceCreationDate")
_CODE_FIELDS: Final = (tag("CodeValue"), tag("LongCodeValue"), tag("CodeMeaning"))


class SearchError(ValueError):
    """A search parameter cannot be understood; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"query parameter '{parameter}' {message}")
        self.parameter = parameter


def _texts(record: Record, attribute: int) -> list[str]:
    return [str(v) for v in record.values(attribute) or () if v is not None]


def _items(record: Record, sequence: int) -> list[Record]:
    return [item for item in record.values(sequence) or () if isinstance(item, Record)]


def _parse_date(parameter: str, text: str) -> str:
    try:
        datetime.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise SearchError(
            parameter,
            "must be a date YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be left "
            f"out), got {text!r}",
        ) from None
    return text


@dataclass(frozen=True)
class ProtocolSearch:
    """What to look for; a field left None matches everything."""

    name: str | None = None
    modality: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    code: str | None = None
    date_from: str | None = None  # YYYYMMDD, inclusive
    date_to: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> ProtocolSearch:
        """The criteria of a request's query parameters (others are the caller's to check)."""
        values: dict[str, Any] = {}
        for parameter in TEXT_PARAMETERS:
            text = query.get(parameter, "").strip()
            if len(text) > MAXIMUM_LENGTH:
                raise SearchError(parameter, f"is longer than {MAXIMUM_LENGTH} characters")
            if text:
                values[parameter] = text.casefold()
        date = query.get("date", "").strip()
        if date:
            low, dash, high = date.partition("-")
            if dash and not (low or high):
                raise SearchError("date", "must name at least one end of the range, got '-'")
            values["date_from"] = _parse_date("date", low) if low else None
            if dash:
                values["date_to"] = _parse_date("date", high) if high else None
            else:
                values["date_to"] = values["date_from"]
            if (
                values["date_from"]
                and values["date_to"]
                and values["date_from"] > values["date_to"]
            ):
                raise SearchError("date", f"is a range that ends before it starts: {date!r}")
        return cls(**values)

    @property
    def is_empty(self) -> bool:
        return self == ProtocolSearch()

    def matches(self, entry: Entry) -> bool:
        keys: _Keys = entry.search_keys or _keys_of(entry)
        if self.name is not None and not _within(self.name, keys.names):
            return False
        if self.modality is not None and self.modality not in keys.modalities:
            return False
        if self.manufacturer is not None and not _within(self.manufacturer, keys.manufacturers):
            return False
        if self.model is not None and not _within(self.model, keys.models):
            return False
        if self.code is not None and not _within(self.code, keys.codes):
            return False
        if self.date_from is not None or self.date_to is not None:
            date = keys.date
            if not date:
                return False
            if self.date_from is not None and date < self.date_from:
                return False
            if self.date_to is not None and date > self.date_to:
                return False
        return True


def _within(needle: str, values: tuple[str, ...]) -> bool:
    # A plain loop: any() over a generator costs a frame per entry of the library.
    for value in values:  # noqa: SIM110
        if needle in value:
            return True
    return False


class _Keys:
    """What :meth:`ProtocolSearch.matches` compares of one entry, worked out once.

    Text is case-folded already and repeated values are kept once (a search
    asks whether any value holds the text, so neither changes an answer);
    strings are interned, as the same codes and names recur across a library.
    Kept on the entry (``Entry.search_keys``): a search then reads a few
    tuples instead of walking the record, its models and six code sequences.
    """

    __slots__ = ("codes", "date", "manufacturers", "modalities", "models", "names")

    def __init__(self, record: Record) -> None:
        models = _items(record, _MODELS)
        self.names = _folded(_texts(record, _NAME))
        self.modalities = _folded(value.strip() for value in _texts(record, _MODALITY))
        self.manufacturers = _folded(
            [*_texts(record, _MANUFACTURER), *(v for m in models for v in _texts(m, _MANUFACTURER))]
        )
        self.models = _folded(
            [*_texts(record, _MODEL), *(v for m in models for v in _texts(m, _MODEL))]
        )
        self.codes = _folded(
            value
            for sequence in CODE_SEQUENCES
            for item in _items(record, sequence)
            for field in _CODE_FIELDS
            for value in _texts(item, field)
        )
        self.date = sys.intern((_texts(record, _DATE) or [""])[0].strip())


def _folded(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(sys.intern(value.casefold()) for value in values))


def _keys_of(entry: Entry) -> _Keys:
    keys = _Keys(entry.record)
    entry.search_keys = keys
    return keys


def prepare(index: ProtocolIndex, stopping: Callable[[], bool] = lambda: False) -> int:
    """Work out the search keys of every entry not searched yet; how many were new.

    The first search after a start would otherwise pay for the whole library
    at once (about 2 s at 100,000 protocols); the index feed calls this once
    the index has loaded, before anyone is likely to search. Checks
    ``stopping`` every thousand entries, so a shutdown does not wait for it.
    """
    made = 0
    for count, entry in enumerate(index.snapshot()):
        if count % 1000 == 0 and stopping():
            break
        if entry.search_keys is None:
            _keys_of(entry)
            made += 1
    return made


def search(
    index: ProtocolIndex, criteria: ProtocolSearch, offset: int, limit: int
) -> tuple[int, list[Entry]]:
    """(how many entries match, the page of them from ``offset``), in the index's order."""
    if criteria.is_empty:
        return len(index), index.page(offset, limit)
    total = 0
    page: list[Entry] = []
    for entry in index.snapshot():
        if criteria.matches(entry):
            if offset <= total < offset + limit:
                page.append(entry)
            total += 1
    return total, page
