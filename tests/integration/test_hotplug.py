"""Hot-plug events: a real kernel-uevent watcher seeing loop devices come and go."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bty_live.disk.hotplug import DiskEvent, DiskWatcher, default_source, disk_event

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices")


class Recorder:
    """Collects events from the watcher thread; waits for one about a given disk."""

    def __init__(self) -> None:
        self.events: list[DiskEvent] = []
        self._changed = threading.Condition()

    def __call__(self, event: DiskEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait_for(self, name: str, timeout: float = 5.0) -> DiskEvent:
        with self._changed:
            self._changed.wait_for(lambda: any(e.name == name for e in self.events), timeout)
            for event in self.events:
                if event.name == name:
                    return event
        raise AssertionError(f"no event about {name} within {timeout} s; saw {self.events}")

    def settle_and_clear(self, quiet: float = 0.3) -> None:
        time.sleep(quiet)
        with self._changed:
            self.events.clear()


def losetup(*argv: str) -> str:
    return subprocess.run(["losetup", *argv], check=True, capture_output=True, text=True).stdout.strip()


def test_the_source_is_udev_only_when_a_udevd_control_socket_exists(tmp_path: Path) -> None:
    control = tmp_path / "control"
    assert default_source(control) == "kernel"
    control.touch()
    assert default_source(control) == "udev"


def test_disk_uevents_map_to_added_removed_changed() -> None:
    sys_path = "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdc"
    assert disk_event("add", "disk", sys_path) == DiskEvent("added", "sdc", "/dev/sdc")
    assert disk_event("remove", "disk", sys_path) == DiskEvent("removed", "sdc", "/dev/sdc")
    assert disk_event("change", "disk", sys_path) == DiskEvent("changed", "sdc", "/dev/sdc")


def test_a_partition_uevent_is_reported_as_its_disk_changed() -> None:
    event = disk_event("add", "partition", "/sys/devices/virtual/block/loop3/loop3p1")
    assert event == DiskEvent("changed", "loop3", "/dev/loop3")


def test_uevents_that_do_not_concern_a_disk_are_ignored() -> None:
    assert disk_event("bind", "disk", "/sys/devices/virtual/block/loop3") is None
    assert disk_event("add", None, "/sys/devices/virtual/bdi/7:3") is None


def attach_then_detach(tmp_path: Path, watcher_callback: Callable[[DiskEvent], None],
                       recorder: Recorder) -> tuple[DiskEvent, DiskEvent]:
    """Attach a loop device this test owns, then detach it; return the event seen for each."""
    backing = tmp_path / "hotplug.img"
    backing.touch()
    os.truncate(backing, 8 << 20)
    with DiskWatcher(watcher_callback, source="kernel"):
        path = losetup("-f", "--show", str(backing))
        try:
            name = os.path.basename(path)
            attached = recorder.wait_for(name)
            recorder.settle_and_clear()
        finally:
            losetup("-d", path)
        detached = recorder.wait_for(name)
    return attached, detached


@needs_root
def test_the_watcher_sees_a_loop_device_attached_and_detached(tmp_path: Path) -> None:
    recorder = Recorder()
    attached, detached = attach_then_detach(tmp_path, recorder, recorder)
    assert attached.action in ("added", "changed")
    assert detached.action in ("removed", "changed")
    assert attached.path == detached.path == f"/dev/{attached.name}"


@needs_root
def test_a_failing_callback_does_not_stop_later_events(tmp_path: Path) -> None:
    recorder = Recorder()

    def record_then_fail(event: DiskEvent) -> None:
        recorder(event)
        raise RuntimeError("a front-end bug")

    attached, detached = attach_then_detach(tmp_path, record_then_fail, recorder)
    assert attached.name == detached.name
