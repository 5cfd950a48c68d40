"""What the keyboard does when keys come fast (a paste, expect, a serial console) and the keys
of the Done screen, on the snapshot app's recorded data: these are about the screens, not the engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from textual import events
from textual.pilot import Pilot

from bty_live.tui.app import BtyApp, make_app
from bty_live.tui.screens import ConfirmScreen, ProgressScreen
from tests.tui import recorded
from tests.tui.snapshot_app import disks
from tests.tui.tui_helpers import RecordedActions, screen_text, wait_for, wait_for_screen

Scenario = Callable[[BtyApp, Pilot[int]], Awaitable[None]]
DISK = "nvme0n1"  # the recorded machine's first eligible disk


def drive(scenario: Scenario, actions: RecordedActions | None = None) -> BtyApp:
    app = make_app(images_dir=recorded.IMAGES_DIR, backend=recorded.recorded_backend(),
                   actions=(actions or RecordedActions()).as_system_actions(), clock=lambda: recorded.NOW,
                   follow_hotplug=False)

    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await scenario(app, pilot)

    asyncio.run(main())
    return app


async def open_confirm(app: BtyApp, pilot: Pilot[int]) -> ConfirmScreen:
    await disks(pilot)
    await pilot.press("enter")
    await wait_for_screen(pilot, ConfirmScreen)
    confirm = app.screen
    assert isinstance(confirm, ConfirmScreen) and confirm.plan.disk.name == DISK
    return confirm


def arrive_at_once(app: BtyApp, *messages: events.Event) -> None:
    """Post the events the way the terminal driver does when they come in one read: all of them
    before the app handles the first (pilot.press waits for the app between keys)."""
    for message in messages:
        app.post_message(message)


def keys(text: str) -> list[events.Event]:
    return [events.Key(char, char) for char in text]


def test_the_disk_name_typed_with_enter_in_one_burst_is_accepted() -> None:
    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        await open_confirm(app, pilot)
        arrive_at_once(app, *keys(DISK), events.Key("enter", "\r"))
        await wait_for(pilot, lambda: isinstance(app.screen, ProgressScreen) or "That is not" in screen_text(app),
                       "the flash to start or the name to be refused")
        assert isinstance(app.screen, ProgressScreen), screen_text(app)

    drive(scenario)


def test_the_disk_name_pasted_then_enter_is_accepted() -> None:
    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        await open_confirm(app, pilot)
        arrive_at_once(app, events.Paste(DISK), events.Key("enter", "\r"))
        await wait_for(pilot, lambda: isinstance(app.screen, ProgressScreen) or "That is not" in screen_text(app),
                       "the flash to start or the name to be refused")
        assert isinstance(app.screen, ProgressScreen), screen_text(app)

    drive(scenario)


def test_a_wrong_name_in_one_burst_is_still_refused_and_the_field_cleared() -> None:
    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        confirm = await open_confirm(app, pilot)
        arrive_at_once(app, *keys("nvme1n1"), events.Key("enter", "\r"))
        await wait_for(pilot, lambda: "That is not" in screen_text(app), "the refusal")
        assert isinstance(app.screen, ConfirmScreen) and confirm.query_one("#name").value == ""  # type: ignore[attr-defined]

    drive(scenario)
