"""Hot-plug: tell a front-end when a disk appears, disappears or changes.

The events are only a nudge: a front-end re-enumerates with `bty_live.disk.discovery.discover_disks`
on each one, so nothing here has to describe a disk. Events come from udevd when it runs
(after its rules have created the by-id links), else straight from the kernel's uevents.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyudev

log = logging.getLogger(__name__)

Action = Literal["added", "removed", "changed"]
Source = Literal["udev", "kernel"]

UDEV_CONTROL = Path("/run/udev/control")
_ACTIONS: dict[str, Action] = {"add": "added", "remove": "removed", "change": "changed"}


@dataclass(frozen=True)
class DiskEvent:
    action: Action
    name: str
    path: str


def default_source(udev_control: Path = UDEV_CONTROL) -> Source:
    """'udev' when a udevd is running (its control socket exists), else 'kernel'.

    Listening to udev when no udevd runs would never deliver anything.
    """
    return "udev" if udev_control.exists() else "kernel"


def disk_event(action: str | None, devtype: str | None, sys_path: str) -> DiskEvent | None:
    """The DiskEvent for one block uevent, or None when it does not concern a disk.

    A partition appearing, vanishing or changing is reported as its disk "changed".
    """
    mapped = _ACTIONS.get(action or "")
    if mapped is None:
        return None
    if devtype == "disk":
        name = os.path.basename(sys_path)
        return DiskEvent(mapped, name, f"/dev/{name}")
    if devtype == "partition":
        parent = os.path.basename(os.path.dirname(sys_path))
        return DiskEvent("changed", parent, f"/dev/{parent}")
    return None


class DiskWatcher:
    """Calls `callback(DiskEvent)` from a background thread for each disk event.

    The callback must be quick and thread-safe (a Textual app should `post_message`).
    Use as a context manager, or call start() and stop().
    """

    def __init__(self, callback: Callable[[DiskEvent], None], *, source: Source | None = None) -> None:
        self._callback = callback
        self.source: Source = source or default_source()
        self._observer: Any = None

    def start(self) -> None:
        """Start listening; every disk event after this returns reaches the callback."""
        if self._observer is not None:
            return
        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=self.source)
        monitor.filter_by("block")
        monitor.start()  # bind now, not in the thread: no event after start() returns may be lost
        self._observer = pyudev.MonitorObserver(monitor, callback=self._on_device, name="bty-disk-watcher")
        self._observer.start()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer = None

    def __enter__(self) -> DiskWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_device(self, device: pyudev.Device) -> None:
        event = disk_event(device.action, device.device_type, device.sys_path)
        if event is None:
            return
        try:
            self._callback(event)
        except Exception:  # an exception would end the observer thread and every later event
            log.exception("disk event callback failed for %s", event)
