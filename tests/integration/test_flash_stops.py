"""A flash that cannot be fooled: stop signals, power cuts (SIGKILL), closed pipes, and how
`--json` ends, on real loop devices with real `bty` processes.

The promise under test: whatever stops a flash, the disk is either untouched, or complete and
verified, or has no partition table that any tool recognises; and the run says how it ended
(one line, an exit code of its own, a receipt, a ledger record).
"""

from __future__ import annotations

import gzip
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from bty_live.events import Event, Kind, Phase
from bty_live.flash import engine
from bty_live.flash.plan import FlashOptions
from bty_live.flash.prepare import prepare_plan
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image, device_equals_file, looks_blank, read_device, slow_gzip_image

IMAGE_SIZE = 64 * MiB
BTY = [sys.executable, "-m", "bty_live.cli"]


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "disk.img", IMAGE_SIZE)


@pytest.fixture(scope="module")
def slow_image(tmp_path_factory: pytest.TempPathFactory, raw_image: Path) -> Path:
    """The GPT image followed by 2 GiB of zeros as multi-member gzip: seconds to flash."""
    return slow_gzip_image(tmp_path_factory.mktemp("slow") / "long.img.gz", raw_image)


SLOW_SIZE = IMAGE_SIZE + 2048 * MiB


def partition_table(device: str) -> str | None:
    """The partition-table type libblkid finds on the device (gpt, dos), or None."""
    found = subprocess.run(["blkid", "-p", "-o", "value", "-s", "PTTYPE", device],
                           capture_output=True, text=True).stdout.strip()
    return found or None


def ledger_records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def start_flash(image: Path, loop: LoopDevice, tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*BTY, "flash", str(image), loop.path, "--yes", "--json",
                             "--ledger", str(tmp_path / "ledger.jsonl"), "--receipt", str(tmp_path / "receipt.json"),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_writing(proc: subprocess.Popen[str], past: int = IMAGE_SIZE) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("phase") == "write" and event.get("kind") == "progress" and event["bytes_out"] > past:
            return
    raise AssertionError("the flash ended before it was writing")


# -- stop signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
def test_a_stop_signal_mid_write_wipes_says_so_exits_128_plus_n_and_records_the_run(
        sig: signal.Signals, tmp_path: Path, slow_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(SLOW_SIZE)
    proc = start_flash(slow_image, loop, tmp_path)
    wait_until_writing(proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    lines = [line for line in err.splitlines() if line.startswith("bty:")]
    assert lines and sig.name in lines[-1] and "wiped" in lines[-1], err
    assert "Traceback" not in err
    assert looks_blank(loop.path, SLOW_SIZE) and partition_table(loop.path) is None
    [record] = ledger_records(tmp_path / "ledger.jsonl")
    assert record["result"] == "failed" and record["error_kind"] == "cancelled"
    receipt = json.loads(out.splitlines()[-1])["receipt"]
    assert receipt["result"] == "failed" and sig.name in receipt["error"]
    assert json.loads((tmp_path / "receipt.json").read_text())["result"] == "failed"


def test_a_second_signal_does_not_cut_the_wipe_short(tmp_path: Path, slow_image: Path,
                                                     make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(SLOW_SIZE)
    proc = start_flash(slow_image, loop, tmp_path)
    wait_until_writing(proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)  # signals that arrive together are handled in signal-number order
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert looks_blank(loop.path, SLOW_SIZE)
    assert len(ledger_records(tmp_path / "ledger.jsonl")) == 1


def test_unattended_mode_stopped_by_systemd_wipes_and_exits_143(tmp_path: Path, slow_image: Path,
                                                                make_loop: Callable[..., LoopDevice]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "long.img.gz").symlink_to(slow_image)
    loop = make_loop(SLOW_SIZE)
    proc = subprocess.Popen([*BTY, "unattended", "--no-consoles", "--images", str(images), "--cmdline",
                             f"bty.image=long bty.disk=name={loop.name} bty.after=shell"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # unattended mode writes to its consoles; stdout here
        if "write: writing" in line:
            break
    time.sleep(0.5)  # mid-write: the 2 GiB take seconds
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out + err
    assert "FAILED" in out and "SIGTERM" in out and "wiped" in out
    assert looks_blank(loop.path, SLOW_SIZE)
    [record] = ledger_records(images / "ledger.jsonl")
    assert record["result"] == "failed"


# -- power cuts: what is on the disk at any moment ------------------------------------------------


def test_the_partition_table_is_absent_until_the_rest_is_written_and_verified(
        raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    subprocess.run(["sfdisk", "-q", loop.path], input=b"label: gpt\n,,L\n", check=True, capture_output=True)
    assert partition_table(loop.path) == "gpt"  # an old table, as on a used disk
    seen: dict[str, str | None] = {}

    def look(event: Event) -> None:
        if event.kind == Kind.START and event.phase in (Phase.WRITE, Phase.VERIFY, Phase.FIXUP):
            seen[str(event.phase)] = partition_table(loop.path)
        if event.phase == Phase.WRITE and event.kind == Kind.END:
            seen["write end"] = partition_table(loop.path)

    engine.flash(prepare_plan(str(raw_image), loop.path, FlashOptions()), look)
    assert seen == {"write": "gpt", "write end": None, "verify": None, "fixup": "gpt"}
    assert device_equals_file(loop.path, raw_image)


def test_sigkill_at_any_moment_never_leaves_a_partition_table_over_a_partial_image(
        tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    """The old image A is on the disk; B is flashed and killed at random moments. After each
    kill the disk holds A untouched, B whole, or no partition table at all."""
    old = build_gpt_image(tmp_path / "a.img", 128 * MiB, seed=2, files_bytes=32 * MiB)
    new = build_gpt_image(tmp_path / "b.img", 128 * MiB, seed=3, files_bytes=96 * MiB)
    digests = {"A": blake3.blake3(old.read_bytes()).hexdigest(), "B": blake3.blake3(new.read_bytes()).hexdigest()}
    loop = make_loop(128 * MiB)

    def disk_digest() -> str:
        return blake3.blake3(read_device(loop.path, 0, 128 * MiB)).hexdigest()

    def flash(image: Path) -> subprocess.Popen[str]:
        return subprocess.Popen([*BTY, "flash", str(image), loop.path, "--yes", "--json", "--ledger",
                                 str(tmp_path / "l")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def until_writing(proc: subprocess.Popen[str]) -> float:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("phase") == "write" and event.get("kind") == "start":
                return time.monotonic()
        raise AssertionError("the flash ended before it was writing")

    full = flash(new)  # how long writing, verifying and fixing up take here
    writing = until_writing(full)
    assert full.wait(60) == 0
    window = time.monotonic() - writing
    rng = random.Random(20261202)
    outcomes = []
    for i in range(8):
        assert flash(old).wait(60) == 0
        proc = flash(new)
        until_writing(proc)
        time.sleep(window * (i + rng.random()) / 8)
        proc.kill()
        proc.wait(30)
        table = partition_table(loop.path)
        if table is None:
            outcomes.append("no table")
            continue
        which = next((name for name, digest in digests.items() if digest == disk_digest()), None)
        assert which is not None, f"killed {i}/8 into the write: a {table} table over a partial image ({outcomes})"
        outcomes.append(which)
    assert "no table" in outcomes, f"no kill landed mid-write ({outcomes}); the test proves nothing"


# -- closed pipes and lost terminals ---------------------------------------------------------------


def bty_into_a_closed_pipe(args: str, pipe: str) -> subprocess.CompletedProcess[str]:
    """`bty ARGS PIPE` in a real shell (PIPE such as "| head -3"); the exit code is bty's own."""
    return subprocess.run(["bash", "-c", f'{" ".join(BTY)} {args} {pipe}; exit "${{PIPESTATUS[0]}}"'],
                          capture_output=True, text=True, timeout=120)


def test_a_json_reader_that_stops_early_does_not_stop_the_flash(tmp_path: Path, raw_image: Path,
                                                                make_loop: Callable[..., LoopDevice]) -> None:
    """`bty flash ... --json | head -3`: the flash goes on with its output dropped."""
    loop = make_loop(IMAGE_SIZE)
    ledger = tmp_path / "ledger.jsonl"
    done = bty_into_a_closed_pipe(f"flash {raw_image} {loop.path} --yes --json --ledger {ledger}", "| head -3")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3
    assert device_equals_file(loop.path, raw_image)
    [record] = ledger_records(ledger)
    assert record["result"] == "passed"


def test_a_closed_pipe_on_both_outputs_does_not_stop_the_flash(tmp_path: Path, raw_image: Path,
                                                               make_loop: Callable[..., LoopDevice]) -> None:
    """`bty flash ... 2>&1 | head -2`: progress lines and the receipt both go nowhere."""
    loop = make_loop(IMAGE_SIZE)
    ledger = tmp_path / "ledger.jsonl"
    done = bty_into_a_closed_pipe(f"flash {raw_image} {loop.path} --yes --ledger {ledger}", "2>&1 | head -2")
    assert done.returncode == 0, done.stdout
    assert device_equals_file(loop.path, raw_image)
    assert ledger_records(ledger)[0]["result"] == "passed"


def test_a_failure_behind_a_closed_pipe_still_exits_non_zero_and_is_recorded(
        tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    damaged = tmp_path / "damaged.img.gz"
    data = gzip.compress(raw_image.read_bytes(), compresslevel=1)
    damaged.write_bytes(data[: len(data) // 2])  # truncated mid-stream
    loop = make_loop(IMAGE_SIZE)
    ledger = tmp_path / "ledger.jsonl"
    done = bty_into_a_closed_pipe(f"flash {damaged} {loop.path} --yes --json --ledger {ledger}", "2>&1 | head -1")
    assert done.returncode == 4
    assert ledger_records(ledger)[0]["result"] == "failed"
    assert partition_table(loop.path) is None


# -- how --json ends ------------------------------------------------------------------------------


def test_json_mode_ends_with_an_error_line_when_nothing_was_written(tmp_path: Path,
                                                                    make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    done = subprocess.run([*BTY, "flash", str(tmp_path / "missing.img"), loop.path, "--yes", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    error = json.loads(done.stdout.splitlines()[-1])["error"]
    assert error["kind"] == "image" and error["exit_code"] == 3 and "missing.img" in error["message"]


def test_json_mode_ends_with_a_failed_receipt_when_the_disk_was_written(
        tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(raw_image.read_bytes())
    subprocess.run([*BTY, "images", "add", str(image)], check=True, capture_output=True)
    with open(image, "r+b") as f:  # one byte changed after the manifest was made
        f.seek(3 * MiB)
        f.write(b"\xff")
    loop = make_loop(IMAGE_SIZE)
    receipt_file = tmp_path / "receipt.json"
    done = subprocess.run([*BTY, "flash", str(image), loop.path, "--yes", "--json", "--receipt", str(receipt_file)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 5
    receipt = json.loads(done.stdout.splitlines()[-1])["receipt"]
    assert receipt["result"] == "failed" and "does not match its manifest" in receipt["error"]
    assert json.loads(receipt_file.read_text())["result"] == "failed"


def test_a_bare_bty_prints_its_help() -> None:
    done = subprocess.run(BTY, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "flash" in done.stdout and "exit codes" in done.stdout
