"""The Capture action, driven with the keys a person presses, against the real capture engine on
real loop devices (root): a disk of this machine becomes an image in the images directory, listed
and ready to flash. Nothing here waits on time: every wait is for a state."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from bty_live.capture import engine as capture_engine
from bty_live.capture.engine import CaptureResult
from bty_live.capture.plan import CapturePlan
from bty_live.capture.reader import DiskReader
from bty_live.events import EventSink
from bty_live.image.manifest import load_manifest, manifest_path_for
from bty_live.tui.app import BtyApp, make_app
from bty_live.tui.backend import real_backend
from bty_live.tui.screens import (
    CaptureCancelDialog,
    CaptureConfirmScreen,
    CaptureDisksScreen,
    CaptureDoneScreen,
    CaptureFormScreen,
    CaptureProgressScreen,
    DisksScreen,
    ErrorScreen,
    ImagesScreen,
)
from bty_live.tui.screens.capture_form import NameField, TrimBox
from bty_live.tui.widgets import Choices
from tests.conftest import LoopDevice
from tests.imagekit import MiB, device_equals_file, read_device
from tests.integration.tui.tui_helpers import (
    WAIT_SECONDS,
    RecordedActions,
    choose,
    screen_text,
    wait_for,
    wait_for_screen,
)

Scenario = Callable[[BtyApp, Pilot[int]], Coroutine[Any, Any, None]]
#: the source disks are bigger than the image they hold: --trim has something to leave out
DISK_SIZE = 96 * MiB


def drive(app: BtyApp, scenario: Scenario) -> None:
    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await scenario(app, pilot)

    asyncio.run(main())


def disk_holding(make_loop: Callable[..., LoopDevice], image: Path, size: int = DISK_SIZE) -> LoopDevice:
    loop = make_loop(size)
    subprocess.run(["dd", f"if={image}", f"of={loop.path}", "bs=4M", "oflag=direct", "status=none"], check=True)
    return loop


def shows(app: BtyApp, *texts: str) -> bool:
    """Each text is on the screen, wherever the lines wrap it (whitespace is ignored)."""
    shown = "".join(screen_text(app).split())
    missing = [text for text in texts if "".join(text.split()) not in shown]
    assert not missing, f"not shown: {missing}; the screen shows:\n{screen_text(app)}"
    return True


def decompress(image: Path, out: Path) -> Path:
    subprocess.run(["zstd", "-q", "-d", "-f", str(image), "-o", str(out)], check=True)
    return out


def mount(device: str, mountpoint: Path) -> Path:
    mountpoint.mkdir()
    subprocess.run(["mount", device, str(mountpoint)], check=True)
    return mountpoint  # make_loop unmounts it at the end


async def capture_disks(app: BtyApp, pilot: Pilot[int]) -> CaptureDisksScreen:
    """From the Images screen: c, then wait for the first scan."""
    images = app.screen
    assert isinstance(images, ImagesScreen)
    await wait_for(pilot, lambda: images.loads > 0, "the images list")
    await pilot.press("c")
    await wait_for_screen(pilot, CaptureDisksScreen)
    disks = app.screen
    assert isinstance(disks, CaptureDisksScreen)
    await wait_for(pilot, lambda: disks.scans > 0, "the first disk scan")
    return disks


async def capture_form(app: BtyApp, pilot: Pilot[int], loop: LoopDevice) -> CaptureFormScreen:
    disks = await capture_disks(app, pilot)
    await wait_for(pilot, lambda: loop.name in disks.disks, f"{loop.name} in the disks list")
    await choose(pilot, disks.query_one(Choices), loop.name)
    await wait_for_screen(pilot, CaptureFormScreen)
    form = app.screen
    assert isinstance(form, CaptureFormScreen)
    return form


async def confirm_capture(app: BtyApp, pilot: Pilot[int], loop: LoopDevice, name: str) -> CaptureConfirmScreen:
    await capture_form(app, pilot, loop)
    await pilot.press("ctrl+u", *name, "enter")
    await wait_for_screen(pilot, CaptureConfirmScreen)
    confirm = app.screen
    assert isinstance(confirm, CaptureConfirmScreen)
    return confirm


# -- the happy paths -------------------------------------------------------------------------------


def test_c_captures_a_disk_trimmed_into_the_images_directory_and_the_images_list_shows_it(
        images_dir: Path, raw_image: Path, make_loop: Callable[..., LoopDevice], tmp_path: Path,
        actions: RecordedActions) -> None:
    source = disk_holding(make_loop, raw_image)
    output = images_dir / "reference.img.zst"

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        form = await capture_form(app, pilot, source)
        assert form.query_one(TrimBox).value  # a partition table: trimmed by default
        assert form.query_one(NameField).value.startswith(f"{source.name}-")  # a loop: no model, no serial

        await pilot.press("ctrl+u", *"reference", "enter")
        await wait_for_screen(pilot, CaptureConfirmScreen)
        assert shows(app, f"Read {source.path} into an image in {images_dir}",
                     "the first 64 MiB, up to the end of the last partition", str(output),
                     "Enough space, even if nothing compresses")

        await pilot.press("enter")  # the Progress screen, then (quickly: 64 MiB) the Done screen
        await wait_for_screen(pilot, CaptureDoneScreen, timeout=120)
        manifest = load_manifest(output)
        assert manifest is not None
        assert shows(app, str(output), manifest.blake3, str(manifest_path_for(output)), "64 MiB image")

        await pilot.press("i")  # back to images: the new image is listed, highlighted
        await wait_for_screen(pilot, ImagesScreen)
        images = app.screen
        assert isinstance(images, ImagesScreen)
        await wait_for(pilot, lambda: str(output) in images.entries, "the new image in the list")
        assert images.query_one(Choices).highlighted_id == str(output)
        assert images.entries[str(output)].problem is None

    drive(make_app(images_dir=images_dir, actions=actions.as_system_actions(), follow_hotplug=False), scenario)

    # the GPT of the image, regenerated for its 64 MiB: the trimmed capture is the image itself
    assert decompress(output, tmp_path / "trimmed.img").read_bytes() == raw_image.read_bytes()
    assert not output.with_name(output.name + ".partial").exists()


def test_an_untrimmed_capture_holds_every_byte_of_the_disk_and_flash_it_now_opens_its_disks_screen(
        images_dir: Path, raw_image: Path, make_loop: Callable[..., LoopDevice], tmp_path: Path,
        actions: RecordedActions) -> None:
    source = disk_holding(make_loop, raw_image)
    output = images_dir / "whole.img.zst"

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        form = await capture_form(app, pilot, source)
        await pilot.press("ctrl+u", *"whole", "tab", "space")  # Tab to the checkbox, Space: not trimmed
        assert not form.query_one(TrimBox).value
        await pilot.press("enter")  # Enter on the checkbox goes on, as on the name
        await wait_for_screen(pilot, CaptureConfirmScreen)
        assert shows(app, "the whole disk, 96 MiB")

        await pilot.press("enter")
        await wait_for_screen(pilot, CaptureDoneScreen, timeout=120)
        await pilot.press("f")  # flash it now
        await wait_for_screen(pilot, DisksScreen)
        disks = app.screen
        assert isinstance(disks, DisksScreen) and disks.entry.path == output
        assert disks.entry.size == DISK_SIZE and disks.entry.problem is None

    drive(make_app(images_dir=images_dir, actions=actions.as_system_actions(), follow_hotplug=False), scenario)

    assert device_equals_file(source.path, decompress(output, tmp_path / "whole.img"))


# -- refusals --------------------------------------------------------------------------------------


def test_a_mounted_disk_is_listed_as_not_capturable_with_its_mount_point(
        images_dir: Path, make_loop: Callable[..., LoopDevice], tmp_path: Path, actions: RecordedActions) -> None:
    loop = make_loop(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", loop.path], check=True)
    mountpoint = mount(loop.path, tmp_path / "mnt")

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        disks = await capture_disks(app, pilot)
        await wait_for(pilot, lambda: loop.name in disks.disks, f"{loop.name} in the disks list")
        choices = disks.query_one(Choices)
        option = choices.get_option(loop.name)
        assert option.disabled
        said = " ".join(str(option.prompt).split())
        assert (f"not capturable: has {mountpoint} mounted (from {loop.name}); unmount it first, a mounted "
                "filesystem changes while it is read") in said
        await pilot.press("enter")  # the highlighted disk, never the mounted one
        assert choices.highlighted_id != loop.name

    drive(make_app(images_dir=images_dir, actions=actions.as_system_actions(), follow_hotplug=False), scenario)


def test_a_name_that_exists_in_the_images_directory_is_refused_in_the_form(
        images_dir: Path, raw_image: Path, make_loop: Callable[..., LoopDevice], actions: RecordedActions) -> None:
    source = disk_holding(make_loop, raw_image)
    (images_dir / "taken.img.zst").write_bytes(b"an older capture")

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        form = await capture_form(app, pilot, source)
        await pilot.press("ctrl+u", *"taken", "enter")
        await pilot.pause()
        assert app.screen is form and not form.planning
        assert shows(app, f"taken.img.zst already exists in {images_dir}: choose another name.")
        await pilot.press("ctrl+u", *"bad/name")
        assert shows(app, "Use letters, digits")

    drive(make_app(images_dir=images_dir, actions=actions.as_system_actions(), follow_hotplug=False), scenario)
    assert (images_dir / "taken.img.zst").read_bytes() == b"an older capture"


def test_an_images_directory_smaller_than_the_disks_data_is_refused_at_the_confirmation(
        make_loop: Callable[..., LoopDevice], tmp_path: Path, actions: RecordedActions) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data.bin").write_bytes(__import__("random").Random(3).randbytes(16 * MiB))
    source = make_loop(64 * MiB)  # ext4 on the whole disk, 16 MiB in use: the estimate says so
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), source.path], check=True)
    small = make_loop(8 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", small.path], check=True)
    images = mount(small.path, tmp_path / "images")

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        confirm = await confirm_capture(app, pilot, source, "toobig")
        assert confirm.draft.no_room is not None
        assert shows(app, "Not enough space: only", f"free in {images}, less than the",
                     "Nothing can be captured into this directory now")
        await pilot.press("enter")  # refused: the key does nothing
        await pilot.pause()
        assert app.screen is confirm and not app.capturing

    drive(make_app(images_dir=images, actions=actions.as_system_actions(), follow_hotplug=False), scenario)
    assert sorted(p.name for p in images.iterdir()) == ["lost+found"]


# -- cancel ----------------------------------------------------------------------------------------


def test_esc_then_yes_mid_capture_stops_it_and_leaves_no_file(
        images_dir: Path, raw_image: Path, make_loop: Callable[..., LoopDevice], monkeypatch: pytest.MonkeyPatch,
        actions: RecordedActions) -> None:
    source = disk_holding(make_loop, raw_image)
    output = images_dir / "stopped.img.zst"
    stalled = threading.Event()
    real_read = DiskReader.read_exactly

    def held_capture(plan: CapturePlan, sink: EventSink, cancel: threading.Event) -> CaptureResult:
        """The real engine on a disk that stalls after 16 MiB until the capture is cancelled:
        the test acts midway without racing the copy."""
        def read_exactly(reader: DiskReader, view: memoryview, offset: int, length: int) -> None:
            if offset >= 16 * MiB:
                stalled.set()
                cancel.wait(WAIT_SECONDS)
            real_read(reader, view, offset, length)

        monkeypatch.setattr(DiskReader, "read_exactly", read_exactly)
        return capture_engine.capture(plan, sink, cancel)

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        await confirm_capture(app, pilot, source, "stopped")
        await pilot.press("enter")
        await wait_for_screen(pilot, CaptureProgressScreen)
        progress = app.screen
        assert isinstance(progress, CaptureProgressScreen)
        await wait_for(pilot, stalled.is_set, "the capture midway")
        assert output.with_name("stopped.img.zst.partial").exists()

        await pilot.press("escape")
        await wait_for_screen(pilot, CaptureCancelDialog)
        assert shows(app, "stopped.img.zst.partial is removed")
        await pilot.press("y")
        await wait_for_screen(pilot, ErrorScreen, timeout=120)
        assert shows(app, "Cancelled", "removed stopped.img.zst.partial", "the disk was not changed")
        assert not app.capturing

    backend = replace(real_backend(), capture=held_capture)
    drive(make_app(images_dir=images_dir, backend=backend, actions=actions.as_system_actions(),
                   follow_hotplug=False), scenario)
    assert sorted(p.name for p in images_dir.iterdir() if p.name.startswith("stopped")) == []
    assert read_device(source.path, 0, MiB) == raw_image.read_bytes()[:MiB]  # the disk is only read
