"""What the machines page shows of a machine, from the store's records (pure), how often the
live views compute it, and what the images page shows of an image from the ledger."""

from __future__ import annotations

import time

from bty_live.flash.ledger import LedgerRecord, PhaseResult
from bty_live.protocol.wire import Action
from bty_live.server.state import MachineRecord, PlanRecord, PlanState, ReceiptRecord, StoredEvent
from bty_live.server.ui.rows import image_rows, machine_row, row_id, seen_at
from bty_live.server.ui.views import SharedRows

MAC = "52:54:00:12:34:56"
NOW = time.mktime((2026, 12, 3, 13, 0, 0, 0, 0, -1))


def machine(status: str = "writing", detail: str = "") -> MachineRecord:
    inventory = {"machine": {"serial": "SN1"}, "disks": [{"name": "nvme0n1", "size": 512 << 30}]}
    return MachineRecord(mac=MAC, model="Dell R650", inventory=inventory, first_seen=NOW - 60, last_seen=NOW - 5,
                         status=status, detail=detail)


def plan() -> PlanRecord:
    return PlanRecord(mac=MAC, run_id="r1", action=Action.FLASH, image="demo.img", disk="tran=nvme",
                      verify="readback", tune=None, state=PlanState.RUNNING, detail="", created_at=NOW - 60,
                      updated_at=NOW - 5)


def progress(done: int, total: int) -> StoredEvent:
    return StoredEvent(id=7, run_id="r1", received_at=NOW, event={"phase": "write", "kind": "progress",
                                                                  "bytes_out": done, "total": total,
                                                                  "rate": 250e6, "eta": 12.0})


def test_a_writing_machine_shows_phase_percent_rate_and_time_left() -> None:
    row = machine_row(machine(), plan(), None, progress(1 << 30, 4 << 30), NOW)
    assert row.progress is not None and row.progress.percent == 25
    assert (row.progress.phase, row.progress.done, row.progress.total) == ("write", "1 GiB", "4 GiB")
    assert row.progress.rate == "250 MB/s" and row.progress.eta == "12.0 s"
    assert row.plan == "flash demo.img onto tran=nvme (running)"
    assert (row.serial, row.disks) == ("SN1", "nvme0n1 512 GiB")


def test_no_bar_once_the_machine_is_no_longer_busy_or_before_the_first_progress() -> None:
    assert machine_row(machine("flashed"), plan(), None, progress(4, 4), NOW).progress is None
    assert machine_row(machine(), plan(), None, None, NOW).progress is None
    assert machine_row(machine(), plan(), None, progress(0, 0), NOW).progress is None


def test_the_last_result_names_the_image_and_when() -> None:
    receipt = ReceiptRecord(id=1, mac=MAC, run_id="r0", received_at=NOW - 3600, result="ok", image_name="demo",
                            image_blake3="ab" * 32, receipt={})
    assert machine_row(machine("flashed"), None, receipt, None, NOW).last_result == "ok: demo (12:00:00)"


def test_last_seen_is_a_clock_time_so_an_idle_row_does_not_change_every_second() -> None:
    assert seen_at(NOW - 5, NOW) == seen_at(NOW - 5, NOW + 30) == "12:59:55"
    assert seen_at(NOW - 3 * 86400, NOW) == "2026-11-30 13:00"


def test_row_ids_are_html_ids_and_sse_event_names() -> None:
    assert row_id("52:54:00:AB:cd:01") == "m-525400abcd01"


def test_live_views_share_one_computation_per_interval() -> None:
    calls = []
    shared = SharedRows(lambda: calls.append(1) or [], max_age=60)
    for _ in range(5):
        shared.get()
    assert len(calls) == 1
    expired = SharedRows(lambda: calls.append(1) or [], max_age=0)
    expired.get()
    expired.get()
    assert len(calls) == 3


# -- the images page ------------------------------------------------------------------------------


def run(result: str, model: str, blake3: str, *, verified: bool = True) -> LedgerRecord:
    phase = "passed" if result == "passed" and verified else "failed"
    return LedgerRecord(result=result, image_name="demo", image_blake3=blake3, machine_model=model,  # type: ignore[arg-type]
                        phases={"write": PhaseResult("passed"), "verify": PhaseResult(phase)})


def served(name: str, blake3: str, problem: str | None = None) -> dict[str, object]:
    return {"name": name, "file_name": name + ".img.zst", "size": 2 << 30, "blake3": blake3, "problem": problem}


def test_each_image_lists_the_models_it_ran_on_known_good_first_by_its_manifest_digest() -> None:
    demo, other = "d" * 64, "0" * 64
    records = [run("failed", "HP Z2", demo), run("passed", "Dell R650", demo), run("passed", "dell r650", demo),
               run("failed", "Dell R650", demo), run("passed", "Lenovo M70", other)]
    [row, unused] = image_rows([served("demo", demo), served("fresh", "f" * 64)], records)
    assert [(m.model, m.passed, m.failed, m.known_good) for m in row.models] == [
        ("Dell R650", 2, 1, True),  # one model whatever its case, known-good once any run was
        ("HP Z2", 0, 1, False),
    ]
    assert row.size == "2 GiB" and unused.models == ()  # a run of another digest counts for nothing


def test_an_image_the_server_cannot_offer_shows_why_and_has_no_results() -> None:
    [row] = image_rows([{"name": "bare", "file_name": "bare.img", "problem": "no manifest"}],
                       [run("passed", "Dell R650", "d" * 64)])
    assert row.problem == "no manifest" and row.blake3 == "" and row.models == () and row.size == "-"
