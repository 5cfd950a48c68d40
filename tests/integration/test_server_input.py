"""`bty serve` against hostile input, on a real server on 127.0.0.1: images only from the images
directory and only with a manifest, strict and bounded JSON bodies, bounded query parameters,
log lines that cannot be forged, bounded events, and no rows for machines nobody knows."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.events import Event, Kind, Phase
from bty_live.protocol.wire import Action, machine_path
from bty_live.server.app import MAX_BODY, MAX_DEPTH
from bty_live.server.runner import ServerThread
from bty_live.server.service import Deployments
from bty_live.server.state import MAX_EVENTS_PER_RUN
from tests.netkit import MAC, TOKEN, api, enrol, inventory, make_config, request, running_server, served_images


@pytest.fixture
def images(tmp_path: Path) -> Path:
    directory = served_images(tmp_path)
    (directory / "bare.img").write_bytes(os.urandom(1 << 20))  # no manifest
    return directory


@pytest.fixture
def server(tmp_path: Path, images: Path) -> Iterator[ServerThread]:
    with running_server(make_config(tmp_path, images)) as running:
        yield running


def raw_exchange(server: ServerThread, head: bytes, body: Iterator[bytes]) -> bytes:
    """Send `head`, then `body` from a thread (it may be cut off), and return what the server answers."""
    sock = socket.create_connection(server.socket.getsockname()[:2], timeout=10)

    def send() -> None:
        try:
            sock.sendall(head)
            for chunk in body:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed: that is the point

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    finally:
        sock.close()
    return answer


def post_head(path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


# -- images ----------------------------------------------------------------------------------------


def test_a_symlink_out_of_the_images_directory_is_not_served(server: ServerThread, images: Path,
                                                            tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$secret-hash:19000:0:99999:7:::\n" * 1000)
    (images / "shadow.img").symlink_to(secret)
    assert cli.main(["images", "add", str(images / "shadow.img")]) == 0  # even with a manifest beside it

    status, payload, _ = request(server.url, "GET", "/images/shadow.img")

    assert status == 404 and b"secret-hash" not in payload


def test_a_symlink_inside_the_images_directory_is_served(server: ServerThread, images: Path) -> None:
    (images / "latest.img").symlink_to("demo.img")
    assert cli.main(["images", "add", str(images / "latest.img")]) == 0
    status, payload, _ = request(server.url, "GET", "/images/latest.img")
    assert status == 200 and payload == (images / "demo.img").read_bytes()


def test_an_image_without_a_manifest_is_not_served(server: ServerThread) -> None:
    status, payload, _ = request(server.url, "GET", "/images/bare.img")
    assert status == 404 and b"no image" in payload
    assert request(server.url, "GET", "/images/demo.img")[0] == 200


# -- JSON bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_refused_and_the_listings_keep_working(server: ServerThread,
                                                                      number: bytes) -> None:
    body = b'{"mac": "%s", "machine": {"model": "x"}, "disks": [], "t": %s}' % (MAC.encode(), number)
    status, payload, _ = request(server.url, "POST", machine_path(MAC, "inventory"), raw=body)
    assert status == 400 and b"not JSON the server takes" in payload

    credential = enrol(server.url)
    Deployments(server.store, None).assign(MAC, Action.WAIT)
    run = server.store.plan(MAC).run_id  # type: ignore[union-attr]
    event = b'{"phase": "write", "kind": "progress", "bytes_out": 1, "rate": %s}' % number
    status, _, _ = request(server.url, "POST", machine_path(MAC, "events"), credential=credential,
                           raw=b'{"run_id": "%s", "events": [%s]}' % (run.encode(), event))
    assert status == 400

    assert request(server.url, "GET", "/api/v1/machines")[0] == 200
    assert request(server.url, "GET", machine_path(MAC, "events"))[0] == 200


def test_very_deep_json_is_a_400_not_a_500(server: ServerThread) -> None:
    for depth in (MAX_DEPTH + 1, 100_000):
        body = b'{"mac": "x", "deep": ' + b"[" * depth + b"]" * depth + b"}"
        status, payload, _ = request(server.url, "POST", machine_path(MAC, "inventory"), raw=body)
        assert status == 400 and b"nests deeper than" in payload, depth
    assert server.store.machine(MAC) is None


def test_a_content_length_over_the_limit_is_refused_before_the_body_is_read(server: ServerThread) -> None:
    head = post_head(machine_path(MAC, "inventory"), f"Content-Length: {300 << 20}\r\n")

    answer = raw_exchange(server, head, iter([b"{" + b" " * 65536]))  # the rest never comes

    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


def test_a_chunked_body_is_cut_off_at_the_limit(server: ServerThread) -> None:
    chunk = b" " * (1 << 20)
    chunks = (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2 * MAX_BODY // len(chunk)))

    answer = raw_exchange(server, post_head(machine_path(MAC, "inventory"), "Transfer-Encoding: chunked\r\n"),
                          chunks)  # no last chunk: the server must stop reading by itself

    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


def test_a_huge_after_is_a_400_not_a_500(server: ServerThread) -> None:
    for after in ("9" * 30, "9223372036854775808", "%D9%A1%D9%A2"):  # the last: Arabic-Indic digits
        status, payload, _ = request(server.url, "GET", machine_path(MAC, "events") + f"?after={after}")
        assert status == 400 and b"non-negative integer" in payload, after
    assert request(server.url, "GET", machine_path(MAC, "events") + "?after=12")[0] == 200


# -- logs ------------------------------------------------------------------------------------------


def test_a_newline_in_a_path_cannot_forge_a_log_line(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bty.serve")

    request(server.url, "GET", "/healthz%0a10.0.0.1%20POST%20/api/v1/machines/forged/receipt%20200%0d")

    lines = [r.getMessage() for r in caplog.records if r.name == "bty.serve"]
    assert lines and all("\n" not in line and "\r" not in line for line in lines)
    assert any("/healthz\\x0a10.0.0.1 POST /api/v1/machines/forged/receipt 200\\x0d" in line for line in lines)


# -- events ----------------------------------------------------------------------------------------


def test_events_are_bounded_per_run(server: ServerThread, tmp_path: Path) -> None:
    credential = enrol(server.url)
    run = Deployments(server.store, None).assign(MAC, Action.WAIT).run_id
    batch = [Event(Phase.WRITE, Kind.INFO, message=f"line {i}").to_dict() for i in range(1000)]
    for _ in range(MAX_EVENTS_PER_RUN // 1000 + 2):
        api(server.url, "POST", machine_path(MAC, "events"), {"run_id": run, "events": batch}, credential=credential)

    with server.store.transaction() as db:
        (count,) = db.execute("SELECT COUNT(*) FROM events WHERE mac = ?", (MAC,)).fetchone()
    assert count == MAX_EVENTS_PER_RUN
    newest = server.store.events(MAC, run, after=0, limit=MAX_EVENTS_PER_RUN)[-1]
    assert newest.event["message"] == "line 999"


def test_events_for_a_run_the_machine_is_not_on_are_not_kept(server: ServerThread) -> None:
    credential = enrol(server.url)
    Deployments(server.store, None).assign(MAC, Action.WAIT)
    before = server.store.dump()
    for run in ("made-up-run", "another-one"):
        status, payload, _ = request(server.url, "POST", machine_path(MAC, "events"), credential=credential,
                                     body={"run_id": run, "events": [Event(Phase.WRITE, Kind.START).to_dict()]})
        assert status == 409 and b"is not on run" in payload
    assert server.store.dump() == before


# -- unknown machines ------------------------------------------------------------------------------


def test_a_plan_request_for_an_unknown_mac_creates_no_machine(server: ServerThread) -> None:
    before = server.store.dump()
    status, _, _ = request(server.url, "GET", machine_path("52:54:00:ff:ff:ff", "plan"))
    assert status == 403
    assert server.store.dump() == before and server.store.machines() == []


def test_a_known_machine_still_registers_with_its_inventory(server: ServerThread) -> None:
    enrol(server.url, inventory("Some Box"))
    machine = server.store.machine(MAC)
    assert machine is not None and machine.model == "Some Box" and machine.status == "new"
