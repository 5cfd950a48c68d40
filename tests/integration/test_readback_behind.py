"""The read-back behind the write: the disk is read back a window at a time while the rest is
written, only what the writer has released and a flush has covered, and the verdict is the same
as the read-back after the write: the bytes on the disk, hashed, against the manifest's blake3
(which then proves the image too: the stream is not hashed) or, without one, the stream's.

Plus the choices the write path makes per target (zeroing or writing zero ranges) and the
profile every receipt carries (where the time went)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from bty_live import cli
from bty_live.errors import BtyError, DigestMismatchError, VerifyError
from bty_live.events import Event, Kind, Phase
from bty_live.flash import engine, readback
from bty_live.flash.plan import FlashOptions
from bty_live.flash.prepare import prepare_plan
from bty_live.flash.receipt import Receipt
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image, compress, device_equals_file, images_dir_with, looks_blank

pytestmark = pytest.mark.root

IMAGE_SIZE = 64 * MiB


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "disk.img", IMAGE_SIZE)


@pytest.fixture
def images(tmp_path: Path, raw_image: Path) -> Path:
    return images_dir_with(tmp_path, raw_image, manifest=True)


@pytest.fixture
def small_window(monkeypatch: pytest.MonkeyPatch) -> int:
    """Read back every 8 MiB, so a 64 MiB image is read back in windows during its write."""
    monkeypatch.setattr(readback, "FLUSH_WINDOW", 8 * MiB)
    return 8 * MiB


def verify_start(events: list[Event]) -> Event:
    [start] = [e for e in events if e.phase == Phase.VERIFY and e.kind == Kind.START]
    return start


# -- the pass on its own -------------------------------------------------------------------------


def test_it_reads_only_what_the_writer_released_and_the_rest_after_finish(make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(32 * MiB, fill=b"\x11")
    with open(loop.path, "r+b", buffering=0) as device:
        pass_ = readback.ReadbackPass(loop.path, window=4 * MiB).start()
        try:
            pass_.release(2 * MiB)  # less than a window: nothing is read yet
            pass_.release(16 * MiB)  # a window and more: [0, 16 MiB) is read, not a byte further
            while pass_.counters.bytes_hashed < 16 * MiB:
                time.sleep(0.01)
            assert pass_.counters.bytes_read == 16 * MiB
            device.seek(20 * MiB)  # written after the release, before the finish: what is read back
            device.write(b"\x22" * MiB)
            os.fsync(device.fileno())
            pass_.finish(24 * MiB)
            result = pass_.wait()
        finally:
            pass_.stop()
    expected = b"\x11" * (20 * MiB) + b"\x22" * MiB + b"\x11" * (3 * MiB)
    assert result.size == 24 * MiB and result.digest == blake3.blake3(expected).hexdigest()


def test_a_stopped_pass_lets_go_of_the_device(make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(8 * MiB)
    pass_ = readback.ReadbackPass(loop.path).start()
    pass_.release(MiB)
    pass_.stop()  # the write failed: the reader waiting for more ends, the descriptor is closed
    assert not any(t.is_alive() for t in pass_.runner._threads)
    with pytest.raises(OSError):
        os.fstat(pass_.fd)


# -- in a flash ----------------------------------------------------------------------------------


@pytest.mark.parametrize("direct_io", [False, True], ids=["page-cached-loop", "direct-io-loop"])
def test_a_flash_reads_back_behind_its_write_and_lands_byte_exact(images: Path, raw_image: Path, small_window: int,
                                                                  make_loop: Callable[..., LoopDevice],
                                                                  direct_io: bool) -> None:
    loop = make_loop(IMAGE_SIZE, fill=b"\xa5", direct_io=direct_io)
    plan = prepare_plan(str(compress(images / "disk.img", "zst")), loop.path, FlashOptions())
    events: list[Event] = []

    receipt = engine.flash(plan, events.append).receipt

    assert receipt.readback_check == "match" and device_equals_file(loop.path, raw_image)
    already = re.search(r"\((\d+) MiB already, behind the write\)", verify_start(events).message or "")
    assert already is not None and int(already.group(1)) >= small_window // MiB  # read while writing
    names = [stage["name"] for stage in (receipt.profile or {})["stages"]]
    assert names[-2:] == ["readback-read", "readback-hash"]


@pytest.mark.parametrize("behind", [True, False], ids=["behind", "after"])
def test_bytes_changed_behind_the_devices_back_before_they_are_read_fail_the_flash_and_wipe(
        images: Path, make_loop: Callable[..., LoopDevice], behind: bool) -> None:
    loop = make_loop(IMAGE_SIZE)
    plan = prepare_plan(str(images / "disk.img"), loop.path, FlashOptions(readback_behind=behind))

    def corrupt_when_verify_starts(event: Event) -> None:  # 64 MiB < one window: nothing is read yet
        if event.phase == Phase.VERIFY and event.kind == Kind.START:
            with open(loop.backing_file, "r+b") as f:
                f.seek(40 * MiB)
                f.write(b"\x00\x01bit rot")

    with pytest.raises(VerifyError, match="does not match what was written"):
        engine.flash(plan, corrupt_when_verify_starts)
    assert looks_blank(loop.path, IMAGE_SIZE)


def test_readback_after_reads_the_disk_in_one_pass_after_the_write(images: Path, raw_image: Path, tmp_path: Path,
                                                                   small_window: int,
                                                                   make_loop: Callable[..., LoopDevice],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(IMAGE_SIZE)
    assert cli.main(["flash", str(images / "disk.img"), loop.path, "--yes", "--readback-after",
                     "--receipt", str(tmp_path / "r.json")]) == 0
    assert device_equals_file(loop.path, raw_image)
    assert "already, behind the write" not in capsys.readouterr().err
    receipt = json.loads((tmp_path / "r.json").read_text())
    assert receipt["readback_check"] == "match"


# -- zero ranges: zeroed by the device, or written ------------------------------------------------


@pytest.mark.parametrize(("direct_io", "verify", "zeroed"), [
    (True, "readback", True),    # a disk-like target zeroes by itself
    (False, "stream", True),     # nothing reads the holes back
    (False, "readback", False),  # the read-back would fill every hole in the page cache: write them
], ids=["direct-io-readback", "page-cached-stream", "page-cached-readback"])
def test_zero_ranges_are_zeroed_by_the_device_unless_reading_back_a_page_cached_loop(
        images: Path, raw_image: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice],
        direct_io: bool, verify: str, zeroed: bool) -> None:
    loop = make_loop(IMAGE_SIZE, fill=b"\xa5", direct_io=direct_io)
    assert cli.main(["flash", str(images / "disk.img"), loop.path, "--yes", "--verify", verify,
                     "--receipt", str(tmp_path / "r.json")]) == 0
    assert device_equals_file(loop.path, raw_image)  # the old bytes are gone either way
    receipt = json.loads((tmp_path / "r.json").read_text())
    assert (receipt["bytes_zeroed"] > 0) == zeroed
    assert receipt["bytes_written"] + receipt["bytes_zeroed"] >= IMAGE_SIZE


# -- the profile -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("verify", "manifest", "names"), [
    # the read-back compared with the manifest's blake3 proves the image too: the stream is not hashed
    ("readback", True, {"decompress", "write", "readback-read", "readback-hash"}),
    # nothing else knows the image's blake3: the stream's is what the read-back is compared with
    ("readback", False, {"decompress", "hash", "write", "readback-read", "readback-hash"}),
    ("stream", True, {"decompress", "hash", "write", "flush"}),  # no read-back: a thread flushes behind the write
], ids=["readback-manifest", "readback-no-manifest", "stream"])
def test_the_receipt_says_where_the_time_went(tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice],
                                              verify: str, manifest: bool, names: set[str]) -> None:
    images = images_dir_with(tmp_path, raw_image, manifest=manifest)
    loop = make_loop(IMAGE_SIZE)
    assert cli.main(["flash", str(images / "disk.img"), loop.path, "--yes", "--verify", verify,
                     "--receipt", str(tmp_path / "r.json")]) == 0
    profile = json.loads((tmp_path / "r.json").read_text())["profile"]
    stages = {stage["name"]: stage for stage in profile["stages"]}
    assert set(stages) == names
    for stage in stages.values():
        span = stage["end"] - stage["start"]
        assert 0 <= stage["busy"] <= span + 1e-3
        assert stage["busy"] + stage["wait_input"] + stage["wait_output"] == pytest.approx(span, abs=2e-3)
    # the first byte lands after the process started and the write stage did, before it ended
    assert 0 < stages["write"]["start"] <= profile["first_write"] <= stages["write"]["end"]


# -- the read-back against the manifest: one proof of the image and the write ------------------


def test_with_a_manifest_the_read_back_proves_the_image_and_the_write_at_once(
        images: Path, raw_image: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE, fill=b"\xa5")
    plan = prepare_plan(str(images / "disk.img"), loop.path, FlashOptions())
    events: list[Event] = []

    receipt = engine.flash(plan, events.append).receipt

    expected = blake3.blake3(raw_image.read_bytes()).hexdigest()
    assert device_equals_file(loop.path, raw_image)
    assert (receipt.stream_check, receipt.readback_check) == ("match", "match")
    assert receipt.image_blake3 == receipt.manifest_blake3 == expected
    assert any("the image and the write are proven at once" in (e.message or "") for e in events)
    [done] = [e for e in events if e.phase == Phase.DONE and e.kind == Kind.END]
    assert done.digest == expected


@pytest.mark.parametrize(("culprit", "error", "words"), [
    ("disk", VerifyError, "does not match what was written"),
    ("image", DigestMismatchError, "does not match its manifest"),
])
def test_a_read_back_that_differs_from_the_manifest_names_the_image_or_the_disk(
        images: Path, make_loop: Callable[..., LoopDevice], culprit: str, error: type[BtyError], words: str) -> None:
    """The stream was not hashed: the image is hashed again alone to tell whose fault it is."""
    image = images / "disk.img"
    if culprit == "image":  # damaged after `bty images add`: the manifest no longer describes it
        with open(image, "r+b") as f:
            f.seek(40 * MiB)
            f.write(b"\x00\x01bit rot")
    loop = make_loop(IMAGE_SIZE)
    plan = prepare_plan(str(image), loop.path, FlashOptions(readback_behind=False))
    events: list[Event] = []

    def record_and_rot_the_disk(event: Event) -> None:
        events.append(event)
        if culprit == "disk" and event.phase == Phase.VERIFY and event.kind == Kind.START:
            with open(loop.backing_file, "r+b") as f:
                f.seek(40 * MiB)
                f.write(b"\x00\x01bit rot")

    with pytest.raises(error, match=words) as raised:
        engine.flash(plan, record_and_rot_the_disk)
    assert any("again to tell whether the image or the disk is wrong" in (e.message or "") for e in events)
    assert looks_blank(loop.path, IMAGE_SIZE)
    receipt = raised.value.receipt  # the failed run's: it names the image's actual blake3
    assert isinstance(receipt, Receipt) and receipt.result == "failed"
    assert receipt.image_blake3 == blake3.blake3(image.read_bytes()).hexdigest()
