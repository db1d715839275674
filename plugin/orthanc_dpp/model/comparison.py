"""What differs between two protocols, attribute by attribute (``GET /dpp/protocols/{a}/diff/{b}``).

Two versions of a protocol are compared as they were received (normalization
undone): every attribute in tag order, sequences item by item, so a changed
tube voltage is named where it sits
(``AcquisitionProtocolElementSpecificationSequence[0].ParametersSpecificationSequence[2]...``).
Values are given in DICOM JSON form (PS3.18 F.2), as pydicom writes them, so
a difference reads the same as the attribute would in a DICOMweb answer;
two values are equal when their JSON forms are ("1.0" and "1" are one DS).

What makes an instance *this* instance rather than its content is left out
(:data:`IDENTITY`): two protocols that differ only there are identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from orthanc_dpp.model.normalization import DESCRIPTIVE, REQUIRED


def _tags(*keywords: str) -> frozenset[int]:
    found = {tag_for_keyword(keyword) for keyword in keywords}
    return frozenset(t for t in found if t is not None)


#: Top-level attributes that identify an instance rather than say what it
#: does. The File Meta Information (group 0002) is never compared: it
#: describes the file, and a dataset holds none of it.
IDENTITY: Final = _tags(
    # Every instance has its own; the SOP Class UID stays compared (CT or XA).
    "SOPInstanceUID",
    # SOP Common: when and by which system this instance was made. A new
    # version is always made later; who designed it is Content Creator's Name,
    # which stays compared.
    "InstanceCreationDate",
    "InstanceCreationTime",
    "InstanceCreatorUID",
    # Where Orthanc files the instance: what the plugin's normalization adds
    # (model/normalization.py) and undoes on reading; a protocol that arrived
    # with its own patient, study or series has no less the same content.
    *REQUIRED,
    *DESCRIPTIVE,
    # The version chain: version n+1 names version n, version n named n-1, so
    # two versions always differ there. ``GET /dpp/protocols/{uid}/versions``
    # answers it.
    "PredecessorProtocolSequence",
)


@dataclass(frozen=True)
class Difference:
    """One attribute (or sequence item) present or valued differently on each side.

    ``a`` and ``b`` are DICOM JSON: an element's ``{"vr": ..., "Value": [...]}``,
    a whole item's ``{"00180060": {...}, ...}`` when one sequence is longer,
    None on the side that lacks it.
    """

    path: str
    tag: int
    keyword: str
    a: Any
    b: Any

    def as_json(self) -> dict[str, Any]:
        return {
            "Path": self.path,
            "Tag": f"{self.tag:08X}",
            "Keyword": self.keyword,
            "A": self.a,
            "B": self.b,
        }


def differences(a: Dataset, b: Dataset) -> list[Difference]:
    """Every difference of ``a`` and ``b`` outside :data:`IDENTITY`, in tag order, depth first."""
    found: list[Difference] = []
    _compare(a, b, "", found, ignored=IDENTITY)
    return found


def _compare(
    a: Dataset, b: Dataset, prefix: str, found: list[Difference], *, ignored: frozenset[int]
) -> None:
    for tag in sorted(_compared(a, ignored) | _compared(b, ignored)):
        left = a.get(tag)
        right = b.get(tag)
        keyword = keyword_for_tag(tag)
        path = prefix + (keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
        if left is not None and right is not None and left.VR == right.VR == "SQ":
            _compare_items(left.value, right.value, path, tag, keyword, found)
            continue
        left_json, right_json = _json(left), _json(right)
        if left_json != right_json:
            found.append(Difference(path, tag, keyword, left_json, right_json))


def _compare_items(
    a: list[Dataset], b: list[Dataset], path: str, tag: int, keyword: str, found: list[Difference]
) -> None:
    """Items at the same position are compared; an item only one side has is reported whole."""
    for number in range(max(len(a), len(b))):
        item_path = f"{path}[{number}]"
        if number < len(a) and number < len(b):
            _compare(a[number], b[number], item_path + ".", found, ignored=frozenset())
        else:
            left = a[number].to_json_dict() if number < len(a) else None
            right = b[number].to_json_dict() if number < len(b) else None
            found.append(Difference(item_path, tag, keyword, left, right))


def _compared(ds: Dataset, ignored: frozenset[int]) -> set[int]:
    """The tags of ``ds`` that carry content: no group length, nothing ``ignored``."""
    return {int(t) for t in ds.keys() if t.element != 0 and int(t) not in ignored}  # noqa: SIM118


def _json(element: DataElement | None) -> dict[str, Any] | None:
    """The element in DICOM JSON, binary values inline (protocols hold no bulk data)."""
    if element is None:
        return None
    try:
        return element.to_json_dict(None, 0)
    except (TypeError, ValueError):
        # A value the listener kept although it breaks its VR (a DS of "abc"):
        # pydicom reads it but cannot write it as a JSON number. Still shown,
        # and compared, as the text it holds.
        value = element.value
        values = value if isinstance(value, list | tuple | MultiValue) else [value]
        return {"vr": element.VR, "Value": [str(v) for v in values]}
