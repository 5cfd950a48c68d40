"""The known-good ledger: append-only JSON lines that survive power cuts, and what is known-good."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.commands import ledger as ledger_command
from bty_live.commands import tui as tui_command
from bty_live.errors import DigestMismatchError
from bty_live.events import Event, Kind, Phase
from bty_live.flash.known_good import entry_badge, known_good_for_entry
from bty_live.flash.ledger import (
    LedgerRecord,
    PhaseResult,
    PhaseTracker,
    append_record,
    default_ledger_path,
    filter_records,
    known_good,
    known_good_models,
    make_record,
    read_ledger,
    summarize,
)
from bty_live.flash.receipt import Receipt
from bty_live.image.catalog import describe_image
from bty_live.system.machine import MachineIdentity, Nic, read_machine_identity
from bty_live.tui.text import image_prompt
from bty_live.tune import TuneError, TuneResult
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image

IMAGE = "a" * 64
OTHER_IMAGE = "b" * 64
TASK = "c" * 64
ALL_PASSED = {name: PhaseResult("passed", 1.5) for name in ("write", "verify", "fixup", "tune")}


def record(result: str = "passed", *, image: str = IMAGE, task: str | None = TASK, model: str = "Dell R650",
           phases: dict[str, PhaseResult] | None = None, name: str = "demo", **extra: object) -> LedgerRecord:
    return LedgerRecord(result=result, image_name=name, image_blake3=image, task="demo.task.yaml" if task else None,  # type: ignore[arg-type]
                        task_digest=task, machine_model=model, phases=ALL_PASSED if phases is None else phases,
                        **extra)  # type: ignore[arg-type]


def bty_ledger(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="bty")
    ledger_command.register(parser.add_subparsers())
    args = parser.parse_args(["ledger", *argv])
    code: int = args.func(args)
    return code


# -- writing and reading ----------------------------------------------------------------------------


def test_a_record_appended_reads_back_equal(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    first = record(macs=("52:54:00:12:34:56",), disk_model="QEMU HARDDISK", disk_serial="D1", machine_serial="S1",
                   error=None, receipt="/r.json", report="/reports/x")
    second = record("failed", error="tuning step 'keys' failed", error_kind="tune",
                    phases={"write": PhaseResult("passed", 2.0), "tune": PhaseResult("failed")})

    append_record(path, first)
    append_record(path, second)

    ledger = read_ledger(path)
    assert ledger.records == (first, second)
    assert ledger.skipped == ()
    assert path.read_bytes().count(b"\n") == 2


def test_every_append_is_one_write_of_a_whole_line_then_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.jsonl"
    append_record(path, record())
    calls: list[str] = []
    real_write, real_fsync = os.write, os.fsync

    def write(fd: int, data: bytes) -> int:
        calls.append(f"write {len(data)} bytes ending {data[-1:]!r}")
        return real_write(fd, data)

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    append_record(path, record("failed"))

    assert len(calls) == 2 and calls[0].startswith("write") and calls[0].endswith("b'\\n'")
    assert calls[1] == "fsync"


def test_a_record_cut_short_at_the_end_is_skipped_and_reported_and_earlier_ones_survive(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    good = record()
    append_record(path, good)
    with open(path, "ab") as f:  # a power cut in the middle of the next append
        f.write(record("failed").to_json().encode()[:57])

    ledger = read_ledger(path)

    assert ledger.records == (good,)
    assert len(ledger.skipped) == 1
    assert ledger.skipped[0].number == 2
    assert "cut short" in ledger.skipped[0].reason


def test_the_append_after_a_cut_short_record_starts_on_a_line_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    append_record(path, record(name="first"))
    with open(path, "ab") as f:
        f.write(b'{"result":"passed","image_na')
    append_record(path, record(name="third"))

    ledger = read_ledger(path)

    assert [r.image_name for r in ledger.records] == ["first", "third"]
    assert [s.number for s in ledger.skipped] == [2]


def test_zero_bytes_a_power_cut_left_at_the_end_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    append_record(path, record(name="before"))
    with open(path, "ab") as f:
        f.write(b"\0" * 300)
    append_record(path, record(name="after"))

    ledger = read_ledger(path)

    assert [r.image_name for r in ledger.records] == ["before", "after"]
    assert ledger.skipped == ()  # nothing but zeros: no record was lost, nothing to report


def test_a_damaged_line_in_the_middle_is_reported_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(record(name="one").to_json() + "\n{not json}\n" + record(name="three").to_json() + "\n")

    ledger = read_ledger(path)

    assert [r.image_name for r in ledger.records] == ["one", "three"]
    assert ledger.skipped[0].number == 2 and "not a ledger record" in ledger.skipped[0].reason


def test_a_missing_ledger_reads_as_empty(tmp_path: Path) -> None:
    ledger = read_ledger(tmp_path / "none.jsonl")
    assert ledger.records == () and not ledger.exists


def test_records_from_a_newer_bty_with_unknown_fields_still_read(tmp_path: Path) -> None:
    data = record().to_dict() | {"schema": 2, "future_field": {"x": 1}}
    path = tmp_path / "ledger.jsonl"
    path.write_text(json.dumps(data) + "\n")

    assert read_ledger(path).records[0].image_blake3 == IMAGE


# -- known-good -------------------------------------------------------------------------------------


def test_an_image_and_task_are_known_good_on_a_model_after_one_run_passed_write_verify_and_tune() -> None:
    records = [record("failed", phases={"write": PhaseResult("passed"), "tune": PhaseResult("failed")}),
               record()]
    assert known_good(records, IMAGE, TASK, "Dell R650")
    assert known_good(records, IMAGE, TASK, "dell r650")  # models compare case-insensitively
    assert not known_good(records, IMAGE, TASK, "HPE DL360")
    assert not known_good(records, OTHER_IMAGE, TASK, "Dell R650")
    assert not known_good(records, IMAGE, "d" * 64, "Dell R650")  # another task is another combination
    assert not known_good(records, IMAGE, None, "Dell R650")


@pytest.mark.parametrize("phases", [
    {"write": PhaseResult("passed"), "verify": PhaseResult("skipped"), "fixup": PhaseResult("passed"),
     "tune": PhaseResult("passed")},
    {"write": PhaseResult("passed"), "verify": PhaseResult("passed"), "fixup": PhaseResult("passed"),
     "tune": PhaseResult("skipped")},
    {"write": PhaseResult("passed"), "verify": PhaseResult("passed")},
], ids=["verify skipped", "tune skipped though there is a task", "tune never ran"])
def test_a_run_that_skipped_verify_or_tune_does_not_make_anything_known_good(phases: dict[str, PhaseResult]) -> None:
    assert not known_good([record(phases=phases)], IMAGE, TASK, "Dell R650")


def test_a_failed_run_is_never_known_good_even_with_every_phase_passed() -> None:
    assert not known_good([record("failed")], IMAGE, TASK, "Dell R650")


def test_without_a_task_write_and_verify_are_enough() -> None:
    phases = {"write": PhaseResult("passed"), "verify": PhaseResult("passed"), "fixup": PhaseResult("passed")}
    assert known_good([record(task=None, phases=phases)], IMAGE, None, "Dell R650")


def test_known_good_models_lists_each_model_once() -> None:
    records = [record(model="Dell R650"), record(model="HPE DL360"), record(model="Dell R650"),
               record("failed", model="Lenovo SR630")]
    assert known_good_models(records, IMAGE, TASK) == ["Dell R650", "HPE DL360"]


def test_summarize_counts_passes_and_failures_per_image_task_and_model() -> None:
    groups = summarize([record(), record("failed"), record(model="HPE DL360", result="failed")])
    assert [(g.model, g.passed, g.failed, g.known_good) for g in groups] == [
        ("Dell R650", 1, 1, True), ("HPE DL360", 0, 1, False)]


# -- filters ------------------------------------------------------------------------------------------


def test_filters_select_by_image_name_or_digest_prefix_model_glob_and_failure() -> None:
    records = [record(name="debian"), record(name="windows", image=OTHER_IMAGE, model="HPE DL360"),
               record("failed", name="debian", model="Dell R750")]
    assert len(filter_records(records, image="DEBIAN")) == 2
    assert [r.image_name for r in filter_records(records, image="bbbbbbbb")] == ["windows"]
    assert len(filter_records(records, image="bbbb")) == 0  # too short to be a digest prefix
    assert [r.machine_model for r in filter_records(records, model="dell*")] == ["Dell R650", "Dell R750"]
    assert [r.machine_model for r in filter_records(records, failed=True)] == ["Dell R750"]
    assert filter_records(records, image="debian", model="*750", failed=True) == [records[2]]


# -- records of runs ---------------------------------------------------------------------------------


MACHINE = MachineIdentity("Dell Inc.", "PowerEdge R650", "SER123", "uuid-1", None,
                          (Nic("eno1", "aa:bb:cc:dd:ee:01", "bnxt_en", True),))


def test_a_phase_tracker_marks_the_phase_that_was_running_when_the_run_failed() -> None:
    seen: list[Event] = []
    tracker = PhaseTracker(seen.append)
    for phase in (Phase.WRITE, Phase.VERIFY, Phase.FIXUP):
        tracker(Event(phase, Kind.START, timestamp=10.0))
        tracker(Event(phase, Kind.END, timestamp=12.0))
    tracker(Event(Phase.TUNE, Kind.START))
    error = TuneError("tuning step 'keys' (bty.authorized_keys) failed", step="keys", report="/r")

    rec = make_record(image_name="demo", image_blake3=IMAGE, machine=MACHINE, error=error, tracker=tracker,
                      task=Path("demo.task.yaml"), task_digest=TASK)

    assert len(seen) == 7  # every event went through to the real sink
    assert {name: p.result for name, p in rec.phases.items()} == {
        "write": "passed", "verify": "passed", "fixup": "passed", "tune": "failed"}
    assert rec.phases["write"].seconds == 2.0
    assert rec.result == "failed" and rec.error_kind == "tune" and rec.report == "/r"
    assert rec.machine_model == "Dell Inc. PowerEdge R650" and rec.macs == ("aa:bb:cc:dd:ee:01",)


def test_a_digest_mismatch_after_the_write_counts_against_verify() -> None:
    tracker = PhaseTracker()
    tracker(Event(Phase.WRITE, Kind.START, timestamp=1.0))
    tracker(Event(Phase.WRITE, Kind.END, timestamp=2.0))
    rec = make_record(image_name="demo", image_blake3=IMAGE, machine=MACHINE,
                      error=DigestMismatchError("does not match"), tracker=tracker)
    assert rec.phase("write") == "passed" and rec.phase("verify") == "failed" and rec.phase("tune") == "not run"


def test_a_finished_run_is_recorded_from_its_receipt_and_tuning_result() -> None:
    receipt = Receipt(result="ok", image_name="demo", image_path="/i/demo.img", image_size=1, image_blake3=IMAGE,
                      manifest_blake3=IMAGE, target_path="/dev/sdb", target_model="SSD", target_serial="D1",
                      target_wwn=None, target_size=2, target_transport="sata", target_by_id=[], bytes_written=1,
                      bytes_zeroed=0, verify_mode="readback", stream_check="match", readback_check="match",
                      fixups=[], phases={"write": 1.0, "verify": 0.5, "fixup": 0.1}, started_at="", finished_at="",
                      saved_to="/receipts/r.json")
    tune = TuneResult("passed", "/i/demo.task.yaml", TASK, report_dir="/i/reports/x", seconds=3.0)

    rec = make_record(image_name="demo", image_blake3=IMAGE, machine=MACHINE, disk_path="/dev/sdb",
                      disk_model="SSD", disk_serial="D1", task=Path("/i/demo.task.yaml"), task_digest=TASK,
                      receipt=receipt, tune=tune)

    assert rec.known_good
    assert TuneResult.from_dict(tune.to_dict()) == tune
    assert rec.receipt == "/receipts/r.json" and rec.report == "/i/reports/x" and rec.task == "demo.task.yaml"
    assert rec.phases["verify"] == PhaseResult("passed", 0.5) and rec.phases["tune"] == PhaseResult("passed", 3.0)


@pytest.mark.parametrize(("stream_check", "known_good"), [("no manifest", True), ("unverified (no digest)", False)])
def test_a_download_with_no_digest_is_never_known_good_a_local_file_read_back_is(stream_check: str,
                                                                                  known_good: bool) -> None:
    receipt = Receipt(result="ok", image_name="demo", image_path="/i/demo.img", image_size=1, image_blake3=IMAGE,
                      manifest_blake3=None, target_path="/dev/sdb", target_model="SSD", target_serial="D1",
                      target_wwn=None, target_size=2, target_transport="sata", target_by_id=[], bytes_written=1,
                      bytes_zeroed=0, verify_mode="readback", stream_check=stream_check, readback_check="match",
                      fixups=[], phases={"write": 1.0, "verify": 0.5, "fixup": 0.1}, started_at="", finished_at="")

    rec = make_record(image_name="demo", image_blake3=None, machine=MACHINE, receipt=receipt)

    assert rec.result == "passed" and rec.known_good == known_good
    assert rec.phase("verify") == ("passed" if known_good else "skipped")


# -- bty ledger ------------------------------------------------------------------------------------


def test_bty_ledger_json_lists_records_skipped_lines_and_known_good(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ledger.jsonl"
    append_record(path, record())
    append_record(path, record("failed", model="HPE DL360", error="boom", error_kind="io"))
    with open(path, "ab") as f:
        f.write(b'{"result": "pa')

    assert bty_ledger("--ledger", str(path), "--json") == 0

    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert [r["machine_model"] for r in out["records"]] == ["Dell R650", "HPE DL360"]
    assert out["skipped_lines"][0]["line"] == 3
    assert [(g["model"], g["known_good"]) for g in out["known_good"]] == [("Dell R650", True)]
    assert "line 3 skipped" in captured.err


def test_bty_ledger_filters_failed_runs_of_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ledger.jsonl"
    for rec in (record(), record("failed", model="HPE DL360", error="x"), record("failed", error="y")):
        append_record(path, rec)

    assert bty_ledger("--ledger", str(path), "--json", "--failed", "--model", "hpe*") == 0

    assert [r["error"] for r in json.loads(capsys.readouterr().out)["records"]] == ["x"]


def test_bty_ledger_defaults_to_the_images_directory_and_prints_a_table(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    append_record(tmp_path / "ledger.jsonl", record(name="debian-12"))

    assert bty_ledger("--images", str(tmp_path)) == 0

    out = capsys.readouterr().out
    assert "debian-12" in out and "known-good:" in out and "Dell R650" in out


def test_bty_ledger_without_a_ledger_says_where_it_will_be(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bty_ledger("--images", str(tmp_path)) == 0
    assert f"no ledger at {tmp_path / 'ledger.jsonl'}" in capsys.readouterr().out


def test_bty_ledger_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bty_ledger("--help")
    out = capsys.readouterr().out
    for option in ("--json", "--ledger", "--images", "--image", "--model", "--failed", "known-good"):
        assert option in out


# -- the known-good badge of an image file ----------------------------------------------------------


def _corrupt_in_place(path: Path, offset: int) -> None:
    """Damage the file's bytes (same size, the manifest beside it untouched), as a bad copy would."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in f.read(4096)))
        f.seek(offset)


@pytest.fixture
def flashed_images(tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> tuple[Path, Path]:
    """An images directory whose demo.img (with its manifest) was flashed once, for real, onto a
    loop device: the ledger holds a passing run that hashed the file's bytes."""
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "build").mkdir()
    image = build_gpt_image(tmp_path / "build" / "demo.img").rename(images / "demo.img")
    assert cli.main(["images", "add", str(image)]) == 0
    loop = make_loop(64 * MiB)
    assert cli.main(["flash", str(image), loop.path, "--yes", "--images", str(images)]) == 0
    return images, image


def test_the_file_a_passing_run_verified_is_known_good_on_this_model(
        flashed_images: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    images, image = flashed_images
    records = read_ledger(default_ledger_path(images)).records
    entry = describe_image(image)
    model = read_machine_identity().model
    assert known_good_for_entry(records, entry, images) == [model]
    assert entry_badge(records, entry, images, model) == "known-good"
    assert tui_command._known_good_badge(str(images))(entry) == "known-good"
    capsys.readouterr()
    assert cli.main(["images", "--images", str(images)]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("demo ")]
    assert row.endswith(model) and "unverified" not in row


def test_a_corrupt_copy_beside_the_good_manifest_is_not_known_good_but_unverified(
        flashed_images: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    images, image = flashed_images
    _corrupt_in_place(image, 8 * MiB)
    records = read_ledger(default_ledger_path(images)).records
    entry = describe_image(image)
    assert entry.manifest is not None and any(r.image_blake3 == entry.manifest.blake3 for r in records)
    model = read_machine_identity().model
    assert known_good_for_entry(records, entry, images) == []
    assert entry_badge(records, entry, images, model) == "unverified"
    tui_badge = tui_command._known_good_badge(str(images))(entry)  # what `bty tui` shows beside the image
    assert tui_badge == "unverified"
    assert "unverified" in image_prompt(entry, tui_badge).plain and "known-good" not in image_prompt(
        entry, tui_badge).plain
    capsys.readouterr()
    assert cli.main(["images", "--images", str(images)]) == 0  # into a pipe: plain rows
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("demo ")]
    assert row.endswith(f"unverified ({model})")  # in the KNOWN-GOOD ON column, instead of the model


def test_a_record_with_the_manifests_digest_but_no_verified_file_gives_no_known_good_badge(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    image = images / "demo.img"
    image.write_bytes(bytes(MiB))
    assert cli.main(["images", "add", str(image)]) == 0
    entry = describe_image(image)
    assert entry.manifest is not None
    old = record(image=entry.manifest.blake3, task=None, model="Dell R650")  # a run of some copy, somewhere
    assert known_good_for_entry([old], entry, images) == []
    assert entry_badge([old], entry, images, "Dell R650") == "unverified"
    assert entry_badge([old], entry, images, "HPE DL360") == ""  # nothing known about that model


def test_bty_ledger_into_a_pipe_prints_one_unwrapped_line_per_run(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model = "Supermicro Super Server SYS-221H-TNR with the long product name the BMC reports"
    append_record(tmp_path / "ledger.jsonl", record(name="debian-12-desktop-classroom", model=model,
                                                    disk_model="Samsung SSD 990 PRO 2TB", disk_serial="S7KHNJ0W"))
    assert bty_ledger("--images", str(tmp_path)) == 0  # stdout is captured: not a terminal
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["WHEN", "RESULT", "IMAGE", "TASK", "MODEL", "SERIAL", "DISK", "PHASES"]
    row = lines[2]
    assert model in row and "debian-12-desktop-classroom aaaaaaaaaaaa" in row and "Samsung SSD 990 PRO 2TB" in row
    assert row.endswith("write+ verify+ fixup+ tune+") and len(row) > 80


def test_bty_ledger_into_a_pipe_prints_each_failures_error_on_one_line(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    error = ("image demo.img does not match its manifest: blake3 of the stream is 0123456789abcdef, the manifest "
             "says aaaaaaaaaaaaaaaa; copy the image again; /dev/sdb wiped")
    append_record(tmp_path / "ledger.jsonl", record("failed", error=error, error_kind="digest"))
    assert bty_ledger("--images", str(tmp_path)) == 0
    assert any(line.endswith(f"demo on Dell R650: {error}") for line in capsys.readouterr().out.splitlines())
