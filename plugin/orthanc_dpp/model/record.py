"""Compact, immutable copies of a stored protocol's attributes.

The index holds one :class:`Record` per stored DPP instance, up to 100,000 or
more, so a record keeps decoded values, not pydicom objects:

- every public, non-bulk attribute at every nesting level is kept (any of
  them may be a matching key, docs/design.md, "The DPP model");
- a record's tags and VRs live in a shared :class:`Layout` (protocols and
  their sequence items repeat the same shapes), so a record itself is a
  tuple of values;
- a value is stored bare when there is one, as a tuple when there are
  several or none, as a tuple of records for a sequence, and as
  :data:`BULK` when it was too large to keep;
- identical sequence items (the same code, the same constraint) are shared
  between records, and short strings are interned.

Private attributes are left out: their tags depend on each instance's
private creator blocks, so they cannot be matched or returned reliably.
Values are decoded with the instance's Specific Character Set; text keeps
leading spaces and loses trailing padding, so a response element rebuilt
with :func:`to_data_element` carries the stored value.

Records compare their layouts by identity, so layouts, shared items and the
caches of encoded sequences live in a ``record_cache.RecordCache``, one per
index (``ProtocolIndex.records``), and records compared with each other must
come from the same one. Records are built by ``record_reading``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, Final, NamedTuple

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

#: Binary values longer than this (bytes) are not kept.
BULK_BYTES: Final = 256
#: Text values longer than this (characters) are not kept.
BULK_TEXT: Final = 4096
#: Text values up to this length (characters) are interned: one object for equal values.
SHARED_TEXT: Final = 64


class _Bulk:
    """Marks a value that existed but was too large to keep."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "BULK"

    def __reduce__(self) -> str:
        return "BULK"  # pickled by name: one BULK, compared by identity


BULK: Final = _Bulk()

#: Text VRs whose bytes are decoded with the Specific Character Set.
CHARSET_TEXT: Final = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
#: Text VRs in the default repertoire.
PLAIN_TEXT: Final = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
TEXT: Final = CHARSET_TEXT | PLAIN_TEXT
#: Text VRs where a backslash is a character, not a value delimiter.
SINGLE_VALUED_TEXT: Final = frozenset({"LT", "ST", "UT", "UR"})
#: Fixed-size binary numbers, with their struct codes.
NUMBERS: Final = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "UV": "Q",
    "SV": "q",
    "FL": "f",
    "FD": "d",
}
BINARY: Final = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})


class Element(NamedTuple):
    """One attribute as the matcher sees it.

    ``values`` is a tuple (empty for a zero-length value; records for a
    sequence) or ``None`` when the value was too large to keep.
    """

    vr: str
    values: tuple[Any, ...] | None


class Layout:
    """The tags (ascending) and VRs of a record, shared by every record of that shape.

    Top-level layouts are nearly as many as the protocols (optional
    attributes vary), so a layout holds no lookup dict: a binary search of
    the sorted tags costs less memory for about the same time.
    """

    __slots__ = ("__weakref__", "tags", "vrs")

    def __init__(self, tags: tuple[int, ...], vrs: tuple[str, ...]) -> None:
        self.tags = tags
        self.vrs = vrs

    def position(self, tag: int) -> int | None:
        """Where ``tag`` is in the record's values, or None."""
        tags = self.tags
        i = bisect_left(tags, tag)
        return i if i < len(tags) and tags[i] == tag else None


class Record:
    """The attributes of one dataset (or sequence item), immutable."""

    __slots__ = ("__weakref__", "_hash", "_layout", "_values")

    def __init__(self, layout: Layout, values: tuple[Any, ...]) -> None:
        self._layout = layout
        self._values = values
        self._hash: int | None = None

    # -- reading -------------------------------------------------------------

    def get(self, tag: int) -> Element | None:
        """The element for ``tag``, or None if the dataset lacks it."""
        i = self._layout.position(tag)
        if i is None:
            return None
        return Element(self._layout.vrs[i], stored_values(self._values[i]))

    def values(self, tag: int) -> tuple[Any, ...] | None:
        """The values of ``tag``: () if absent or empty, None if bulk (not kept)."""
        i = self._layout.position(tag)
        if i is None:
            return ()
        return stored_values(self._values[i])

    def first(self, tag: int) -> Any:
        """The first value of ``tag`` or None: for single-valued attributes."""
        values = self.values(tag)
        return values[0] if values else None

    @property
    def tags(self) -> tuple[int, ...]:
        return self._layout.tags

    def __contains__(self, tag: object) -> bool:
        return isinstance(tag, int) and self._layout.position(tag) is not None

    def __iter__(self) -> Iterator[tuple[int, Element]]:
        layout = self._layout
        for tag, vr, value in zip(layout.tags, layout.vrs, self._values, strict=True):
            yield tag, Element(vr, stored_values(value))

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Record):
            return NotImplemented
        return self._layout is other._layout and self._values == other._values

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash((id(self._layout), self._values))
        return self._hash

    def __repr__(self) -> str:
        return f"Record({len(self)} attributes)"

    @property
    def vrs(self) -> tuple[str, ...]:
        return self._layout.vrs

    @property
    def layout(self) -> Layout:
        """The shared tags and VRs (one object for every record of that shape)."""
        return self._layout

    @property
    def raw_values(self) -> tuple[Any, ...]:
        """The stored values, one per tag: a value, a tuple of values, or BULK."""
        return self._values

    def to_dataset(self) -> Dataset:
        """The record as a pydicom Dataset (tests, REST summaries, debugging)."""
        ds = Dataset()
        for tag, element in self:
            if element.values is not None:
                ds.add(to_data_element(tag, element.vr, element.values))
        return ds


def stored_values(value: Any) -> tuple[Any, ...] | None:
    """A stored value as :meth:`Record.values` gives it: a tuple, None for a bulk one."""
    if value is BULK:
        return None
    if isinstance(value, tuple):
        return value
    return (value,)


# -- rebuilding elements ---------------------------------------------------------


def to_data_element(tag: int, vr: str, values: tuple[Any, ...]) -> DataElement:
    """A pydicom element with the stored VR and values (sequences included).

    Validation is off: the value is what the instance carried, and a
    response must return it as it is, not fail on it.
    """
    if vr == "SQ":
        value: Any = Sequence([item.to_dataset() for item in values])
    elif not values:
        value = None
    elif len(values) == 1 or vr in BINARY:
        value = values[0]
    else:
        value = list(values)
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)
