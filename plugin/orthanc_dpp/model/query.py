"""C-FIND identifiers of the DPP information model: validation, matching, responses.

PS3.4 HH.4.1 gives DPP C-FIND the semantics of the Basic Worklist model
(K.2.2): required and optional matching keys, return keys of types 1/1C/2/2C/3,
every matching key also returned, and the matching types of C.2.2.2. Beyond
Table HH.6-1 (``orthanc_dpp.model.key_table``) any public attribute is an optional
matching key with the rules of its VR, so 0xFF01 is only answered where a key
truly cannot be honoured: private attributes (their tags differ between
instances), attributes unknown to the data dictionary, binary values (OB, OW,
... are never compared) and values too large to keep (``record.BULK``).

Choices where PS3.4 leaves room, stated once here and in README:

- PN matching ignores case and Unicode normalization form, and a key without
  "=" may match any one component group (alphabetic, ideographic, phonetic);
- a key with several values (without Multiple Value Matching negotiated,
  whose meaning PS3.4 leaves undefined) matches when any value matches;
- DA/TM/DT are compared by meaning: a single value is the interval it
  denotes ("2024" is that year), range bounds likewise; DT values without a
  UTC offset are compared as if in UTC (no Timezone query adjustment);
- "*" (or a value of only "*") is universal matching, also for empty values;
- Instance Creation Date and Time given as ranges of the same form match as
  one DateTime, as Table HH.6-1 requires.

``compile_query`` validates the identifier once; ``Query.matches`` runs per
record and must be fast (its matchers are in ``matching``); ``Query.respond``
builds the response identifier.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID

from orthanc_dpp.model import dimse_status, key_table
from orthanc_dpp.model.dimse_status import InvalidIdentifier
from orthanc_dpp.model.key_table import SOP_CLASS_UID, KeyRow
from orthanc_dpp.model.matching import (
    CombinedDateTime,
    Leaf,
    Matcher,
    SequenceKey,
    date_bounds,
    datetime_bounds,
    range_match,
    sequence,
    single_value,
    time_bounds,
    uid_list,
    wild_card,
)
from orthanc_dpp.model.record import BINARY, CHARSET_TEXT, NUMBERS, Record, to_data_element

#: VRs on which "*" and "?" are wild cards (PS3.4 C.2.2.2.4).
WILD_CARD_VRS: Final = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
TEMPORAL_VRS: Final = frozenset({"DA", "TM", "DT"})


def describe(tag: int) -> str:
    """'Keyword (gggg,eeee)' for error comments."""
    keyword = keyword_for_tag(tag) or "Unknown"
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _invalid(tag: int, problem: str) -> InvalidIdentifier:
    """Unable to process, with a comment naming the key (keyword, tag if room)."""
    comment = f"{problem} {describe(tag)}"
    if len(comment) > 64:
        comment = f"{problem} {keyword_for_tag(tag) or describe(tag)}"
    return InvalidIdentifier(dimse_status.UNABLE_TO_PROCESS, comment, [tag])


# -- key values: validation and compilation ---------------------------------------------

_CS_RE: Final = re.compile(r"[A-Z0-9 _*?]*")
_AS_RE: Final = re.compile(r"\d{3}[DWMY]")
_DS_RE: Final = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_IS_RE: Final = re.compile(r"[+-]?\d+")


def _key_values(elem: DataElement) -> list[Any]:
    """The key's values as a list ([] for a zero-length key)."""
    value = elem.value
    if value is None or value == "" or value == b"":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _check_text(tag: int, vr: str, values: list[Any]) -> list[str]:
    texts = [str(v) for v in values]
    for text in texts:
        stripped = text.strip(" ")
        if vr == "UI" and not UID(stripped.rstrip("\x00")).is_valid:
            raise _invalid(tag, "Invalid UI value in")
        if vr == "CS" and not _CS_RE.fullmatch(stripped):
            raise _invalid(tag, "Invalid CS value in")
        if vr == "AS" and not _AS_RE.fullmatch(stripped):
            raise _invalid(tag, "Invalid AS value in")
        if vr == "DS" and not _DS_RE.fullmatch(stripped):
            raise _invalid(tag, "Invalid DS value in")
        if vr == "IS" and (not _IS_RE.fullmatch(stripped) or abs(int(stripped)) >= 2**31):
            raise _invalid(tag, "Invalid IS value in")
        if vr == "AE" and any(ord(c) < 0x20 for c in text):
            raise _invalid(tag, "Invalid AE value in")
    return texts


def _temporal(tag: int, vr: str, texts: list[str]) -> Leaf:
    bounds = {"DA": date_bounds, "TM": time_bounds, "DT": datetime_bounds}[vr]
    intervals: list[tuple[Any, Any]] = []
    for text in texts:
        text = text.strip(" ")
        if "*" in text or "?" in text:
            raise _invalid(tag, f"Wild card in {vr} key")
        if "-" not in text:
            single = bounds(text)
            if single is None:
                raise _invalid(tag, f"Invalid {vr} value in")
            intervals.append(single)
            continue
        lo, hi = _split_range(tag, vr, text, bounds)
        intervals.append((lo[0] if lo else None, hi[1] if hi else None))
    return range_match(tag, vr, intervals)


def _split_range(tag: int, vr: str, text: str, bounds: Callable[[str], Any]) -> tuple[Any, Any]:
    """Split 'a-b', '-b' or 'a-' (DT bounds may carry '-' offsets: try each split)."""
    splits = []
    for i, char in enumerate(text):
        if char != "-":
            continue
        left, right = text[:i], text[i + 1 :]
        lo = bounds(left) if left else None
        hi = bounds(right) if right else None
        if (left and lo is None) or (right and hi is None) or not (left or right):
            continue
        splits.append((lo, hi))
    if len(splits) != 1:
        raise _invalid(tag, f"Invalid {vr} range in")
    return splits[0]


def _check_order(matcher: Matcher) -> None:
    """A range must not end before it starts (checked after DA+TM pairs are combined)."""
    if isinstance(matcher, Leaf):
        for lo, hi in matcher.spans:
            if lo is not None and hi is not None and lo > hi:
                raise _invalid(matcher.tag, f"{matcher.vr} range end before start in")
    elif isinstance(matcher, SequenceKey):
        for item in matcher.items:
            _check_order(item)


def _leaf(tag: int, vr: str, elem: DataElement) -> Leaf | None:
    """The matcher for a non-sequence key; None for universal matching."""
    try:
        values = _key_values(elem)
    except Exception as exc:
        raise _invalid(tag, "Cannot decode") from exc
    if not values:
        return None
    if vr in NUMBERS or vr == "AT":
        try:
            numbers = [float(v) if vr in ("FL", "FD") else int(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise _invalid(tag, f"Invalid {vr} value in") from exc
        return single_value(tag, vr, numbers)
    if vr == "PN":
        values = [str(v) for v in values]
    texts = _check_text(tag, vr, values)
    if vr in TEMPORAL_VRS:
        return _temporal(tag, vr, texts)
    if vr == "UI":
        return uid_list(tag, texts)
    if vr in ("DS", "IS"):
        return single_value(tag, vr, [float(t) for t in texts])
    if vr in WILD_CARD_VRS and any("*" in t or "?" in t for t in texts):
        if any(t.strip(" ") and not t.strip(" *") for t in texts):
            return None  # "*" matches everything, even empty values: universal
        return wild_card(tag, vr, texts)
    return single_value(tag, vr, texts)


# -- what a response returns for one key --------------------------------------------


@dataclass(frozen=True, slots=True)
class Projection:
    """One requested return key; for sequences, what each returned item holds.

    ``items`` None returns whole items; ``select`` returns only the stored
    items that match it (sequence matching); ``keep_empty`` returns a
    zero-length element when the instance lacks the attribute.
    """

    tag: int
    vr: str
    items: tuple[Projection, ...] | None = None
    select: SequenceKey | None = None
    keep_empty: bool = True


def _listed(rows: tuple[KeyRow, ...]) -> tuple[Projection, ...]:
    """The item attributes a table row lists: what a universal sequence key returns."""
    return tuple(
        Projection(
            row.tag,
            row.vr,
            _listed(row.items) if row.items else None,
            None,
            row.returning in ("1", "2"),
        )
        for row in rows
    )


# -- the query ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Compiled:
    matchers: list[Matcher] = field(default_factory=list)
    returns: list[Projection] = field(default_factory=list)
    unsupported: list[int] = field(default_factory=list)


def _resolve_vr(tag: int, elem: DataElement) -> str | None:
    """The key's VR from the data dictionary; None if the tag is unknown."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    if " or " in vr:
        return elem.VR if elem.VR in vr.split(" or ") else vr.split(" or ")[0]
    if elem.VR not in (vr, "UN", None) and not (vr == "SQ" and elem.VR == "UN"):
        raise _invalid(tag, f"VR {elem.VR} (expected {vr}) for")
    return vr


def _compile_keys(ds: Dataset, rows: tuple[KeyRow, ...], out: _Compiled, *, top: bool) -> None:
    for raw_tag in sorted(ds.keys()):
        tag = int(raw_tag)
        group, element = tag >> 16, tag & 0xFFFF
        if top and (tag in key_table.FOREIGN_KEYS or group in (0x0000, 0x0002)):
            raise InvalidIdentifier(
                dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                f"Key of another model: {describe(tag)}",
                [tag],
            )
        if tag in key_table.NOT_MATCHED or element == 0:
            continue
        if group & 1:
            out.unsupported.append(tag)  # private: tags differ between instances
            continue
        try:
            elem = ds[tag]
        except Exception as exc:
            raise _invalid(tag, "Cannot decode") from exc
        vr = _resolve_vr(tag, elem)
        if vr is None:
            out.unsupported.append(tag)
            continue
        row = next((r for r in rows if r.tag == tag), None)
        if vr == "SQ":
            _compile_sequence(tag, elem, row, out)
            continue
        if vr in BINARY:
            if _key_values(elem):
                out.unsupported.append(tag)  # binary values are not compared
            out.returns.append(Projection(tag, vr))
            continue
        matcher = _leaf(tag, vr, elem)
        if matcher is not None:
            out.matchers.append(matcher)
        out.returns.append(Projection(tag, vr))


def _compile_sequence(tag: int, elem: DataElement, row: KeyRow | None, out: _Compiled) -> None:
    items = elem.value
    if not isinstance(items, Sequence):
        raise _invalid(tag, "Malformed sequence")
    if len(items) > 1:
        raise _invalid(tag, "More than one item in")
    if not items or len(items[0]) == 0:
        # Universal: the whole sequence, its items with the attributes the table lists.
        listed = _listed(row.items) if row is not None and row.items else None
        out.returns.append(Projection(tag, "SQ", listed))
        return
    inner = _Compiled()
    _compile_keys(items[0], row.items if row is not None else (), inner, top=False)
    out.unsupported.extend(inner.unsupported)
    key = sequence(tag, tuple(inner.matchers)) if inner.matchers else None
    if key is not None:
        out.matchers.append(key)
    out.returns.append(Projection(tag, "SQ", tuple(inner.returns), key))


def _combine_date_time(matchers: list[Matcher]) -> list[Matcher]:
    """Instance Creation Date + Time ranges of the same form become one DateTime range."""
    for date_tag, time_tag in key_table.COMBINED_DATE_TIME:
        date = next((m for m in matchers if isinstance(m, Leaf) and m.tag == date_tag), None)
        time = next((m for m in matchers if isinstance(m, Leaf) and m.tag == time_tag), None)
        date_span, time_span = _only_range(date), _only_range(time)
        if date_span is None or time_span is None:
            continue
        (dlo, dhi), (tlo, thi) = date_span, time_span
        if (dlo is None) != (tlo is None) or (dhi is None) != (thi is None):
            continue  # different forms: matched separately
        lo = datetime.strptime(dlo + tlo, "%Y%m%d%H%M%S%f") if dlo is not None else None
        hi = datetime.strptime(dhi + thi, "%Y%m%d%H%M%S%f") if dhi is not None else None
        combined = CombinedDateTime(date_tag, time_tag, lo, hi)
        matchers = [m for m in matchers if m is not date and m is not time] + [combined]
    return matchers


def _only_range(leaf: Leaf | None) -> tuple[Any, Any] | None:
    """The single true range (not a single value) of a DA/TM key, if that is what it is."""
    if leaf is None or leaf.kind != "range" or len(leaf.spans) != 1:
        return None
    lo, hi = leaf.spans[0]
    return None if (lo is not None and lo == hi) or (lo, hi) == (None, None) else (lo, hi)


@dataclass(frozen=True, slots=True)
class Query:
    """A validated C-FIND identifier of the DPP information model."""

    matchers: tuple[Matcher, ...]
    returns: tuple[Projection, ...]
    unsupported: tuple[int, ...]
    charset: tuple[str, ...]
    sop_classes: frozenset[str]

    @property
    def status(self) -> int:
        """Pending status for this identifier (0xFF01 if a key is not honoured)."""
        if self.unsupported:
            return dimse_status.PENDING_OPTIONAL_KEYS_UNSUPPORTED
        return dimse_status.PENDING

    def matches(self, record: Record) -> bool:
        if record.first(SOP_CLASS_UID) not in self.sop_classes:
            return False
        return all(m.matches(record) for m in self.matchers)

    def respond(self, record: Record) -> tuple[int, Dataset]:
        """(pending status, response identifier) for a matching record."""
        texts: list[str] = []
        omitted: list[int] = []
        ds = _project(record, self.returns, texts, omitted)
        wanted = _response_charset(texts, self.charset)
        if wanted is not None:
            ds.SpecificCharacterSet = wanted
        code = dimse_status.PENDING_OPTIONAL_KEYS_UNSUPPORTED if omitted else self.status
        return code, ds


def _project(
    record: Record, returns: Iterable[Projection], texts: list[str], omitted: list[int]
) -> Dataset:
    ds = Dataset()
    for proj in returns:
        element = record.get(proj.tag)
        if element is None:
            if proj.keep_empty:
                ds.add(DataElement(proj.tag, proj.vr, [] if proj.vr == "SQ" else None))
            continue
        if element.values is None:
            omitted.append(proj.tag)  # value too large to keep: cannot return it
            continue
        if element.vr == "SQ":
            items = [i for i in element.values if isinstance(i, Record)]
            if proj.select is not None:
                items = [i for i in items if proj.select.item_matches(i)]
            if proj.items is None:
                datasets = [_project(i, _whole(i), texts, omitted) for i in items]
            else:
                datasets = [_project(i, proj.items, texts, omitted) for i in items]
            ds.add(DataElement(proj.tag, "SQ", Sequence(datasets)))
            continue
        if element.vr in CHARSET_TEXT:
            texts.extend(v for v in element.values if isinstance(v, str) and not v.isascii())
        ds.add(to_data_element(proj.tag, element.vr, element.values))
    return ds


def _whole(item: Record) -> list[Projection]:
    return [Projection(tag, element.vr) for tag, element in item]


def _response_charset(texts: list[str], requested: tuple[str, ...]) -> str | None:
    """Specific Character Set for the response: only when non-ASCII text is returned.

    The requester's own character set when it can encode every value,
    otherwise UTF-8 (K.4.1.1.3.2 lets the SCP answer in another one).
    """
    if not texts:
        return None
    if len(requested) == 1 and requested[0] not in ("", "ISO_IR 6"):
        try:
            codec = convert_encodings(list(requested))[0]
            for text in texts:
                text.encode(codec)
            return requested[0]
        except (LookupError, UnicodeError, ValueError):
            pass
    return "ISO_IR 192"


def _identifier_charset(identifier: Dataset) -> tuple[str, ...]:
    try:
        value = identifier.get("SpecificCharacterSet")
    except Exception:
        return ()
    if not value:
        return ()
    terms = [value] if isinstance(value, str) else list(value)
    return tuple(str(t).strip() for t in terms)


def compile_query(
    identifier: Dataset, model: key_table.InformationModel = key_table.DPP_MODEL
) -> Query:
    """Validate ``identifier`` against ``model`` and compile it; raises :class:`InvalidIdentifier`.

    The model's storage classes limit the answers: Protocol Approval
    instances share the index with the protocols but not their model.
    """
    out = _Compiled()
    _compile_keys(identifier, model.table, out, top=True)
    if not out.returns:
        raise InvalidIdentifier(
            dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            f"Identifier has no keys of the {model.name} model",
        )
    matchers = _combine_date_time(out.matchers)
    for matcher in matchers:
        _check_order(matcher)
    return Query(
        matchers=tuple(matchers),
        returns=tuple(out.returns),
        unsupported=tuple(out.unsupported),
        charset=_identifier_charset(identifier),
        sop_classes=model.storage_classes,
    )
