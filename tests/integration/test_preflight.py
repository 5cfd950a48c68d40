"""The fake-capacity preflight on real loop devices.

A loop device cannot lie about its size, and this kernel has no device-mapper or nbd, so the
fake stick is a real loop device seen through a BlockTarget whose offsets wrap around at the
real capacity (as counterfeit controllers do), or a read function that loses what lies beyond it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.disk.discovery import find_disk
from bty_live.errors import TargetRefusedError, exit_code_for
from bty_live.events import Event
from bty_live.flash import engine
from bty_live.flash.plan import FlashOptions
from bty_live.flash.preflight import MARKER_SIZE, marker_offsets, preflight_capacity, preflight_if_wanted, wanted
from bty_live.flash.prepare import prepare_plan_for
from bty_live.flash.target import BlockTarget
from bty_live.image.catalog import describe_image
from bty_live.image.source import load_image_source
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image, device_equals_file, read_device

MakeLoop = Callable[..., LoopDevice]


class WrapAroundTarget(BlockTarget):
    """A 64 MiB announcement over a device that really holds `capacity` bytes: every offset lands
    at offset % capacity, for writes and reads alike."""

    capacity = 8 * MiB

    def pwrite(self, view: memoryview, offset: int) -> None:
        super().pwrite(view, offset % self.capacity)

    def preadinto(self, view: memoryview, offset: int) -> int:
        return super().preadinto(view, offset % self.capacity)


def open_target(loop: LoopDevice, cls: type[BlockTarget] = BlockTarget) -> BlockTarget:
    base = BlockTarget.open(loop.path)
    return cls(base.path, base.fd, base.info)


def test_a_genuine_loop_device_forced_through_the_preflight_passes_with_markers_up_to_the_last_block(
        make_loop: MakeLoop) -> None:
    loop = make_loop(64 * MiB)
    target = open_target(loop)
    try:
        summary = preflight_capacity(target)
    finally:
        target.close()
    assert summary == "capacity preflight: 17 markers up to 64 MiB read back intact"
    last = read_device(loop.path, 64 * MiB - MARKER_SIZE, MARKER_SIZE)
    assert last.startswith(b"bty-live capacity preflight nonce=")
    assert f"offset={64 * MiB - MARKER_SIZE}\n".encode() in last


def test_a_stick_that_wraps_around_at_8_mib_of_64_is_refused_as_fake_capacity(make_loop: MakeLoop) -> None:
    loop = make_loop(64 * MiB)
    target = open_target(loop, WrapAroundTarget)
    try:
        with pytest.raises(TargetRefusedError) as refused:
            preflight_capacity(target)
    finally:
        target.close()
    assert str(refused.value) == (
        f"target {loop.path} announces 64 MiB but holds only about 8 MiB (the marker at 52 MiB read back as "
        "the one at 60 MiB): it is fake-capacity media; use another disk")


def test_a_stick_that_loses_writes_beyond_its_capacity_is_refused_naming_the_lost_marker(
        make_loop: MakeLoop) -> None:
    loop = make_loop(64 * MiB)
    target = open_target(loop)

    def read_nothing_beyond_24_mib(view: memoryview, offset: int) -> int:
        if offset >= 24 * MiB:
            view[:] = bytes(len(view))
            return len(view)
        return target.preadinto(view, offset)

    try:
        with pytest.raises(TargetRefusedError, match=r"announces 64 MiB but holds only about 24 MiB \(the marker "
                                                     r"at 64 MiB did not read back\): it is fake-capacity"):
            preflight_capacity(target, read=read_nothing_beyond_24_mib)
    finally:
        target.close()


def test_markers_never_overlap_nor_pass_the_end_of_a_tiny_disk() -> None:
    for size, block in ((10_000, 512), (20_000, 4096), (64 * MiB, 512), (1 << 40, 4096)):
        offsets = marker_offsets(size, block)
        assert offsets[-1] + MARKER_SIZE <= size and all(o % block == 0 for o in offsets)
        assert all(b - a >= MARKER_SIZE for a, b in zip(offsets, offsets[1:], strict=False))


def test_markers_never_carry_a_boot_signature(make_loop: MakeLoop) -> None:
    loop = make_loop(8 * MiB)
    target = open_target(loop)
    try:
        preflight_capacity(target)
    finally:
        target.close()
    assert read_device(loop.path, 510, 2) == b"\0\0"
    blkid = subprocess.run(["blkid", "-p", loop.path], capture_output=True, text=True)
    assert blkid.returncode == 2 and blkid.stdout == ""  # nothing recognisable on it


def test_only_removable_and_usb_disks_get_the_preflight_unless_forced(make_loop: MakeLoop) -> None:
    loop_disk = find_disk(make_loop(8 * MiB).path)
    assert (loop_disk.transport, loop_disk.removable) == ("loop", False)
    assert not wanted(loop_disk, None)
    assert wanted(replace(loop_disk, removable=True), None)
    assert wanted(replace(loop_disk, transport="usb"), None)
    assert not wanted(replace(loop_disk, transport="usb"), False)  # --no-preflight
    assert wanted(loop_disk, True)


def test_a_non_removable_disk_skips_the_preflight_entirely(make_loop: MakeLoop) -> None:
    loop = make_loop(8 * MiB)
    target = open_target(loop)

    def must_not_read(view: memoryview, offset: int) -> int:
        raise AssertionError("the preflight ran on a non-removable disk")

    try:
        assert preflight_if_wanted(target, find_disk(loop.path), None, read=must_not_read) is None
    finally:
        target.close()
    assert not target.touched
    assert read_device(loop.path, 0, MiB) == bytes(MiB)


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "disk.img", 16 * MiB, files_bytes=MiB)


def test_the_engine_runs_the_preflight_on_a_usb_stick_before_writing_and_the_image_still_lands(
        raw_image: Path, make_loop: MakeLoop) -> None:
    loop = make_loop(16 * MiB)  # the image's size: no GPT fix-up changes its bytes
    plan = prepare_plan_for(load_image_source(describe_image(raw_image)), loop.path, FlashOptions())
    plan = replace(plan, disk=replace(plan.disk, removable=True))  # as a USB stick reports itself
    messages: list[str] = []
    engine.flash(plan, lambda event: messages.append(event.message or "") if isinstance(event, Event) else None)
    assert "capacity preflight: 17 markers up to 16 MiB read back intact" in messages
    assert device_equals_file(loop.path, raw_image)  # no marker is left inside the image


def test_bty_flash_no_preflight_turns_it_off(raw_image: Path, make_loop: MakeLoop,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool | None] = []
    real_flash = engine.flash

    def spy(plan, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(plan.options.preflight)
        return real_flash(plan, *args, **kwargs)

    monkeypatch.setattr(engine, "flash", spy)
    loop = make_loop(32 * MiB)
    assert cli.main(["flash", str(raw_image), loop.path, "--yes", "--no-preflight"]) == 0
    assert cli.main(["flash", str(raw_image), loop.path, "--yes"]) == 0
    assert seen == [False, None]


def test_the_engine_refuses_a_fake_capacity_stick_with_exit_code_7_and_leaves_it_wiped(
        raw_image: Path, make_loop: MakeLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = make_loop(64 * MiB, fill=b"old data")
    plan = prepare_plan_for(load_image_source(describe_image(raw_image)), loop.path, FlashOptions())
    plan = replace(plan, disk=replace(plan.disk, transport="usb"))
    real_open = BlockTarget.open
    monkeypatch.setattr(BlockTarget, "open",
                        classmethod(lambda cls, path, direct=True: _wrapped(real_open(path, direct=direct))))
    with pytest.raises(TargetRefusedError, match="fake-capacity media; use another disk") as refused:
        engine.flash(plan)
    assert exit_code_for(refused.value) == 7
    assert read_device(loop.path, 0, MiB) == bytes(MiB)  # touched by the markers: wiped, never half-marked


def _wrapped(target: BlockTarget) -> BlockTarget:
    return WrapAroundTarget(target.path, target.fd, target.info)
