"""The sub-operation helpers on their own: the look-ahead bound."""

from __future__ import annotations

from orthanc_dpp.dicom.scp.suboperations import Lookahead, Prepared


def test_lookahead_prepares_at_most_one_ahead_and_keeps_the_order() -> None:
    made: list[str] = []

    def make(uid: str, orthanc_id: str | None, message_id: int) -> Prepared:
        made.append(uid)
        return Prepared(uid, message_id)

    ahead = Lookahead(((f"1.{n}", f"id{n}", n) for n in range(1, 5)), make)
    first = ahead.take()
    assert first is not None and (first.uid, made) == ("1.1", ["1.1"])
    ahead.prepare_next()
    ahead.prepare_next()  # already prepared: nothing more is loaded
    assert made == ["1.1", "1.2"]
    rest = list(iter(ahead.take, None))
    assert [(item.uid, item.message_id) for item in rest] == [("1.2", 2), ("1.3", 3), ("1.4", 4)]
    assert made == ["1.1", "1.2", "1.3", "1.4"]
    assert ahead.take() is None
