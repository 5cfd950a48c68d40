"""Driving the TUI in tests: waiting on state (never on time), choosing options with the keys a
person would press, and reading what the screen shows."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot

from bty_live.image.sources import ByteSource, RawStream
from bty_live.system.actions import SystemActions
from bty_live.tui.widgets import Choices

#: generous: loaded CI machines are slow, and nothing here sleeps this long when all is well
WAIT_SECONDS = 60.0


async def wait_for(pilot: Pilot[Any], condition: Callable[[], bool], what: str,
                   timeout: float = WAIT_SECONDS) -> None:
    """Let the app run until `condition()` holds; fail naming `what` (and the screen) if it never does."""
    loop_time = 0.0
    while not condition():
        if loop_time > timeout:
            raise AssertionError(f"timed out waiting for {what}; the screen shows:\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)
        loop_time += 0.05


async def wait_for_screen(pilot: Pilot[Any], screen_type: type, timeout: float = WAIT_SECONDS) -> None:
    """Wait until `screen_type` is on top *and* painted: a screen is pushed before its first layout,
    and reading it in between shows nothing."""
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, screen_type) and screen_text(pilot.app).strip() != "",
                   f"the {screen_type.__name__}", timeout)


async def move_to(pilot: Pilot[Any], choices: Choices, option_id: str) -> None:
    """Press Down until `option_id` is highlighted, as a person would (arrows wrap around)."""
    for _ in range(choices.option_count + 1):
        if choices.highlighted_id == option_id:
            return
        await pilot.press("down")
    raise AssertionError(f"{option_id} cannot be highlighted; options: "
                         f"{[(o.id, o.disabled) for o in choices.options]}")


async def choose(pilot: Pilot[Any], choices: Choices, option_id: str) -> None:
    await move_to(pilot, choices, option_id)
    await pilot.press("enter")


def screen_text(app: App[Any]) -> str:
    """The screen as plain text, as a terminal would show it (the snapshot's text, without SVG)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


@dataclass
class RecordedActions:
    """Stands in for `systemctl reboot|poweroff`: records instead of acting."""

    calls: list[str] = field(default_factory=list)

    def reboot(self) -> None:
        self.calls.append("reboot")

    def poweroff(self) -> None:
        self.calls.append("poweroff")

    def as_system_actions(self) -> SystemActions:
        return SystemActions(reboot=self.reboot, poweroff=self.poweroff)


class HeldSource:
    """A ByteSource that hands out its first `hold_after` bytes, then waits for `release`: a stick
    that stalls mid-image. The engine is real; it just has to wait for bytes, so a test can act
    "midway" without racing the copy. `reached` is set once the stream is held."""

    def __init__(self, inner: ByteSource, hold_after: int, release: threading.Event) -> None:
        self.inner = inner
        self.name = inner.name
        self.size = inner.size
        self.path = inner.path
        self.hold_after = hold_after
        self.release = release
        self.reached = threading.Event()

    def open(self) -> RawStream:
        return _HeldStream(self, self.inner.open())


class _HeldStream:
    def __init__(self, source: HeldSource, raw: RawStream) -> None:
        self.source = source
        self.raw = raw
        self.offset = 0

    def _room(self, wanted: int) -> int:
        held = self.source
        if self.offset >= held.hold_after:
            held.reached.set()
            held.release.wait(WAIT_SECONDS)
            return wanted
        return min(wanted, held.hold_after - self.offset)

    def read(self, size: int = -1, /) -> bytes:
        data = self.raw.read(self._room(size if size >= 0 else 1 << 20))
        self.offset += len(data)
        return data

    def readinto(self, buffer: memoryview, /) -> int | None:
        n = self.raw.readinto(memoryview(buffer)[: self._room(len(buffer))])
        self.offset += n or 0
        return n

    def close(self) -> None:
        self.raw.close()
