"""`bty serve`: the JSON API agents use, the token gate, iPXE scripts, SQLite state that survives
restarts, and the `assign` / `machines` shell commands. A real server on 127.0.0.1, no root."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bty_live import cli
from bty_live.commands import serve
from bty_live.errors import StateError
from bty_live.events import Event, Kind, Phase
from bty_live.flash.ledger import LedgerRecord, read_ledger
from bty_live.protocol.wire import Action, AgentPlan, machine_path
from bty_live.server.runner import ServerThread
from bty_live.server.state import DB_NAME, SCHEMA_VERSION, Store
from tests.netkit import MAC, TOKEN, api, enrol, inventory, make_config, request, running_server

IMAGE_BYTES = 3 << 20


@pytest.fixture
def images(tmp_path: Path) -> Path:
    directory = tmp_path / "images"
    directory.mkdir()
    image = directory / "demo.img"
    image.write_bytes(os.urandom(IMAGE_BYTES))
    assert cli.main(["images", "add", str(image)]) == 0
    (directory / "bare.img").write_bytes(os.urandom(1 << 20))  # no manifest: cannot be served
    return directory


@pytest.fixture
def server(tmp_path: Path, images: Path) -> Iterator[ServerThread]:
    with running_server(make_config(tmp_path, images, netboot=True)) as running:
        yield running


def event(phase: Phase, kind: Kind, **fields: Any) -> dict[str, Any]:
    return Event(phase, kind, **fields).to_dict()


def receipt(result: str = "ok", blake3: str = "ab" * 32) -> dict[str, Any]:
    return {"result": result, "image_name": "demo", "image_blake3": blake3, "target_path": "/dev/nvme0n1",
            "stream_check": "match", "readback_check": "match", "finished_at": "2026-11-25T12:00:00+00:00"}


def record(result: str = "passed", model: str = "QEMU Standard PC", blake3: str = "ab" * 32) -> dict[str, Any]:
    """A ledger record as the agent's engine writes it (bty_live.flash.ledger.make_record)."""
    phase = {"result": result, "seconds": 1.0}
    return LedgerRecord.from_dict({"result": result, "image_name": "demo", "image_blake3": blake3,
                                   "machine_model": model, "macs": ["52:54:00:aa:aa:aa"],
                                   "phases": {"write": phase, "verify": phase, "fixup": phase},
                                   "receipt": "/tmp/bty-agent-x/receipts/r.json"}).to_dict()


def assign(state: Path, *args: str) -> int:
    return serve.main(["assign", "--state", str(state), *args])


def plan_of(url: str, credential: str) -> AgentPlan:
    return AgentPlan.from_dict(api(url, "GET", machine_path(MAC, "plan"), credential=credential))


# -- the token gate ------------------------------------------------------------------------------


def test_requests_without_the_right_token_get_403_and_change_nothing(server: ServerThread, tmp_path: Path) -> None:
    assert assign(tmp_path / "state", MAC, "demo", "--disk", "serial=S1") == 0
    before = server.store.dump()
    attempts = [
        ("GET", machine_path(MAC, "plan"), None),
        ("POST", machine_path(MAC, "inventory"), inventory()),
        ("POST", machine_path(MAC, "events"), {"run_id": "x", "events": [event(Phase.DONE, Kind.END)]}),
        ("POST", machine_path(MAC, "receipt"), {"run_id": "x", "receipt": receipt()}),
        ("POST", machine_path(MAC, "ledger"), {"run_id": "x", "record": record()}),
        ("GET", "/api/v1/machines", None),
        ("GET", "/api/v1/receipts", None),
        ("GET", "/api/v1/ledger", None),
        ("GET", "/api/v1/images", None),
        ("GET", "/images/demo.img", None),
        ("GET", f"/ipxe/{MAC}", None),
    ]
    for method, path, body in attempts:
        for token in (None, "wrong-token-0123456789", TOKEN + "x", TOKEN[:-1]):
            status, payload, _ = request(server.url, method, path, token=token, body=body)
            assert status == 403, (method, path, token)
            assert b"wrong token" in payload
        status, _, _ = request(server.url, method, f"{path}?token=wrong-token-0123456789", token=None, body=body)
        assert status == 403
    assert server.store.dump() == before


def test_health_and_netboot_files_need_no_token(server: ServerThread) -> None:
    assert request(server.url, "GET", "/healthz", token=None)[:2] == (200, b'{"ok":true}')
    assert request(server.url, "GET", "/netboot/vmlinuz", token=None)[:2] == (200, b"kernel")
    assert request(server.url, "GET", "/netboot/initrd", token=None)[:2] == (200, b"initrd")
    assert request(server.url, "GET", "/netboot/other", token=None)[0] == 404


def test_token_in_the_query_string_is_accepted_for_ipxe(server: ServerThread) -> None:
    status, payload, _ = request(server.url, "GET", f"/ipxe/{MAC.replace(':', '-')}?token={TOKEN}", token=None)
    assert status == 200 and payload.startswith(b"#!ipxe\n")


# -- images --------------------------------------------------------------------------------------


def test_images_are_served_with_range_etag_and_head(server: ServerThread, images: Path) -> None:
    data = (images / "demo.img").read_bytes()
    status, payload, response = request(server.url, "GET", "/images/demo.img", headers={"Range": "bytes=1000-"})
    assert status == 206
    assert response.getheader("Content-Range") == f"bytes 1000-{IMAGE_BYTES - 1}/{IMAGE_BYTES}"
    assert payload == data[1000:]
    assert response.getheader("ETag") and response.getheader("Last-Modified")
    status, payload, response = request(server.url, "HEAD", "/images/demo.img")
    assert (status, payload, response.getheader("Content-Length")) == (200, b"", str(IMAGE_BYTES))
    assert request(server.url, "GET", "/images/..%2Fstate%2Fbty-serve.sqlite3")[0] == 404
    # a served image's manifest (the agent's block index); no other file, no manifest of an unserved one
    status, payload, _ = request(server.url, "GET", "/images/demo.img.toml")
    assert status == 200 and payload == (images / "demo.img.toml").read_bytes()
    assert request(server.url, "GET", "/images/bare.img.toml")[0] == 404
    assert request(server.url, "GET", "/images/..%2Fdemo.img.toml")[0] == 404


def test_image_list_says_which_images_can_be_assigned_and_why_not(server: ServerThread) -> None:
    found = {i["file_name"]: i for i in api(server.url, "GET", "/api/v1/images")["images"]}
    assert found["demo.img"]["problem"] is None and found["demo.img"]["size"] == IMAGE_BYTES
    assert "has no manifest" in found["bare.img"]["problem"]


# -- the agent's conversation --------------------------------------------------------------------


def test_a_machine_registers_waits_gets_its_flash_reports_and_then_boots_locally(server: ServerThread,
                                                                                 tmp_path: Path,
                                                                                 images: Path) -> None:
    url = server.url
    cred = enrol(url)
    waiting = plan_of(url, cred)
    assert waiting.action == Action.WAIT and "bty serve assign" in waiting.message

    assert assign(tmp_path / "state", MAC, "demo", "--disk", "serial=S1", "--verify", "stream") == 0
    plan = plan_of(url, cred)
    assert plan.action == Action.FLASH and plan.disk == "serial=S1" and plan.verify == "stream"
    assert plan.image is not None and plan.image.url == "/images/demo.img" and plan.image.size == IMAGE_BYTES
    manifest = (images / "demo.img.toml").read_text()
    assert f'blake3 = "{plan.image.blake3}"' in manifest

    run = plan.run_id
    api(url, "POST", machine_path(MAC, "events"), {"run_id": run, "events": [
        event(Phase.WRITE, Kind.START, total=IMAGE_BYTES),
        event(Phase.WRITE, Kind.PROGRESS, bytes_out=IMAGE_BYTES // 2, total=IMAGE_BYTES, rate=1e6)]},
        credential=cred)
    machine = api(url, "GET", f"/api/v1/machines/{MAC}")
    assert machine["status"] == "writing" and machine["detail"].startswith("50% of")
    assert machine["plan"]["state"] == "running"

    api(url, "POST", machine_path(MAC, "events"), {"run_id": run, "events": [event(Phase.DONE, Kind.END)]},
        credential=cred)
    api(url, "POST", machine_path(MAC, "receipt"), {"run_id": run, "receipt": receipt(blake3=plan.image.blake3)},
        credential=cred)

    machine = api(url, "GET", f"/api/v1/machines/{MAC}")
    assert machine["status"] == "done" and machine["plan"]["state"] == "done"
    assert machine["receipt"]["image_blake3"] == plan.image.blake3
    assert plan_of(url, cred).action == Action.LOCALBOOT
    events = api(url, "GET", machine_path(MAC, "events") + f"?run={run}")["events"]
    assert [(e["phase"], e["kind"]) for e in events] == [("write", "start"), ("write", "progress"), ("done", "end")]


def test_a_failed_run_is_answered_with_wait_until_the_machine_is_assigned_again(server: ServerThread,
                                                                                tmp_path: Path) -> None:
    cred = enrol(server.url)
    assert assign(tmp_path / "state", MAC, "demo", "--disk", "serial=S1") == 0
    run = plan_of(server.url, cred).run_id
    api(server.url, "POST", machine_path(MAC, "events"), {"run_id": run, "events": [
        event(Phase.FAILED, Kind.ERROR, message="selector serial=S1 matched no eligible disk", error="selector")]},
        credential=cred)

    answer = plan_of(server.url, cred)
    assert answer.action == Action.WAIT and "failed" in answer.message and "assign the machine again" in answer.message
    assert api(server.url, "GET", f"/api/v1/machines/{MAC}")["status"] == "failed"

    assert assign(tmp_path / "state", MAC, "demo", "--disk", "serial=S2") == 0
    again = plan_of(server.url, cred)
    assert again.action == Action.FLASH and again.run_id != run and again.disk == "serial=S2"


def test_events_receipts_and_records_of_another_run_are_refused_with_409_and_move_no_plan(
        server: ServerThread, tmp_path: Path) -> None:
    cred = enrol(server.url)
    assert assign(tmp_path / "state", MAC, "demo", "--disk", "serial=S1") == 0
    old = plan_of(server.url, cred).run_id
    assert assign(tmp_path / "state", MAC, "demo", "--disk", "serial=S2") == 0
    blake3 = plan_of(server.url, cred).image.blake3  # type: ignore[union-attr]
    before = server.store.dump()

    for what, body in (("events", {"run_id": old, "events": [event(Phase.FAILED, Kind.ERROR, message="boom")]}),
                       ("receipt", {"run_id": old, "receipt": receipt(blake3=blake3)}),
                       ("ledger", {"run_id": old, "record": record(blake3=blake3)}),
                       ("events", {"run_id": "never-assigned", "events": [event(Phase.WRITE, Kind.START)]})):
        status, payload, _ = request(server.url, "POST", machine_path(MAC, what), body=body, credential=cred)
        assert status == 409 and b"is not on run" in payload, (what, payload)

    assert server.store.dump() == before
    plan = api(server.url, "GET", f"/api/v1/machines/{MAC}")["plan"]
    assert plan["state"] == "pending" and plan["disk"] == "serial=S2"


def test_malformed_events_are_rejected_with_400_and_nothing_is_stored(server: ServerThread) -> None:
    cred = enrol(server.url)
    before = server.store.dump()
    status, payload, _ = request(server.url, "POST", machine_path(MAC, "events"), credential=cred,
                                 body={"run_id": "r", "events": [event(Phase.WRITE, Kind.START), {"phase": "nope"}]})
    assert status == 400 and b"not an engine event" in payload
    assert request(server.url, "POST", machine_path(MAC, "events"), body=[1, 2], credential=cred)[0] == 400
    assert request(server.url, "GET", "/api/v1/machines/not-a-mac/plan")[0] == 400
    assert server.store.dump() == before


# -- iPXE ----------------------------------------------------------------------------------------


def test_ipxe_script_boots_the_netboot_agent_with_server_token_and_bootif(server: ServerThread,
                                                                          tmp_path: Path) -> None:
    script = request(server.url, "GET", f"/ipxe/{MAC}")[1].decode()
    lines = script.splitlines()
    assert lines[0] == "#!ipxe"
    kernel = next(line for line in lines if line.startswith("kernel "))
    assert kernel.startswith(f"kernel {server.url}/netboot/vmlinuz ")
    assert f" bty.server={server.url} " in kernel and f" bty.token={TOKEN} " in kernel
    assert " BOOTIF=01-${mac:hexhyp} " in kernel and "console=ttyS0,115200" in kernel
    assert f"initrd --name initrd {server.url}/netboot/initrd" in lines
    assert lines[-1] == "boot"


def test_ipxe_script_exits_to_the_local_disk_once_the_flash_is_done(server: ServerThread, tmp_path: Path) -> None:
    cred = enrol(server.url)
    assert assign(tmp_path / "state", MAC, "demo", "--disk", "serial=S1") == 0
    plan = plan_of(server.url, cred)
    assert plan.image is not None
    api(server.url, "POST", machine_path(MAC, "receipt"),
        {"run_id": plan.run_id, "receipt": receipt(blake3=plan.image.blake3)}, credential=cred)
    script = request(server.url, "GET", f"/ipxe/{MAC}")[1].decode()
    assert script.splitlines()[0] == "#!ipxe" and script.splitlines()[-1] == "exit"
    assert "kernel" not in script


def test_ipxe_bootstrap_chains_to_the_per_mac_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert serve.main(["ipxe-bootstrap", "--url", "http://10.0.2.2:8080", "--token-file", str(token_file)]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#!ipxe\n")
    assert f"chain http://10.0.2.2:8080/ipxe/${{mac:hexhyp}}?token={TOKEN} || goto failed" in script


# -- state ---------------------------------------------------------------------------------------


def test_state_survives_a_server_restart(tmp_path: Path, images: Path) -> None:
    config = make_config(tmp_path, images)
    with running_server(config) as first:
        cred = enrol(first.url)
        assert assign(tmp_path / "state", MAC, "demo", "--disk", "serial=S1") == 0
        plan = plan_of(first.url, cred)
        run = plan.run_id
        assert plan.image is not None
        api(first.url, "POST", machine_path(MAC, "receipt"),
            {"run_id": run, "receipt": receipt(blake3=plan.image.blake3)}, credential=cred)
    with running_server(config) as second:  # the credential survives the restart too
        assert second.url != "" and plan_of(second.url, cred).action == Action.LOCALBOOT
        machine = api(second.url, "GET", f"/api/v1/machines/{MAC}")
        assert machine["model"] == "QEMU Standard PC" and machine["receipt"]["run_id"] == run


def test_state_records_its_schema_version_and_refuses_a_newer_one(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        assert store.schema_version() == SCHEMA_VERSION
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(StateError, match=r"newer than this bty understands .*upgrade bty-live"):
        Store(tmp_path)


# -- the shell commands --------------------------------------------------------------------------


def test_assign_and_machines_round_trip_through_the_state(server: ServerThread, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    cred = enrol(server.url)
    capsys.readouterr()

    assert assign(state, MAC.upper().replace(":", "-"), "demo", "--disk", "path=/dev/nvme0n1") == 0
    assert capsys.readouterr().out.startswith(f"{MAC}: flash demo.img onto path=/dev/nvme0n1 (run ")

    assert serve.main(["machines", "--state", str(state)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["MAC", "MODEL", "STATUS", "PLAN"]
    assert table[1].startswith(MAC) and "flash demo.img -> path=/dev/nvme0n1 [pending]" in table[1]

    plan = plan_of(server.url, cred)
    run = plan.run_id
    assert plan.image is not None
    api(server.url, "POST", machine_path(MAC, "receipt"),
        {"run_id": run, "receipt": receipt(blake3=plan.image.blake3)}, credential=cred)
    assert serve.main(["machines", "--state", str(state), "--json"]) == 0
    [machine] = json.loads(capsys.readouterr().out)["machines"]
    assert machine["mac"] == MAC and machine["status"] == "done"
    assert machine["receipt"]["run_id"] == run and machine["receipt"]["receipt"]["target_path"] == "/dev/nvme0n1"
    assert machine["inventory"]["disks"][0]["serial"] == "S1"


def test_assign_refuses_images_the_server_cannot_offer_and_says_why(server: ServerThread, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    assert assign(state, MAC, "bare", "--disk", "serial=S1") == 3
    assert "has no manifest" in capsys.readouterr().err
    assert assign(state, MAC, "nosuch", "--disk", "serial=S1") == 3
    assert "not found" in capsys.readouterr().err
    assert assign(state, MAC, "demo") == 2
    assert "--disk SELECTOR" in capsys.readouterr().err
    assert assign(state, "not-a-mac", "demo", "--disk", "serial=S1") == 2
    assert server.store.plan(MAC) is None


def test_cancel_on_the_shell_takes_plans_away_and_the_agent_waits(server: ServerThread, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    cred = enrol(server.url)
    assert assign(state, MAC, "demo", "--disk", "serial=S1") == 0
    run = plan_of(server.url, cred).run_id
    capsys.readouterr()
    assert serve.main(["cancel", "--state", str(state), MAC, "52:54:00:99:99:99"]) == 2  # the second has none
    out, err = capsys.readouterr()
    assert out.startswith(f"{MAC}: run {run} cancelled") and "52:54:00:99:99:99 has no plan to cancel" in err
    assert plan_of(server.url, cred).action == Action.WAIT
    # whatever the agent still reports about the old run is refused: that is what stops it
    event = Event(Phase.WRITE, Kind.PROGRESS, bytes_out=1, total=2)
    status, _, _ = request(server.url, "POST", machine_path(MAC, "events"), credential=cred,
                           body={"run_id": run, "events": [event.to_dict()]})
    assert status == 409


def test_assign_other_actions_answer_the_agent_directly(server: ServerThread, tmp_path: Path) -> None:
    cred = enrol(server.url)
    assert assign(tmp_path / "state", MAC, "--action", "tui") == 0
    assert plan_of(server.url, cred).action == Action.TUI
    assert assign(tmp_path / "state", MAC, "--action", "localboot") == 0
    assert plan_of(server.url, cred).action == Action.LOCALBOOT
    assert "exit" in request(server.url, "GET", f"/ipxe/{MAC}")[1].decode().splitlines()


def test_the_tune_field_travels_to_the_agent_defaulting_to_the_manifests_task(server: ServerThread, tmp_path: Path,
                                                                             images: Path) -> None:
    state = tmp_path / "state"
    cred = enrol(server.url)
    manifest = images / "demo.img.toml"
    manifest.write_text(manifest.read_text() + '\n[tune]\ntask = "demo.task.yaml"\n')
    assert assign(state, MAC, "demo", "--disk", "serial=S1") == 0
    assert plan_of(server.url, cred).tune == "demo.task.yaml"
    assert assign(state, MAC, "demo", "--disk", "serial=S1", "--tune", "other.task.yaml") == 0
    assert plan_of(server.url, cred).tune == "other.task.yaml"
    assert assign(state, MAC, "demo", "--disk", "serial=S1", "--tune", "off") == 0
    assert plan_of(server.url, cred).tune is None


# -- the known-good ledger -----------------------------------------------------------------------


def flash_plan(url: str, state: Path, credential: str) -> AgentPlan:
    """A new flash assignment for MAC, as its agent sees it."""
    assert assign(state, MAC, "demo", "--disk", "serial=S1") == 0
    plan = plan_of(url, credential)
    assert plan.action == Action.FLASH and plan.image is not None
    return plan


def test_agents_ledger_records_are_appended_to_the_images_ledger_that_bty_ledger_reads(
        server: ServerThread, images: Path, tmp_path: Path) -> None:
    cred = enrol(server.url)
    first_run = flash_plan(server.url, tmp_path / "state", cred)
    assert first_run.image is not None
    api(server.url, "POST", machine_path(MAC, "ledger"),
        {"run_id": first_run.run_id, "record": record(blake3=first_run.image.blake3)}, credential=cred)
    second_run = flash_plan(server.url, tmp_path / "state", cred)
    api(server.url, "POST", machine_path(MAC, "ledger"),
        {"run_id": second_run.run_id, "record": record("failed", "Other Box", blake3=first_run.image.blake3)},
        credential=cred)

    on_disk = read_ledger(images / "ledger.jsonl")
    assert [(r.result, r.machine_model) for r in on_disk.records] == [("passed", "QEMU Standard PC"),
                                                                      ("failed", "Other Box")]
    first = on_disk.records[0]
    assert MAC in first.macs and first.receipt == f"bty serve: {MAC} run {first_run.run_id}"
    answer = api(server.url, "GET", "/api/v1/ledger?model=qemu*")
    assert [r["machine_model"] for r in answer["records"]] == ["QEMU Standard PC"]
    assert [(c["model"], c["known_good"]) for c in answer["known_good"]] == [("QEMU Standard PC", True)]


def test_a_malformed_ledger_record_is_rejected_and_nothing_is_appended(server: ServerThread, images: Path,
                                                                       tmp_path: Path) -> None:
    cred = enrol(server.url)
    run = flash_plan(server.url, tmp_path / "state", cred).run_id
    status, payload, _ = request(server.url, "POST", machine_path(MAC, "ledger"), credential=cred,
                                 body={"run_id": run, "record": {"result": "maybe", "image_name": "demo"}})
    assert status == 400 and b"not a ledger record" in payload
    assert not (images / "ledger.jsonl").exists()


def test_a_ledger_that_cannot_be_written_is_a_503_the_agent_may_retry(tmp_path: Path, images: Path) -> None:
    config = make_config(tmp_path, images)
    blocked = tmp_path / "not-a-file"
    blocked.mkdir()
    with running_server(replace(config, ledger=blocked)) as running:
        cred = enrol(running.url)
        plan = flash_plan(running.url, tmp_path / "state", cred)
        assert plan.image is not None
        status, payload, _ = request(running.url, "POST", machine_path(MAC, "ledger"), credential=cred,
                                     body={"run_id": plan.run_id, "record": record(blake3=plan.image.blake3)})
    assert status == 503 and b"cannot be opened" in payload
