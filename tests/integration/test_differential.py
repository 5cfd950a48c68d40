"""Differential flash (a reflash): a disk that already holds the image, or an older version of
it, is compared with the manifest's block index, and only what differs is written, read back
and proved; a disk that holds something else is written whole; a broken image or a disk that
drops writes fails the flash and wipes the disk, as a full flash does.

Real loop devices; "bytes written" is the device's own write counter (/sys/block/loopN/stat)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.errors import DigestMismatchError, SourceCorruptError, VerifyError
from bty_live.flash import differential, engine
from bty_live.flash.plan import FlashOptions
from bty_live.flash.prepare import prepare_plan
from bty_live.flash.target import BlockTarget
from bty_live.image.manifest import load_manifest, write_manifest
from bty_live.image.source import _scan_zstd
from bty_live.image.zstd_frames import PACKED_FRAME_SIZE
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image, device_equals_file, looks_blank
from tests.netkit import CutProxy, serving_files

pytestmark = pytest.mark.root

IMAGE_SIZE = 96 * MiB
BLOCK = PACKED_FRAME_SIZE  # the block index's block: a packed image's frame
#: what the "package update" changes: 64 KiB at each of these offsets
CHANGED = (20 * MiB + 3 * 4096, 41 * MiB, 70 * MiB + 8192)
#: a range that holds data in v1 and is all zero in v2 (a file deleted and trimmed)
EMPTIED = (72 * MiB, 80 * MiB)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """v1 and v2 raw, and an images directory with both packed (`bty images pack`)."""
    base = tmp_path_factory.mktemp("versions")
    v1 = build_gpt_image(base / "v1.img", IMAGE_SIZE, files_bytes=32 * MiB)
    with open(v1, "r+b") as f:
        f.seek(EMPTIED[0])
        f.write(os.urandom(EMPTIED[1] - EMPTIED[0]))
    v2 = base / "v2.img"
    shutil.copy(v1, v2)
    with open(v2, "r+b") as f:
        for offset in CHANGED:
            f.seek(offset)
            f.write(os.urandom(64 << 10))
        f.seek(EMPTIED[0])
        f.write(bytes(EMPTIED[1] - EMPTIED[0]))
    images = base / "images"
    images.mkdir()
    for raw in (v1, v2):
        assert cli.main(["images", "pack", str(raw), "-o", str(images / f"{raw.stem}.img.zst")]) == 0
    return v1, v2, images


def differing_blocks(a: Path, b: Path) -> set[int]:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return {n for n in range(IMAGE_SIZE // BLOCK) if fa.read(BLOCK) != fb.read(BLOCK)}


def bytes_written(loop: LoopDevice) -> int:
    """The device's own count of sectors written (write-zeroes included), in bytes."""
    fields = Path(f"/sys/block/{loop.name}/stat").read_text().split()
    return int(fields[6]) * 512


def bytes_read(loop: LoopDevice) -> int:
    """The device's own count of sectors read, in bytes."""
    return int(Path(f"/sys/block/{loop.name}/stat").read_text().split()[2]) * 512


def flash(image: Path, loop: LoopDevice, tmp_path: Path, *extra: str) -> dict:
    receipt = tmp_path / f"receipt-{len(list(tmp_path.glob('receipt-*')))}.json"
    assert cli.main(["flash", str(image), loop.path, "--yes", "--receipt", str(receipt), *extra]) == 0
    return json.loads(receipt.read_text())


@pytest.mark.parametrize("direct_io", [False, True], ids=["page-cached-loop", "direct-io-loop"])
def test_a_reflash_writes_only_the_pieces_that_changed_and_lands_byte_exact(
        versions: tuple[Path, Path, Path], tmp_path: Path, make_loop: Callable[..., LoopDevice],
        direct_io: bool) -> None:
    v1, v2, images = versions
    loop = make_loop(IMAGE_SIZE, direct_io=direct_io)
    flash(images / "v1.img.zst", loop, tmp_path, "--full")
    before = bytes_written(loop)

    receipt = flash(images / "v2.img.zst", loop, tmp_path)

    assert device_equals_file(loop.path, v2)
    diff = receipt["differential"]
    assert diff["mode"] == "differential" and diff["bytes_compared"] == IMAGE_SIZE
    # the changed and emptied blocks, and the blocks of the partition tables (first and last MiB)
    # when the last flash's fix-ups rewrote them (written last again, like a full flash's)
    changed = differing_blocks(v1, v2)
    assert len(changed) <= diff["blocks_written"] <= len(changed) + 2
    written = bytes_written(loop) - before
    # the changed pieces, the emptied range, the partition-table MiBs and the wipe before them
    assert written <= 3 * (64 << 10) + (EMPTIED[1] - EMPTIED[0]) + 4 * MiB + 2 * MiB
    assert written < 0.15 * IMAGE_SIZE
    assert receipt["stream_check"] == "match" and receipt["readback_check"] == "match"
    assert diff["source_bytes_read"] < (images / "v2.img.zst").stat().st_size


def test_a_disk_holding_the_image_already_is_read_not_written(
        versions: tuple[Path, Path, Path], tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    _, v2, images = versions
    loop = make_loop(IMAGE_SIZE)
    flash(images / "v2.img.zst", loop, tmp_path)
    before = bytes_written(loop)

    receipt = flash(images / "v2.img.zst", loop, tmp_path)

    assert bytes_written(loop) == before and receipt["bytes_written"] == 0
    assert receipt["differential"]["blocks_written"] == 0 and receipt["differential"]["source_bytes_read"] == 0
    assert device_equals_file(loop.path, v2) and receipt["readback_check"] == "match"


def test_a_disk_that_holds_something_else_is_written_whole_after_a_short_look(
        versions: tuple[Path, Path, Path], tmp_path: Path, make_loop: Callable[..., LoopDevice],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, v2, images = versions
    monkeypatch.setattr(differential, "DECIDE_AFTER", 4)  # 64 (128 MiB) is more than this image holds
    loop = make_loop(IMAGE_SIZE, fill=b"\xa5\x5a")

    receipt = flash(images / "v2.img.zst", loop, tmp_path)

    assert device_equals_file(loop.path, v2)
    diff = receipt["differential"]
    assert diff["mode"] == "fell back" and "does not hold this image" in diff["reason"]
    assert diff["bytes_compared"] < IMAGE_SIZE  # it stopped comparing once it knew
    assert receipt["bytes_written"] + receipt["bytes_zeroed"] >= IMAGE_SIZE - 2 * MiB


def test_a_blank_disk_is_known_after_the_first_blocks_looked_at_all_differ(
        versions: tuple[Path, Path, Path], tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    _, v2, images = versions
    loop = make_loop(IMAGE_SIZE)
    before = bytes_read(loop)

    receipt = flash(images / "v2.img.zst", loop, tmp_path, "--verify", "stream")  # no read-back: only the look reads

    diff = receipt["differential"]
    assert diff["mode"] == "fell back"
    assert f"{differential.ALL_DIFFER_AFTER} of {differential.ALL_DIFFER_AFTER} data blocks" in diff["reason"]
    assert bytes_read(loop) - before <= (differential.ALL_DIFFER_AFTER + 4) * BLOCK  # + the probes, fix-ups
    assert device_equals_file(loop.path, v2)


def test_full_writes_the_whole_image_and_an_older_manifest_without_an_index_too(
        versions: tuple[Path, Path, Path], tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    _, v2, images = versions
    loop = make_loop(IMAGE_SIZE)
    flash(images / "v2.img.zst", loop, tmp_path)

    forced = flash(images / "v2.img.zst", loop, tmp_path, "--full")
    assert forced["differential"] == {"mode": "full", "reason": "--full"}
    assert forced["bytes_written"] + forced["bytes_zeroed"] >= IMAGE_SIZE - 2 * MiB

    older = tmp_path / "older"
    older.mkdir()
    shutil.copy(images / "v2.img.zst", older / "v2.img.zst")
    manifest = load_manifest(images / "v2.img.zst")
    assert manifest is not None and manifest.index is not None
    write_manifest(older / "v2.img.zst", replace(manifest, index=None))
    plain = flash(older / "v2.img.zst", loop, tmp_path)
    assert plain["differential"]["mode"] == "full" and "bty images add" in plain["differential"]["reason"]
    assert plain["stream_check"] == "match" and device_equals_file(loop.path, v2)


def test_the_plan_says_how_the_image_will_be_written(versions: tuple[Path, Path, Path],
                                                      make_loop: Callable[..., LoopDevice]) -> None:
    _, _, images = versions
    loop = make_loop(IMAGE_SIZE)
    differential = prepare_plan(str(images / "v2.img.zst"), loop.path, FlashOptions())
    assert any(line.startswith("write:   differential") for line in differential.describe())
    full = prepare_plan(str(images / "v2.img.zst"), loop.path, FlashOptions(differential=False))
    assert "write:   whole image (--full)" in full.describe()


# -- failures: nothing half-written that looks whole ----------------------------------------------


def test_a_corrupt_frame_among_those_to_write_fails_the_flash_and_wipes_what_was_begun(
        versions: tuple[Path, Path, Path], tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    _, _, images = versions
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("v2.img.zst", "v2.img.zst.toml"):
        shutil.copy(images / name, broken / name)
    # the block of the second change differs from v1: it is fetched, after the first change's was written
    frame = _scan_zstd(broken / "v2.img.zst")[0][CHANGED[1] // BLOCK]
    with open(broken / "v2.img.zst", "r+b") as f:
        f.seek(frame.offset + frame.length // 2)
        f.write(b"\xde\xad\xbe\xef")
    loop = make_loop(IMAGE_SIZE)
    flash(images / "v1.img.zst", loop, tmp_path)
    plan = prepare_plan(str(broken / "v2.img.zst"), loop.path, FlashOptions())

    with pytest.raises((SourceCorruptError, DigestMismatchError), match="v2.img.zst") as failed:
        engine.flash(plan)
    assert looks_blank(loop.path, IMAGE_SIZE)
    receipt = failed.value.receipt
    assert receipt is not None and receipt.result == "failed"
    assert receipt.differential is not None and receipt.differential["mode"] == "differential"


def test_an_index_that_does_not_describe_the_manifests_image_is_refused_before_any_write(
        versions: tuple[Path, Path, Path], tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    v1, _, images = versions
    stale = tmp_path / "stale"
    stale.mkdir()
    shutil.copy(images / "v2.img.zst", stale / "v2.img.zst")
    manifest = load_manifest(images / "v2.img.zst")
    v1_manifest = load_manifest(images / "v1.img.zst")
    assert manifest is not None and v1_manifest is not None
    # v2's manifest with v1's block index: every block of a disk holding v1 matches it
    write_manifest(stale / "v2.img.zst", replace(manifest, index=v1_manifest.index))
    loop = make_loop(IMAGE_SIZE)
    flash(images / "v1.img.zst", loop, tmp_path)
    plan = prepare_plan(str(stale / "v2.img.zst"), loop.path, FlashOptions())

    with pytest.raises(DigestMismatchError, match="does not describe the image its blake3 names"):
        engine.flash(plan)
    assert device_equals_file(loop.path, v1)


def test_a_disk_that_drops_writes_is_caught_by_the_read_back_and_wiped(
        versions: tuple[Path, Path, Path], tmp_path: Path, make_loop: Callable[..., LoopDevice],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, images = versions
    loop = make_loop(IMAGE_SIZE)
    flash(images / "v1.img.zst", loop, tmp_path)
    honest = BlockTarget.pwrite

    def drops_writes_in_the_middle(self: BlockTarget, view: memoryview, offset: int) -> None:
        if 16 * MiB <= offset < 80 * MiB:  # acknowledged, never stored
            self.touched = True
            return
        honest(self, view, offset)

    monkeypatch.setattr(BlockTarget, "pwrite", drops_writes_in_the_middle)
    plan = prepare_plan(str(images / "v2.img.zst"), loop.path, FlashOptions())

    with pytest.raises(VerifyError, match="does not match what was written"):
        engine.flash(plan)
    assert looks_blank(loop.path, IMAGE_SIZE)


# -- over HTTP: only the frames that differ are downloaded ----------------------------------------


def test_a_reflash_from_an_http_server_downloads_only_the_frames_that_differ(
        versions: tuple[Path, Path, Path], tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    v1, v2, images = versions
    loop = make_loop(IMAGE_SIZE)
    flash(images / "v1.img.zst", loop, tmp_path, "--full")
    packed = (images / "v2.img.zst").stat().st_size

    receipt, proxy = flash_from_a_server(images, "v2.img.zst", loop, tmp_path)

    assert device_equals_file(loop.path, v2)
    assert receipt["differential"]["mode"] == "differential" and receipt["readback_check"] == "match"
    on_the_wire = sum(s.sent for s in proxy.seen if s.request_line.startswith("GET /images/v2.img.zst "))
    frames, _ = _scan_zstd(images / "v2.img.zst")
    # the head (frame 0: the partition table), the seek table, and the frames of the data blocks
    # that differ (the emptied ones are zero: nothing to fetch) or hold the partition tables
    data_changed = {n for n in differing_blocks(v1, v2) if not EMPTIED[0] <= n * BLOCK < EMPTIED[1]}
    fetched = data_changed | {0, len(frames) - 1}
    wanted = frames[0].length + sum(frames[b].length for b in fetched) + 64 * 1024
    assert on_the_wire <= wanted < 0.25 * packed, [(s.range, s.sent) for s in proxy.seen]
    ranges = proxy.range_requests()
    assert ranges and all(re.fullmatch(r"bytes=\d+-\d+", r) for r in ranges)  # bounded: never the rest of the file
    assert receipt["download"]["bytes"] == receipt["differential"]["source_bytes_read"]


def test_a_disk_that_holds_something_else_downloads_no_frame_before_it_is_written_whole(
        versions: tuple[Path, Path, Path], tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    _, v2, images = versions
    loop = make_loop(IMAGE_SIZE, fill=b"\x5a")

    receipt, proxy = flash_from_a_server(images, "v2.img.zst", loop, tmp_path)

    assert device_equals_file(loop.path, v2) and receipt["differential"]["mode"] == "fell back"
    image_gets = [s for s in proxy.seen if s.request_line.startswith("GET /images/v2.img.zst ")]
    # the head (frame 0, read to plan) and the seek table's two small requests: no frame fetched to compare
    frames = [s for s in image_gets if s.range and not s.range.startswith("bytes=0-") and s.sent > 4096]
    assert frames == [], [s.range for s in frames]


def flash_from_a_server(images: Path, name: str, loop: LoopDevice, tmp_path: Path) -> tuple[dict, CutProxy]:
    """`bty flash http://.../images/NAME` from a Range-capable file server, through a proxy that
    counts the bytes of every answer; the receipt and the proxy."""
    with serving_files(images) as server:
        proxy = CutProxy(server.address)
        try:
            return flash_url(f"{proxy.url}/images/{name}", loop, tmp_path), proxy
        finally:
            proxy.close()


def flash_url(url: str, loop: LoopDevice, tmp_path: Path) -> dict:
    """`bty flash URL`, its receipt."""
    receipt = tmp_path / f"receipt-url-{len(list(tmp_path.glob('receipt-url-*')))}.json"
    assert cli.main(["flash", url, loop.path, "--yes", "--receipt", str(receipt)]) == 0
    return json.loads(receipt.read_text())
