"""The protocol library page in headless Chromium, against a real Orthanc with the plugin.

Debian's ``chromium`` driven by Playwright for Python (no browser download:
``executable_path`` is Debian's). Each test saves a screenshot of the page in
its tmp folder, and a copy under ``.screenshots/`` (git-ignored) for people.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dpp_tools.samples import make_non_dpp, make_protocol, to_bytes
from tests.browser import CHROMIUM, CHROMIUM_ARGS, playwright_api
from tests.datasets import LOST_PREDECESSOR, kvp_constraint, make_performed, version_chain
from tests.orthanc_server import OrthancServer, free_port
from tests.peers import collecting_storescp
from tests.waiting import eventually

expect = playwright_api.expect

SCREENSHOTS = Path(__file__).resolve().parents[2] / ".screenshots"
#: How long Playwright's expectations wait for the page to show something.
WAIT_MS = 30_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")

#: A protocol name that would run script if the page inserted it as HTML.
HOSTILE_NAME = '<img src=x onerror="window.dppInjected=1">'


def protocol(seed: int, kind: str, uid_tail: int, name: str | None = None) -> pydicom.Dataset:
    ds = make_protocol(seed, kind)
    uid = f"2.25.{uid_tail}"
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    if name is not None:
        ds.ProtocolName = name
    return ds


#: What the module's server holds before any test runs.
SEEDED = [
    protocol(1, "CT", 900001),
    protocol(2, "XA", 900002),
    protocol(3, "CT", 900003),
    protocol(4, "XA", 900004, name=HOSTILE_NAME),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as orthanc:
        for ds in SEEDED:
            answer = orthanc.post("/dpp/protocols", to_bytes(ds))
            assert answer["Stored"] == 1, answer
        yield orthanc


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser page; its screenshot is saved when the test ends."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    shot = tmp_path / f"{request.node.name}.png"
    tab.screenshot(path=str(shot), full_page=True)
    SCREENSHOTS.mkdir(exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / shot.name)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_library(page: Any, server: OrthancServer) -> None:
    page.goto(f"{server.url}/dpp/ui/index.html")
    expect(page.locator("#listener-state-value")).to_have_text("running", timeout=WAIT_MS)


def rows(page: Any) -> Any:
    return page.locator("#protocols tbody tr")


def row_of(page: Any, uid: str) -> Any:
    return page.locator(f'#protocols tbody tr[data-uid="{uid}"]')


def listed_uids(server: OrthancServer, query: str = "") -> list[str]:
    answer = server.get_json(f"/dpp/protocols?limit=1000{query}")
    return [p["SOPInstanceUID"] for p in answer["Protocols"]]


# -- list, search, open ---------------------------------------------------------------------


def test_the_list_shows_every_protocol_with_its_attributes(
    page: Any, server: OrthancServer
) -> None:
    open_library(page, server)
    stored = listed_uids(server)
    expect(rows(page)).to_have_count(len(stored))
    assert (
        page.locator("#protocols tbody tr").evaluate_all("rows => rows.map(r => r.dataset.uid)")
        == stored
    )
    chest = row_of(page, "2.25.900001")
    expect(chest.locator("td.name div").first).to_have_text("CT Adult Chest w IV")
    expect(chest.locator("td").nth(1)).to_have_text("CT")
    expect(chest.locator("td").nth(2)).to_contain_text("SOMATOM Force")
    expect(chest.locator("td").nth(3)).to_contain_text("RADLEX RPID18 — CT Chest w IV Contrast")
    expect(chest.locator("td").nth(4)).to_have_text("2017-04-17")
    expect(chest.locator("td").nth(5)).to_have_text("CT protocol")
    expect(row_of(page, "2.25.900002").locator("td").nth(5)).to_have_text("XA protocol")
    expect(page.locator("#result-count")).to_have_text(f"({len(stored)})")


def test_dicom_strings_are_shown_as_text_never_run(page: Any, server: OrthancServer) -> None:
    open_library(page, server)
    hostile = row_of(page, "2.25.900004")
    expect(hostile.locator("td.name div").first).to_have_text(HOSTILE_NAME)
    hostile.get_by_role("button", name="Open").click()
    expect(page.locator("#protocol-title")).to_have_text(HOSTILE_NAME)
    assert page.locator("#protocols img, #protocol-section img").count() == 0
    assert page.evaluate("window.dppInjected") is None


def test_search_by_modality_name_code_manufacturer_model_and_date(
    page: Any, server: OrthancServer
) -> None:
    open_library(page, server)
    searches = [
        ({"#search-modality": "xa"}, "&modality=xa"),
        ({"#search-name": "chest"}, "&name=chest"),
        ({"#search-code": "RPID39"}, "&code=RPID39"),
        ({"#search-manufacturer": "uih"}, "&manufacturer=uih"),
        ({"#search-model": "artis zee"}, "&model=artis%20zee"),
        (
            {"#search-date-from": "2018-01-01", "#search-date-to": "2021-12-31"},
            "&date=20180101-20211231",
        ),
    ]
    for fields, query in searches:
        page.locator("#search-clear").click()
        for selector, value in fields.items():
            page.locator(selector).fill(value)
        page.locator("#search-submit").click()
        expected = listed_uids(server, query)
        assert expected and len(expected) < len(listed_uids(server)), query
        expect(rows(page)).to_have_count(len(expected))
        shown = rows(page).evaluate_all("rows => rows.map(r => r.dataset.uid)")
        assert shown == expected, query
    # The last search: CT 2018-07-06 and XA 2021-09-12, not 2017 nor 2023.
    assert set(shown) == {"2.25.900003", "2.25.900004"}
    page.locator("#search-clear").click()
    page.locator("#search-name").fill("no such protocol")
    page.locator("#search-submit").click()
    expect(page.locator("#list-message")).to_have_text("No protocol matches the search.")
    expect(rows(page)).to_have_count(0)


def test_open_shows_key_attributes_and_the_elements_as_a_tree(
    page: Any, server: OrthancServer
) -> None:
    open_library(page, server)
    row_of(page, "2.25.900001").get_by_role("button", name="Open").click()
    section = page.locator("#protocol-section")
    expect(section).to_be_visible()
    expect(page.locator("#protocol-title")).to_have_text("CT Adult Chest w IV")
    summary = page.locator("#protocol-summary")
    expect(summary).to_contain_text("2.25.900001")
    expect(summary).to_contain_text("SOMATOM Force, SOMATOM go.Top, NAEOTOM Alpha")
    elements = page.locator(
        '#protocol-tree details[data-keyword="AcquisitionProtocolElementSpecificationSequence"]'
    )
    expect(elements).to_have_attribute("open", "")
    ds = SEEDED[0]
    count = len(ds.AcquisitionProtocolElementSpecificationSequence)
    items = elements.locator(":scope > ol > li > details > summary")
    expect(items).to_have_count(count)
    expect(items.first).to_contain_text("Topogram")
    # An element opens onto its constraints, named: "KVP EQUAL 100" for the topogram.
    items.first.click()
    expect(elements.locator(":scope > ol > li").first).to_contain_text("KVP EQUAL")
    page.locator("#close-protocol").click()
    expect(section).to_be_hidden()
    # Opened again for the screenshot, one element unfolded.
    row_of(page, "2.25.900001").get_by_role("button", name="Open").click()
    expect(section).to_be_visible()
    items.first.click()
    expect(elements.locator(":scope > ol > li").first).to_contain_text("KVP EQUAL")


# -- upload, download, delete ---------------------------------------------------------------


def test_upload_with_the_file_picker_gives_a_result_per_file(
    page: Any, server: OrthancServer, tmp_path: Path
) -> None:
    good = tmp_path / "new-ct.dcm"
    good.write_bytes(to_bytes(protocol(5, "CT", 900005)))
    image = tmp_path / "ct-image.dcm"
    image.write_bytes(to_bytes(make_non_dpp(5)))
    open_library(page, server)
    page.locator("#file-input").set_input_files([str(good), str(image)])
    results = page.locator("#upload-results li")
    expect(results).to_have_count(2)
    expect(results.nth(0)).to_have_class("stored")
    expect(results.nth(0)).to_contain_text("new-ct.dcm")
    expect(results.nth(0)).to_contain_text("stored · 2.25.900005")
    expect(results.nth(1)).to_have_class("failed")
    expect(results.nth(1)).to_contain_text("refused: SOP class")
    expect(row_of(page, "2.25.900005")).to_have_count(1)
    assert "2.25.900005" in listed_uids(server)
    activity = page.locator("#activity tbody")
    expect(activity).to_contain_text("Upload of body stored: 2.25.900005 (Success)")
    expect(activity).to_contain_text("Upload of body refused: SOP class CT Image Storage")


def test_upload_by_drag_and_drop(page: Any, server: OrthancServer) -> None:
    data = to_bytes(protocol(6, "XA", 900006))
    open_library(page, server)
    page.evaluate(
        """([name, encoded]) => {
            const bytes = Uint8Array.from(atob(encoded), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: 'application/dicom'}));
            const zone = document.getElementById('drop-zone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, {
                    dataTransfer: transfer, bubbles: true, cancelable: true}));
            }
        }""",
        ["dropped-xa.dcm", base64.b64encode(data).decode()],
    )
    result = page.locator("#upload-results li")
    expect(result).to_have_count(1)
    expect(result).to_have_class("stored")
    expect(result).to_contain_text("dropped-xa.dcm")
    expect(row_of(page, "2.25.900006")).to_have_count(1)
    assert server.get("/dpp/protocols/2.25.900006/file") == data


def test_download_gives_the_stored_file(page: Any, server: OrthancServer) -> None:
    open_library(page, server)
    with page.expect_download() as started:
        row_of(page, "2.25.900002").get_by_role("link", name="Download").click()
    download = started.value
    assert download.suggested_filename == "2.25.900002.dcm"
    data = Path(download.path()).read_bytes()
    assert data == server.get("/dpp/protocols/2.25.900002/file")
    sent = SEEDED[1]
    assert pydicom.dcmread(download.path()) == sent


def test_delete_removes_the_protocol(page: Any, server: OrthancServer) -> None:
    server.post("/dpp/protocols", to_bytes(protocol(7, "CT", 900007)))
    open_library(page, server)
    row = row_of(page, "2.25.900007")
    expect(row).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    expect(page.locator("#list-message")).to_contain_text("Deleted:")
    assert "2.25.900007" not in listed_uids(server)
    assert server.status_of("GET", "/dpp/protocols/2.25.900007") == 404


def test_delete_can_be_cancelled(page: Any, server: OrthancServer) -> None:
    open_library(page, server)
    page.once("dialog", lambda dialog: dialog.dismiss())
    row_of(page, "2.25.900003").get_by_role("button", name="Delete").click()
    expect(row_of(page, "2.25.900003")).to_have_count(1)
    assert "2.25.900003" in listed_uids(server)


# -- listener state, activity, Orthanc Explorer -----------------------------------------------


def test_the_listener_state_and_recent_activity_are_shown(page: Any, server: OrthancServer) -> None:
    open_library(page, server)
    facts = page.locator("#listener-state")
    expect(facts).to_contain_text(server.aet)
    expect(facts).to_contain_text(f"127.0.0.1:{server.dpp_port}")
    total = server.get_json("/dpp/status")["Protocols"]["Total"]
    expect(facts).to_contain_text(f"Protocols stored{total}")
    # The seeded uploads are in the activity, newest first.
    activity = page.locator("#activity tbody")
    expect(activity).to_contain_text("Upload of body stored: 2.25.900004")


def test_orthanc_explorer_links_to_the_page(page: Any, server: OrthancServer) -> None:
    page.goto(f"{server.url}/app/explorer.html")
    button = page.locator("#dpp-protocol-library")
    expect(button).to_be_visible()
    button.click()
    page.wait_for_url("**/dpp/ui/index.html")
    expect(page.locator("#listener-state-value")).to_have_text("running")


# -- authentication ---------------------------------------------------------------------------


def status_without_credentials(server: OrthancServer, path: str) -> int:
    try:
        with urllib.request.urlopen(server.url + path, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_page_and_its_data_need_orthanc_credentials(
    make_server: Any, browser: Any, tmp_path: Path
) -> None:
    orthanc = make_server(
        config={"AuthenticationEnabled": True, "RegisteredUsers": {"alice": "wonderland"}}
    )
    orthanc.start()
    orthanc.post("/dpp/protocols", to_bytes(SEEDED[0]))
    for path in (
        "/dpp/ui/index.html",
        "/dpp/ui/library.js",
        "/dpp/protocols",
        "/dpp/status",
        "/dpp/activity",
        "/dpp/protocols/2.25.900001/tree",
    ):
        assert status_without_credentials(orthanc, path) == 401, path
    # Without credentials Chromium gets Orthanc's 401 challenge and stops there.
    anonymous = browser.new_context()
    with pytest.raises(playwright_api.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
        anonymous.new_page().goto(f"{orthanc.url}/dpp/ui/index.html")
    anonymous.close()
    context = browser.new_context(http_credentials={"username": "alice", "password": "wonderland"})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    tab.goto(f"{orthanc.url}/dpp/ui/index.html")
    expect(tab.locator("#listener-state-value")).to_have_text("running")
    expect(row_of(tab, "2.25.900001")).to_have_count(1)
    shot = tmp_path / "authenticated.png"
    tab.screenshot(path=str(shot), full_page=True)
    SCREENSHOTS.mkdir(exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / "test_the_page_and_its_data_need_orthanc_credentials.png")
    context.close()


def test_page_files_have_their_content_types_and_security_headers(server: OrthancServer) -> None:
    for name, kind in (
        ("index.html", "text/html"),
        ("library.js", "text/javascript"),
        ("library.css", "text/css"),
    ):
        _, headers, body = server.request("GET", f"/dpp/ui/{name}")
        assert headers["Content-Type"].startswith(kind), name
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert body
    assert server.status_of("GET", "/dpp/ui/secret.py") == 404
    answer = json.loads(server.get("/dpp/activity"))
    assert answer["Capacity"] > 0


# -- protocol management: approvals, compare, versions, usage, send, export -------------------


@pytest.fixture(scope="module")
def chain(server: OrthancServer) -> list[pydicom.Dataset]:
    """Three versions of one CT protocol, stored; the first names a predecessor not stored."""
    versions = version_chain(8, 3)
    for ds in versions:
        assert server.post("/dpp/protocols", to_bytes(ds))["Stored"] == 1
    return versions


def open_row(page: Any, uid: str) -> None:
    row_of(page, uid).get_by_role("button", name="Open").click()
    expect(page.locator("#protocol-section")).to_have_attribute("data-uid", uid)


def approval_of(server: OrthancServer, uid: str) -> pydicom.Dataset:
    """The approval stored last for the protocol ``uid`` (the list is in the index's order)."""
    newest = server.get_json(f"/dpp/protocols/{uid}")["Approvals"][-1]
    data = server.get(f"/dpp/protocols/{newest['SOPInstanceUID']}/file")
    return pydicom.dcmread(io.BytesIO(data))


def test_approve_with_a_comment_then_the_state_changes(page: Any, server: OrthancServer) -> None:
    open_library(page, server)
    expect(row_of(page, "2.25.900003").locator("td.approval")).to_have_text("none")
    open_row(page, "2.25.900003")
    expect(page.locator("#protocol-approval-state")).to_have_text("none")
    expect(page.locator("#protocol-approvals tbody")).to_have_text("No approval stored.")
    page.locator("#approval-comment").fill("Reviewed by the CT committee")
    page.locator("#approval-expires").fill("2099-06-30")
    page.locator("#approve").click()
    expect(page.locator("#approval-message")).to_contain_text("Approved: approval")
    expect(page.locator("#protocol-approval-state")).to_have_text("approved")
    assertion = page.locator("#protocol-approvals tbody tr")
    expect(assertion).to_have_count(1)
    expect(assertion.locator("td").nth(0)).to_have_text("Approved for use at the institution")
    expect(assertion.locator("td").nth(1)).to_contain_text(
        server.get_json("/dpp/status")["Listener"]["AETitle"]
    )
    expect(assertion.locator("td").nth(3)).to_have_text("2099-06-30 00:00:00 +0000")
    expect(assertion.locator("td.comment")).to_have_text("Reviewed by the CT committee")
    expect(row_of(page, "2.25.900003").locator("td.approval")).to_have_text("approved")
    stored = approval_of(server, "2.25.900003")
    assert stored.ApprovalSequence[0].AssertionComments == "Reviewed by the CT committee"
    assert stored.ApprovalSequence[0].AssertionExpirationDateTime == "20990630000000+0000"
    assert stored.ApprovalSequence[0].AssertionCodeSequence[0].CodeValue == "128603"
    # The approval's own row names what it approves.
    expect(row_of(page, stored.SOPInstanceUID).locator("td.name div").first).to_have_text(
        f"Approval of {SEEDED[2].ProtocolName}"
    )
    # The filter: approved protocols only, approvals left out.
    page.locator("#search-approval").select_option("approved")
    page.locator("#search-submit").click()
    expected = listed_uids(server, "&approval=approved")
    assert "2.25.900003" in expected
    expect(rows(page)).to_have_count(len(expected))
    assert rows(page).evaluate_all("rows => rows.map(r => r.dataset.uid)") == expected


def test_reject_shows_the_decision_with_the_earlier_approval_and_its_expiry(
    page: Any, server: OrthancServer
) -> None:
    body = json.dumps({"Assertion": "approved", "ExpiresOn": "20991231"}).encode()
    code, _, _ = server.request(
        "POST",
        "/dpp/protocols/2.25.900002/approvals",
        body,
        headers={"Content-Type": "application/json"},
    )
    assert code == 201
    open_library(page, server)
    expect(row_of(page, "2.25.900002").locator("td.approval")).to_have_text("approved")
    open_row(page, "2.25.900002")
    page.locator("#approval-comment").fill("Dose too high for children")
    page.locator("#reject").click()
    expect(page.locator("#protocol-approval-state")).to_have_text("rejected")
    assertions = page.locator("#protocol-approvals tbody tr")
    expect(assertions).to_have_count(2)
    expect(assertions.nth(0).locator("td").nth(0)).to_have_text("Disapproved for any use")
    expect(assertions.nth(0).locator("td").nth(3)).to_have_text("never")
    expect(assertions.nth(0).locator("td.comment")).to_have_text("Dose too high for children")
    expect(assertions.nth(1).locator("td.comment")).to_have_text("")
    expect(assertions.nth(1).locator("td").nth(3)).to_contain_text("2099-12-31")
    expect(row_of(page, "2.25.900002").locator("td.approval")).to_have_text("rejected")
    stored = approval_of(server, "2.25.900002")
    assert stored.ApprovalSequence[0].AssertionComments == "Dose too high for children"
    assert server.get_json("/dpp/protocols/2.25.900002")["ApprovalState"] == "rejected"


def test_compare_two_versions_shows_their_differences_side_by_side(
    page: Any, server: OrthancServer, chain: list[pydicom.Dataset]
) -> None:
    first, second = (str(ds.SOPInstanceUID) for ds in chain[:2])
    open_library(page, server)
    expect(page.locator("#compare-selected")).to_be_disabled()
    row_of(page, first).locator("input.select").check()
    row_of(page, second).locator("input.select").check()
    page.locator("#compare-selected").click()
    differences = page.locator("#differences tbody tr")
    expect(page.locator("#compare-message")).to_have_text("1 difference")
    expect(differences).to_have_count(1)
    before, after = (
        f"{float(kvp_constraint(ds).ConstraintValueSequence[0].SelectorDSValue):g}"
        for ds in chain[:2]
    )
    expect(differences.locator("td").nth(0)).to_contain_text("SelectorDSValue")
    expect(differences.locator("td.side-a")).to_have_text(before)
    expect(differences.locator("td.side-b")).to_have_text(after)
    expect(page.locator("#compare-sides")).to_contain_text(first)
    expect(page.locator("#compare-sides")).to_contain_text(second)


def test_versions_chain_opens_each_stored_link_and_names_the_missing_one(
    page: Any, server: OrthancServer, chain: list[pydicom.Dataset]
) -> None:
    first, middle, last = (str(ds.SOPInstanceUID) for ds in chain)
    open_library(page, server)
    open_row(page, middle)
    versions = page.locator("#protocol-versions")
    earlier = versions.locator("ol").nth(0).locator("li")
    later = versions.locator("ol").nth(1).locator("li")
    expect(earlier).to_have_count(2)
    expect(earlier.nth(0)).to_have_attribute("data-uid", first)
    expect(earlier.nth(1)).to_have_attribute("data-uid", LOST_PREDECESSOR)
    expect(earlier.nth(1)).to_have_class("missing")
    expect(earlier.nth(1)).to_contain_text("not stored here")
    expect(earlier.nth(1).get_by_role("button")).to_have_count(0)
    expect(later).to_have_count(1)
    expect(later.nth(0)).to_have_attribute("data-uid", last)
    later.nth(0).get_by_role("button").click()
    expect(page.locator("#protocol-section")).to_have_attribute("data-uid", last)
    expect(page.locator("#protocol-summary")).to_contain_text(last)
    expect(later).to_have_text("None stored.")
    expect(earlier.nth(0)).to_have_attribute("data-uid", middle)
    earlier.nth(1).get_by_role("button").click()
    expect(page.locator("#protocol-section")).to_have_attribute("data-uid", first)
    expect(earlier).to_have_count(1)
    expect(earlier.nth(0)).to_have_attribute("data-uid", LOST_PREDECESSOR)


def test_usage_column_and_the_most_used_first(page: Any, server: OrthancServer) -> None:
    server.post("/instances", to_bytes(make_performed(71, ["2.25.900004"], date="20240305")))
    assert eventually(
        lambda: server.get_json("/dpp/protocols/2.25.900004")["Usage"]["Count"] == 1, timeout=20
    )
    open_library(page, server)
    usage = row_of(page, "2.25.900004").locator("td.usage")
    expect(usage).to_have_text("1 uselast 2024-03-05 10:15:00")
    expect(row_of(page, "2.25.900001").locator("td.usage")).to_have_text("0 usesnever used")
    open_row(page, "2.25.900004")
    expect(page.locator("#protocol-summary")).to_contain_text(
        "Usage1 use, last 2024-03-05 10:15:00"
    )
    page.locator("#search-sort").select_option("usage")
    page.locator("#search-submit").click()
    expect(rows(page).first).to_have_attribute("data-uid", "2.25.900004")
    page.locator("#search-unused").select_option("true")
    page.locator("#search-submit").click()
    expected = listed_uids(server, "&unused=true&sort=usage")
    expect(rows(page)).to_have_count(len(expected))
    expect(row_of(page, "2.25.900004")).to_have_count(0)


def test_send_to_a_modality_shows_each_outcome(page: Any, server: OrthancServer) -> None:
    uids = ["2.25.900001", "2.25.900003"]
    with collecting_storescp("ROOM3_CT") as (port, received):
        entry = {"AET": "ROOM3_CT", "Host": "127.0.0.1", "Port": port}
        server.request("PUT", "/modalities/room3", json.dumps(entry).encode())
        open_library(page, server)
        expect(page.locator("#send-modality option[value=room3]")).to_have_count(1)
        expect(page.locator("#send-selected")).to_be_disabled()
        for uid in uids:
            row_of(page, uid).locator("input.select").check()
        page.locator("#send-modality").select_option("room3")
        page.locator("#send-selected").click()
        results = page.locator("#send-results li")
        expect(results).to_have_count(3)
        expect(results.nth(0)).to_have_text("To room3: 2 stored, 0 with a warning, 0 failed")
        for uid in uids:
            line = page.locator(f'#send-results li[data-uid="{uid}"]')
            expect(line).to_have_class("stored")
            expect(line).to_contain_text("Success (0x0000)")
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == uids
    # The page pushed through a job of the plugin and followed it to its end.
    (job,) = [j for j in server.get_json("/dpp/jobs") if j.get("Modality") == "room3"]
    assert (job["Method"], job["State"], job["Completed"]) == ("C-STORE", "Success", 2)


def test_send_to_an_unreachable_modality_says_why(page: Any, server: OrthancServer) -> None:
    entry = {"AET": "NOBODY", "Host": "127.0.0.1", "Port": free_port()}
    server.request("PUT", "/modalities/room9", json.dumps(entry).encode())
    open_library(page, server)
    row_of(page, "2.25.900001").locator("input.select").check()
    page.locator("#send-modality").select_option("room9")
    page.locator("#send-selected").click()
    head = page.locator("#send-results li").first
    expect(head).to_contain_text(
        "To room9: 0 stored, 0 with a warning, 1 failed · ", timeout=WAIT_MS
    )
    expect(head).to_have_class("failed")
    line = page.locator('#send-results li[data-uid="2.25.900001"]')
    expect(line).to_have_class("failed")
    (job,) = [j for j in server.get_json("/dpp/jobs") if j.get("Modality") == "room9"]
    assert job["State"] == "Failure"
    assert job["Result"]["Error"] in head.text_content()


def test_export_link_gives_the_current_search(page: Any, server: OrthancServer) -> None:
    open_library(page, server)
    link = page.locator("#export-link")
    expect(link).to_have_attribute("href", f"{server.url}/dpp/export")
    page.locator("#search-modality").fill("ct")
    page.locator("#search-name").fill("adult chest")
    page.locator("#search-submit").click()
    query = "modality=ct&name=adult%20chest"
    expect(link).to_have_attribute(
        "href", f"{server.url}/dpp/export?name=adult%20chest&modality=ct"
    )
    with page.expect_download() as started:
        link.click()
    with zipfile.ZipFile(started.value.path()) as archive:
        names = sorted(archive.namelist())
    assert names == sorted(f"{uid}.dcm" for uid in listed_uids(server, "&" + query))
    assert names


def test_export_beyond_its_limit_says_why_instead_of_downloading_a_refusal(
    page: Any, server: OrthancServer
) -> None:
    """Past 1000 matches GET /dpp/export answers 413; the link must not save that as a zip.
    The list's answers are given a larger Total here rather than storing 1001 protocols."""

    def more_than_an_export_holds(route: Any) -> None:
        answer = route.fetch()
        route.fulfill(response=answer, json={**answer.json(), "Total": 1500})

    page.route("**/dpp/protocols?*", more_than_an_export_holds)
    open_library(page, server)
    link = page.locator("#export-link")
    expect(link).to_have_attribute("aria-disabled", "true")
    assert link.get_attribute("href") is None
    expect(page.locator("#export-hint")).to_have_text(
        "1500 protocols match; an export holds at most 1000: narrow the search to export."
    )
    page.unroute("**/dpp/protocols?*")
    page.locator("#search-modality").fill("ct")
    page.locator("#search-submit").click()
    expect(link).to_have_attribute("href", f"{server.url}/dpp/export?modality=ct")
    expect(page.locator("#export-hint")).to_have_text("")
    assert link.get_attribute("aria-disabled") is None
