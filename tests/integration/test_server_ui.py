"""The operator's web UI on a real `bty serve` on 127.0.0.1, over HTTP: only the operator's token
opens it (a form login with a signed HttpOnly SameSite=Strict cookie, or a Bearer header), the
agents' token and credentials open nothing, every form that changes something is CSRF-checked,
assigning to several machines at once makes their plans, and the live stream sends a machine's
row as its agent reports progress."""

from __future__ import annotations

import dataclasses
import http.client
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlencode, urlsplit

import pytest

from bty_live.commands import serve
from bty_live.errors import UsageError
from bty_live.events import Event, Kind, Phase
from bty_live.flash.ledger import LedgerRecord, PhaseResult, append_record
from bty_live.protocol.wire import Action, machine_path
from bty_live.server.runner import ServerThread
from bty_live.server.ui.rows import row_id
from tests.netkit import MAC, TOKEN, api, enrol, inventory, make_config, request, running_server, served_images

ADMIN = "admin-token-fedcba9876543210"
OTHER = "52:54:00:99:99:99"


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return served_images(tmp_path)


@pytest.fixture
def server(tmp_path: Path, images: Path) -> Iterator[ServerThread]:
    config = dataclasses.replace(make_config(tmp_path, images), admin_token=ADMIN)
    with running_server(config) as running:
        yield running


def get(url: str, path: str, *, cookie: str | None = None, token: str | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, str, http.client.HTTPResponse]:
    sent = dict(headers or {})
    if cookie:
        sent["Cookie"] = cookie
    status, body, response = request(url, "GET", path, token=token, headers=sent)
    return status, body.decode(errors="replace"), response


def post_form(url: str, path: str, fields: dict[str, str] | list[tuple[str, str]], *, cookie: str | None = None,
              origin: str | None = None) -> tuple[int, str, http.client.HTTPResponse]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["Cookie"] = cookie
    if origin is not None:
        headers["Origin"] = origin
    try:
        conn.request("POST", path, body=urlencode(fields), headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace"), response
    finally:
        conn.close()


def log_in(url: str) -> tuple[str, str]:
    """(the Cookie header value, the CSRF token of the machines page)."""
    status, _, response = post_form(url, "/ui/login", {"token": ADMIN, "next": "/ui/"}, origin=url)
    assert status == 303, status
    cookie = response.getheader("Set-Cookie") or ""
    value = cookie.split(";")[0]
    _, page, _ = get(url, "/ui/", cookie=value)
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert match, page[:500]
    return value, match.group(1)


def report_progress(url: str, credential: str, run_id: str, done: int, total: int) -> None:
    event = Event(Phase.WRITE, Kind.PROGRESS, bytes_out=done, total=total, rate=100e6, eta=3.0)
    api(url, "POST", machine_path(MAC, "events"), {"run_id": run_id, "events": [event.to_dict()]},
        credential=credential)


# -- who may come in --------------------------------------------------------------------------------


def test_without_a_session_the_pages_send_the_browser_to_the_login_form(server: ServerThread) -> None:
    status, _, response = get(server.url, "/ui/", token=None)
    assert status == 303 and response.getheader("Location") == "/ui/login?next=/ui/"
    status, page, _ = get(server.url, "/ui/login", token=None)
    assert status == 200 and 'type="password"' in page


def test_the_agents_token_and_a_machines_credential_open_nothing(server: ServerThread) -> None:
    credential = enrol(server.url)
    for path in ("/ui/", "/ui/images", f"/ui/machines/{MAC}", "/ui/events"):
        status, body, _ = get(server.url, path, token=TOKEN)
        assert status == 403 and "agents' token" in body, (path, status)
        status, _, _ = request(server.url, "GET", path, token=None, credential=credential)
        assert status == 403, path
    status, page, _ = post_form(server.url, "/ui/login", {"token": TOKEN}, origin=server.url)
    assert status == 401 and "agents&#39; token" in page and "Set-Cookie" not in str(page)


def test_a_wrong_token_gets_no_cookie(server: ServerThread) -> None:
    status, page, response = post_form(server.url, "/ui/login", {"token": "x" * 30}, origin=server.url)
    assert status == 401 and "Wrong token" in page and response.getheader("Set-Cookie") is None


def test_the_session_cookie_is_httponly_samesite_strict_scoped_to_the_ui_and_signed(server: ServerThread) -> None:
    status, _, response = post_form(server.url, "/ui/login", {"token": ADMIN, "next": "/ui/images"},
                                    origin=server.url)
    assert status == 303 and response.getheader("Location") == "/ui/images"
    cookie = response.getheader("Set-Cookie") or ""
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/ui"} <= flags, cookie
    value = cookie.split(";")[0]
    assert get(server.url, "/ui/", cookie=value)[0] == 200
    name, _, signed = value.partition("=")
    sid, expires, signature = signed.split(".")
    forged = f"{name}={sid}.{int(expires) + 3600}.{signature}"  # a longer session, same signature
    assert get(server.url, "/ui/", cookie=forged)[0] == 303


def test_the_login_form_only_sends_you_on_within_the_ui(server: ServerThread) -> None:
    for target in ("https://evil.example/", "//evil.example/ui/", "/api/v1/machines"):
        _, _, response = post_form(server.url, "/ui/login", {"token": ADMIN, "next": target}, origin=server.url)
        assert response.getheader("Location") == "/ui/", target


def test_scripts_may_send_the_operators_token_as_bearer(server: ServerThread) -> None:
    status, page, _ = get(server.url, "/ui/", token=ADMIN)
    assert status == 200 and "Machines" in page


def test_without_the_flag_the_ui_is_off_and_says_how_to_turn_it_on(tmp_path: Path, images: Path) -> None:
    with running_server(make_config(tmp_path, images)) as running:
        for token in (None, TOKEN, ADMIN):
            status, body, _ = get(running.url, "/ui/", token=token)
            assert status == 404 and "--admin-token-file" in body


def test_bty_serve_refuses_the_agents_token_as_the_operators(tmp_path: Path, images: Path) -> None:
    agents, admin = tmp_path / "token", tmp_path / "admin"
    for path in (agents, admin):
        path.write_text(TOKEN + "\n")
        path.chmod(0o600)
    with pytest.raises(UsageError, match="agents' token"):
        serve.run(serve_args(tmp_path, images, agents, admin))


def serve_args(tmp_path: Path, images: Path, agents: Path, admin: Path) -> object:
    import argparse

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    serve.register(subparsers)
    return parser.parse_args(["serve", "--images", str(images), "--state", str(tmp_path / "state"),
                              "--listen", "127.0.0.1:0", "--token-file", str(agents),
                              "--admin-token-file", str(admin)])


# -- CSRF -------------------------------------------------------------------------------------------


def test_a_form_without_its_csrf_token_or_from_another_site_changes_nothing(server: ServerThread) -> None:
    enrol(server.url)
    cookie, csrf = log_in(server.url)
    fields = [("mac", MAC), ("action", "wait")]
    status, body, _ = post_form(server.url, "/ui/assign", fields, cookie=cookie)
    assert status == 403 and "CSRF" in body
    status, _, _ = post_form(server.url, "/ui/assign", [*fields, ("csrf", csrf)], cookie=cookie,
                             origin="http://evil.example")
    assert status == 403
    status, _, _ = post_form(server.url, "/ui/assign", [*fields, ("csrf", "0" * 64)], cookie=cookie)
    assert status == 403
    assert server.store.plan(MAC) is None
    status, _, _ = post_form(server.url, "/ui/logout", {}, cookie=cookie)
    assert status == 403 and get(server.url, "/ui/", cookie=cookie)[0] == 200


def test_logging_out_ends_the_session_for_every_copy_of_its_cookie(server: ServerThread) -> None:
    cookie, csrf = log_in(server.url)
    status, _, response = post_form(server.url, "/ui/logout", {"csrf": csrf}, cookie=cookie, origin=server.url)
    assert status == 303 and response.getheader("Location") == "/ui/login"
    assert (response.getheader("Set-Cookie") or "").startswith("bty_session=\"\"") or \
        "max-age=0" in (response.getheader("Set-Cookie") or "").lower()
    assert get(server.url, "/ui/", cookie=cookie)[0] == 303  # a copy kept elsewhere opens nothing either


# -- what the operator does ---------------------------------------------------------------------------


def test_assigning_an_image_to_two_machines_at_once_gives_each_a_plan(server: ServerThread) -> None:
    enrol(server.url)
    enrol(server.url, inventory(mac=OTHER), mac=OTHER)
    cookie, csrf = log_in(server.url)
    _, page, _ = get(server.url, "/ui/", cookie=cookie)
    assert MAC in page and OTHER in page and "QEMU Standard PC" in page
    fields = [("csrf", csrf), ("mac", MAC), ("mac", OTHER), ("action", "flash"), ("image", "demo.img"),
              ("disk", "serial=S1"), ("verify", "readback")]
    status, _, response = post_form(server.url, "/ui/assign", fields, cookie=cookie, origin=server.url)
    assert status == 303 and "assigned%20to%202" in (response.getheader("Location") or "")
    for mac in (MAC, OTHER):
        plan = server.store.plan(mac)
        assert plan is not None and plan.action == Action.FLASH and plan.image == "demo.img"
        assert plan.disk == "serial=S1"
    _, page, _ = get(server.url, "/ui/", cookie=cookie)
    assert "flash demo.img onto serial=S1" in page


def test_cancel_takes_the_selected_plans_away_and_says_which_had_none(server: ServerThread, tmp_path: Path) -> None:
    enrol(server.url)
    enrol(server.url, inventory(mac=OTHER), mac=OTHER)
    assert serve.main(["assign", "--state", str(tmp_path / "state"), MAC, "demo", "--disk", "serial=S1"]) == 0
    cookie, csrf = log_in(server.url)
    fields = [("csrf", csrf), ("mac", MAC), ("mac", OTHER), ("action", "cancel")]
    status, _, response = post_form(server.url, "/ui/assign", fields, cookie=cookie, origin=server.url)
    notice = unquote(response.getheader("Location") or "")
    assert status == 303 and "cancelled the plans of 1 machine(s)" in notice, notice
    assert f"machine {OTHER} has no plan to cancel" in notice, notice
    assert server.store.plan(MAC) is None
    machine = server.store.machine(MAC)
    assert machine is not None and machine.status == "cancelled"


def test_a_flash_without_a_disk_selector_is_refused_with_the_reason(server: ServerThread) -> None:
    enrol(server.url)
    cookie, csrf = log_in(server.url)
    fields = [("csrf", csrf), ("mac", MAC), ("action", "flash"), ("image", "demo.img")]
    _, _, response = post_form(server.url, "/ui/assign", fields, cookie=cookie, origin=server.url)
    assert "disk" in (response.getheader("Location") or "") and server.store.plan(MAC) is None


def test_a_machine_page_shows_its_inventory_and_its_runs_events(server: ServerThread, tmp_path: Path) -> None:
    credential = enrol(server.url)
    assert serve.main(["assign", "--state", str(tmp_path / "state"), MAC, "demo", "--disk", "serial=S1"]) == 0
    plan = server.store.plan(MAC)
    assert plan is not None
    report_progress(server.url, credential, plan.run_id, 256 << 20, 1 << 30)
    cookie, _ = log_in(server.url)
    status, page, _ = get(server.url, f"/ui/machines/{MAC}", cookie=cookie)
    assert status == 200 and "QEMU Standard PC" in page and "writing" in page
    assert 'value="25"' in page  # the progress bar: 256 MiB of 1 GiB
    assert get(server.url, f"/ui/machines/{OTHER}", cookie=cookie)[0] == 404


def test_the_images_page_shows_per_model_results_from_the_servers_ledger(server: ServerThread,
                                                                         images: Path) -> None:
    demo = api(server.url, "GET", "/api/v1/images")["images"][0]
    phases = {"write": PhaseResult("passed"), "verify": PhaseResult("passed")}
    for model, result in (("Dell R650", "passed"), ("HP Z2", "failed")):
        append_record(images / "ledger.jsonl", LedgerRecord(result=result, image_name="demo",  # type: ignore[arg-type]
                                                            image_blake3=demo["blake3"], machine_model=model,
                                                            phases=phases if result == "passed" else {}))
    status, page, _ = get(server.url, "/ui/images", token=ADMIN)
    assert status == 200
    assert "Dell R650: known-good (1 passed)" in page and "HP Z2: failed (0 passed, 1 failed)" in page

    (images / "ledger.jsonl").unlink()
    (images / "ledger.jsonl").mkdir()  # unreadable as a file: said on the page, the images still listed
    status, page, _ = get(server.url, "/ui/images", token=ADMIN)
    assert status == 200 and "the ledger cannot be read" in page and "demo.img" in page


def test_the_filter_finds_machines_by_any_cell(server: ServerThread) -> None:
    enrol(server.url)
    enrol(server.url, inventory(model="Dell R650", mac=OTHER), mac=OTHER)
    cookie, _ = log_in(server.url)
    _, page, _ = get(server.url, "/ui/?q=r650", cookie=cookie)
    assert OTHER in page and MAC not in page.split("<tbody")[1]


# -- live updates -----------------------------------------------------------------------------------


def read_events(response: http.client.HTTPResponse, until: str, timeout: float = 10.0) -> str:
    """The stream's text until `until` appears in it."""
    seen = ""
    deadline = time.monotonic() + timeout
    while until not in seen:
        assert time.monotonic() < deadline, f"{until!r} not in the stream: {seen[-2000:]!r}"
        line = response.fp.readline().decode()
        assert line, f"the stream ended before {until!r}: {seen[-2000:]!r}"
        seen += line
    return seen


def test_the_event_stream_redraws_a_machines_row_as_its_agent_reports_progress(
        server: ServerThread, tmp_path: Path) -> None:
    credential = enrol(server.url)
    assert serve.main(["assign", "--state", str(tmp_path / "state"), MAC, "demo", "--disk", "serial=S1"]) == 0
    plan = server.store.plan(MAC)
    assert plan is not None
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("GET", "/ui/events", headers={"Authorization": f"Bearer {ADMIN}"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type", "").startswith("text/event-stream")
        first = read_events(response, "event: table")
        assert MAC in read_events(response, "\n\n") or MAC in first
        report_progress(server.url, credential, plan.run_id, 512 << 20, 1 << 30)
        text = read_events(response, f"event: {row_id(MAC)}")
        text += read_events(response, "\n\n")
        assert 'value="50"' in text and re.search(r"^id: \d+$", text, re.M), text[-1500:]
    finally:
        conn.close()


def test_a_reconnect_with_last_event_id_gets_the_current_rows_again(server: ServerThread) -> None:
    enrol(server.url)
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("GET", "/ui/events", headers={"Authorization": f"Bearer {ADMIN}", "Last-Event-ID": "12"})
        response = conn.getresponse()
        assert response.status == 200
        assert MAC in read_events(response, "event: table") + read_events(response, "\n\n")
    finally:
        conn.close()


def test_a_machines_page_follows_its_event_log_from_where_it_left_off(server: ServerThread, tmp_path: Path) -> None:
    credential = enrol(server.url)
    assert serve.main(["assign", "--state", str(tmp_path / "state"), MAC, "demo", "--disk", "serial=S1"]) == 0
    plan = server.store.plan(MAC)
    assert plan is not None

    def say(message: str) -> None:
        event = Event(Phase.WRITE, Kind.INFO, message=message)
        api(server.url, "POST", machine_path(MAC, "events"), {"run_id": plan.run_id, "events": [event.to_dict()]},
            credential=credential)

    say("already on the page")
    shown = server.store.last_event_id()
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("GET", f"/ui/events?mac={MAC}&after={shown}", headers={"Authorization": f"Bearer {ADMIN}"})
        response = conn.getresponse()
        read_events(response, "event: table")
        say("news from the agent")
        read_events(response, "event: log")
        log = read_events(response, "\n\n")  # the log event's id and data lines
        assert "news from the agent" in log and "already on the page" not in log, log
    finally:
        conn.close()
