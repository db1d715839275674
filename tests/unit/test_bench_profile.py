"""The benchmark's profile summary counts only the samples of the path it profiles."""

from __future__ import annotations

from pathlib import Path

from bench.store_profile import summarize

HANDLER = "_store (/p/orthanc_dpp/dicom/scp/handlers.py:224)"
INDEX = "_store (/p/orthanc_dpp/model/index.py:267)"
LIBRARY = "store (/p/orthanc_dpp/storage/library.py:300)"
THREAD = "run (/usr/lib/python3.11/threading.py:975)"


def test_only_samples_under_the_named_function_count(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        f"{THREAD};{HANDLER};{LIBRARY} 3\n"
        f"{THREAD};{HANDLER};{LIBRARY};{INDEX} 1\n"
        f"{THREAD};{INDEX} 6\n"  # the index feed's thread, outside the handler
        f"{THREAD} 10\n"
    )
    found = summarize(raw, "handlers._store")
    assert found["samples"] == 4
    assert dict(found["inclusive"]) == {
        "handlers._store": 1.0,
        "library.store": 1.0,
        "index._store": 0.25,
    }
    assert dict(found["self"]) == {"library.store": 0.75, "index._store": 0.25}
    assert summarize(raw, "protocols.upload") == {"samples": 0, "inclusive": [], "self": []}
