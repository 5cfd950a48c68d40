"""Every screen at 80x24, from recorded data: SVG snapshots (pytest-textual-snapshot), and a check
that no screen draws a glyph the Linux console's font lacks.

Update the snapshots after an intended change with `pytest tests/integration/tui --snapshot-update`, and
look at the report it writes before committing them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from bty_live.tui.app import make_app
from tests.integration.tui import recorded
from tests.integration.tui.snapshot_app import CP437, SCREENS, done, snapshot_app
from tests.integration.tui.tui_helpers import RecordedActions, screen_text, wait_for


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The log shows local times: make them the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("name", SCREENS)
def test_each_screen_matches_its_snapshot_at_80x24(name: str, snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(snapshot_app(), terminal_size=(80, 24), run_before=SCREENS[name])


@pytest.mark.parametrize("name", SCREENS)
def test_each_screen_draws_only_glyphs_the_linux_console_font_has(name: str) -> None:
    async def main() -> str:
        app = snapshot_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await SCREENS[name](pilot)
            return screen_text(app)

    text = asyncio.run(main())
    foreign = sorted({c for c in text if c not in CP437 and c != "\n"})
    assert not foreign, f"{name} draws {foreign!r}, which the console font lacks"


def test_notifications_draw_only_glyphs_the_linux_console_font_has() -> None:
    actions = RecordedActions()

    async def main() -> str:
        app = make_app(images_dir=recorded.IMAGES_DIR, backend=recorded.recorded_backend(),
                       actions=actions.as_system_actions(), follow_hotplug=False)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await done(pilot)
            await pilot.press("b", "y")  # "Reboot: asked the system to reboot..."
            await wait_for(pilot, lambda: bool(app._notifications), "the notification")
            await pilot.pause()
            return screen_text(app)

    text = asyncio.run(main())
    assert actions.calls == ["reboot"] and "Reboot: asked the system to" in text
    assert not sorted({c for c in text if c not in CP437 and c != "\n"})
