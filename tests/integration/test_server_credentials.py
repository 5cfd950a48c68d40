"""Per-machine credentials on a real `bty serve` on 127.0.0.1: the shared token every netbooted
machine holds only enrols; each machine's first inventory gets a credential bound to its MAC
(returned once, stored hashed), every later request about that MAC must carry it, and the
token alone (or another machine's credential) is refused with 403 and changes nothing.
Re-enrolment only once per assignment or after `bty serve reset MAC`. A receipt or ledger
record must name the digest of the image assigned to the run."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bty_live.commands import serve
from bty_live.events import Event, Kind, Phase
from bty_live.flash.ledger import LedgerRecord
from bty_live.protocol.wire import Action, AgentPlan, machine_path
from bty_live.server.runner import ServerThread
from tests.netkit import MAC, TOKEN, api, enrol, inventory, make_config, request, running_server, served_images

OTHER = "52:54:00:99:99:99"


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return served_images(tmp_path)


@pytest.fixture
def server(tmp_path: Path, images: Path) -> Iterator[ServerThread]:
    with running_server(make_config(tmp_path, images, netboot=True)) as running:
        yield running


def assign(tmp_path: Path, mac: str = MAC) -> int:
    return serve.main(["assign", "--state", str(tmp_path / "state"), mac, "demo", "--disk", "serial=S1"])


def plan_of(url: str, credential: str, mac: str = MAC) -> AgentPlan:
    return AgentPlan.from_dict(api(url, "GET", machine_path(mac, "plan"), credential=credential))


def receipt(blake3: str) -> dict[str, Any]:
    return {"result": "ok", "image_name": "demo", "image_blake3": blake3, "target_path": "/dev/nvme0n1",
            "readback_check": "match"}


def record(blake3: str) -> dict[str, Any]:
    phase = {"result": "passed", "seconds": 1.0}
    return LedgerRecord.from_dict({"result": "passed", "image_name": "demo", "image_blake3": blake3,
                                   "machine_model": "Invented Box", "macs": [MAC],
                                   "phases": {"write": phase, "verify": phase, "fixup": phase}}).to_dict()


def ipxe_boots_the_agent(server: ServerThread, mac: str = MAC) -> bool:
    return "kernel " in request(server.url, "GET", f"/ipxe/{mac}")[1].decode()


# -- enrolment -------------------------------------------------------------------------------------


def test_the_first_inventory_enrols_and_the_credential_is_returned_once_and_stored_hashed(
        server: ServerThread) -> None:
    credential = enrol(server.url)

    again = api(server.url, "POST", machine_path(MAC, "inventory"), inventory(), credential=credential)
    assert again == {"ok": True}  # no second credential
    dump = "\n".join(server.store.dump())
    assert credential not in dump and hashlib.sha256(credential.encode()).hexdigest() in dump
    status, payload, _ = request(server.url, "POST", machine_path(MAC, "inventory"), body=inventory())
    assert status == 403 and b"enrolled already" in payload and b"bty serve reset" in payload


def test_the_shared_token_alone_or_another_machines_credential_is_refused_and_nothing_changes(
        server: ServerThread, tmp_path: Path, images: Path) -> None:
    mine = enrol(server.url)
    theirs = enrol(server.url, mac=OTHER)
    assert assign(tmp_path) == 0
    plan = plan_of(server.url, mine)
    assert plan.image is not None and plan.run_id is not None
    before = server.store.dump()
    forged = Event(Phase.FAILED, Kind.ERROR, message="forged").to_dict()
    attempts = [
        ("GET", machine_path(MAC, "plan"), None),
        ("POST", machine_path(MAC, "inventory"), inventory()),
        ("POST", machine_path(MAC, "events"), {"run_id": plan.run_id, "events": [forged]}),
        ("POST", machine_path(MAC, "receipt"), {"run_id": plan.run_id, "receipt": receipt(plan.image.blake3)}),
        ("POST", machine_path(MAC, "ledger"), {"run_id": plan.run_id, "record": record(plan.image.blake3)}),
    ]
    for method, path, body in attempts:
        for credential in (None, theirs, "x" * 43, mine[:-1]):
            if credential is None and path.endswith("inventory"):
                continue  # the token alone on an inventory is an enrolment attempt: refused above
            status, payload, _ = request(server.url, method, path, body=body, credential=credential)
            assert status == 403 and b"credential" in payload, (method, path, credential, payload)

    assert server.store.dump() == before
    assert not (images / "ledger.jsonl").exists()
    assert ipxe_boots_the_agent(server)  # no forged receipt turned the machine's script into `exit`


def test_another_machines_replayed_receipt_is_refused_and_the_plan_stays_open(
        server: ServerThread, tmp_path: Path) -> None:
    mine = enrol(server.url)
    attacker = enrol(server.url, mac=OTHER)
    assert assign(tmp_path) == 0
    plan = plan_of(server.url, mine)
    assert plan.image is not None

    status, _, _ = request(server.url, "POST", machine_path(MAC, "receipt"), credential=attacker,
                           body={"run_id": plan.run_id, "receipt": receipt(plan.image.blake3)})

    assert status == 403
    stored = server.store.plan(MAC)
    assert stored is not None and stored.state == "pending" and server.store.last_receipt(MAC) is None
    assert ipxe_boots_the_agent(server)


def test_a_receipt_or_record_must_name_the_assigned_images_digest(server: ServerThread, tmp_path: Path,
                                                                  images: Path) -> None:
    credential = enrol(server.url)
    assert assign(tmp_path) == 0
    plan = plan_of(server.url, credential)
    assert plan.image is not None
    before = server.store.dump()

    for what, body in (("receipt", {"run_id": plan.run_id, "receipt": receipt("ab" * 32)}),
                       ("ledger", {"run_id": plan.run_id, "record": record("ab" * 32)})):
        status, payload, _ = request(server.url, "POST", machine_path(MAC, what), body=body, credential=credential)
        assert status == 400 and b"is not that of demo.img" in payload, payload

    assert server.store.dump() == before and not (images / "ledger.jsonl").exists()
    api(server.url, "POST", machine_path(MAC, "receipt"),
        {"run_id": plan.run_id, "receipt": receipt(plan.image.blake3)}, credential=credential)
    assert plan_of(server.url, credential).action == Action.LOCALBOOT


# -- re-enrolment ----------------------------------------------------------------------------------


def test_a_machine_enrols_again_only_after_a_reset_and_its_old_credential_is_refused(
        server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = enrol(server.url)
    assert request(server.url, "POST", machine_path(MAC, "inventory"), body=inventory())[0] == 403

    assert serve.main(["reset", "--state", str(tmp_path / "state"), MAC.upper()]) == 0
    assert capsys.readouterr().out.startswith(f"{MAC}: may enrol again")

    assert request(server.url, "GET", machine_path(MAC, "plan"), credential=old)[0] == 403
    new = enrol(server.url)
    assert new != old and plan_of(server.url, new).action == Action.WAIT
    assert request(server.url, "POST", machine_path(MAC, "inventory"), body=inventory())[0] == 403


def test_a_new_assignment_lets_a_rebooted_machine_enrol_once(server: ServerThread, tmp_path: Path) -> None:
    first = enrol(server.url)
    assert assign(tmp_path) == 0  # the machine will reboot into the netboot system to carry it out

    second = enrol(server.url)  # its agent starts with the shared token only

    assert plan_of(server.url, second).action == Action.FLASH
    assert request(server.url, "GET", machine_path(MAC, "plan"), credential=first)[0] == 403
    assert request(server.url, "POST", machine_path(MAC, "inventory"), body=inventory())[0] == 403


def test_ipxe_and_the_operators_listings_still_take_the_shared_token(server: ServerThread) -> None:
    enrol(server.url)
    assert request(server.url, "GET", f"/ipxe/{MAC}?token={TOKEN}", token=None)[0] == 200
    for path in ("/api/v1/machines", f"/api/v1/machines/{MAC}", "/api/v1/receipts", "/api/v1/images",
                 "/images/demo.img"):
        assert request(server.url, "GET", path)[0] == 200, path
