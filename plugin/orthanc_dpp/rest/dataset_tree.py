"""A dataset as a plain tree of named attributes, for people to read.

DICOM JSON (PS3.18 F.2) is keyed by bare tags and leaves the reader to look
up every name; the protocol library page shows a protocol's elements as a
tree, so each node here carries the attribute's name with its value as text.
Binary values are described by their length, never sent.
"""

from __future__ import annotations

from typing import Any, Final

from pydicom import Dataset
from pydicom.datadict import dictionary_description, keyword_for_tag
from pydicom.dataelem import DataElement

#: Value representations whose values are bytes, not text.
BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Longer texts are cut (LT and UT may hold pages); the node says so.
MAXIMUM_TEXT: Final = 4096


def _name(element: DataElement) -> tuple[str, str]:
    """(keyword, name); private and unknown tags get a descriptive name."""
    if element.tag.is_private:
        return "", element.name if element.name != "Private tag data" else "Private tag"
    keyword = keyword_for_tag(element.tag)
    try:
        name = dictionary_description(element.tag)
    except KeyError:
        name = "Unknown attribute"
    return keyword, name


def _attribute_tag(value: Any) -> str:
    """An AT value as its keyword and tag, e.g. ``KVP (0018,0060)``."""
    text = f"({int(value) >> 16:04X},{int(value) & 0xFFFF:04X})"
    keyword = keyword_for_tag(int(value))
    return f"{keyword} {text}" if keyword else text


def _text(element: DataElement) -> str:
    value = element.value
    if value is None or value == "":
        return ""
    values = value if element.VM > 1 and not isinstance(value, str | bytes) else [value]
    show = _attribute_tag if element.VR == "AT" else str
    return "\\".join(show(v) for v in values)


def element_node(element: DataElement) -> dict[str, Any]:
    """One attribute: ``Tag`` (gggg,eeee), ``Keyword``, ``Name``, ``VR`` and its content.

    Sequences have ``Items`` (a list of attribute lists); binary values have
    ``Length`` in bytes; other values have ``Value`` as text (several values
    joined by a backslash, as DICOM writes them), with ``Truncated`` when cut.
    """
    keyword, name = _name(element)
    node: dict[str, Any] = {
        "Tag": f"{element.tag.group:04X},{element.tag.element:04X}",
        "Keyword": keyword,
        "Name": name,
        "VR": element.VR,
    }
    if element.VR == "SQ":
        node["Items"] = [dataset_tree(item) for item in element.value or ()]
    elif element.VR in BINARY_VRS:
        value = element.value
        node["Length"] = len(value) if isinstance(value, bytes | bytearray) else 0
    else:
        text = _text(element)
        if len(text) > MAXIMUM_TEXT:
            text = text[:MAXIMUM_TEXT]
            node["Truncated"] = True
        node["Value"] = text
    return node


def dataset_tree(ds: Dataset) -> list[dict[str, Any]]:
    """The attributes of ``ds`` in tag order (not its file meta), as :func:`element_node`."""
    return [element_node(element) for element in ds]
