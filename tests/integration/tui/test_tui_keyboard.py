"""What the keyboard does when keys come fast (a paste, expect, a serial console) and the keys
of the Done screen, on the snapshot app's recorded data: these are about the screens, not the engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from textual import events
from textual.binding import Binding
from textual.pilot import Pilot

from bty_live.tui.app import BtyApp, make_app
from bty_live.tui.screens import (
    CancelDialog,
    ConfirmScreen,
    DisksScreen,
    DoneScreen,
    ErrorScreen,
    HelpScreen,
    ImagesScreen,
    LogScreen,
    PowerDialog,
    ProgressScreen,
)
from bty_live.tui.widgets import Choices
from tests.integration.tui import recorded
from tests.integration.tui.snapshot_app import disks, done
from tests.integration.tui.tui_helpers import RecordedActions, move_to, screen_text, wait_for, wait_for_screen

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


# -- the Done screen: reboot and power off ask first, on keys no other screen uses ------------------


async def open_done(app: BtyApp, pilot: Pilot[int]) -> None:
    await done(pilot)
    assert isinstance(app.screen, DoneScreen)


def test_r_and_p_on_the_done_screen_neither_reboot_nor_power_off() -> None:
    actions = RecordedActions()

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        await open_done(app, pilot)
        await pilot.press("r", "p")
        await pilot.pause()
        assert isinstance(app.screen, DoneScreen)

    drive(scenario, actions)
    assert actions.calls == []


def test_the_reboot_key_asks_first_and_no_leaves_the_machine_running() -> None:
    actions = RecordedActions()

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        await open_done(app, pilot)
        await pilot.press("b")
        await wait_for_screen(pilot, PowerDialog)
        assert "Reboot now?" in screen_text(app)
        await pilot.press("enter")  # the highlighted answer is "no"
        await wait_for_screen(pilot, DoneScreen)
        await pilot.press("b")
        await wait_for_screen(pilot, PowerDialog)
        await pilot.press("n")
        await wait_for_screen(pilot, DoneScreen)
        assert actions.calls == []
        await pilot.press("b")
        await wait_for_screen(pilot, PowerDialog)
        await pilot.press("y")
        await wait_for(pilot, lambda: actions.calls == ["reboot"], "the reboot")

    drive(scenario, actions)


def test_the_power_off_key_asks_first_then_powers_off() -> None:
    actions = RecordedActions()

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        await open_done(app, pilot)
        await pilot.press("o")
        await wait_for_screen(pilot, PowerDialog)
        assert "Power off now?" in screen_text(app)
        await pilot.press("escape")
        await wait_for_screen(pilot, DoneScreen)
        assert actions.calls == []
        await pilot.press("o")
        await wait_for_screen(pilot, PowerDialog)
        await pilot.press("y")
        await wait_for(pilot, lambda: actions.calls == ["poweroff"], "the power-off")

    drive(scenario, actions)


def test_reboot_chosen_from_the_list_of_next_steps_asks_first_too() -> None:
    actions = RecordedActions()

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        await open_done(app, pilot)
        await move_to(pilot, app.screen.query_one(Choices), "reboot")
        await pilot.press("enter")
        await wait_for_screen(pilot, PowerDialog)
        assert actions.calls == []
        await pilot.press("y")
        await wait_for(pilot, lambda: actions.calls == ["reboot"], "the reboot")

    drive(scenario, actions)


def _keys_of(bindings: object) -> dict[str, str]:
    """key -> action of a BINDINGS list (Binding objects or tuples)."""
    keys: dict[str, str] = {}
    for binding in bindings:  # type: ignore[attr-defined]
        key, action = (binding.key, binding.action) if isinstance(binding, Binding) else binding[:2]
        for one in key.split(","):
            keys[one] = action
    return keys


def test_the_done_screens_reboot_and_power_off_keys_mean_nothing_else_on_any_screen() -> None:
    done_keys = {key for key, action in _keys_of(DoneScreen.BINDINGS).items() if "reboot" in action
                 or "poweroff" in action}
    assert done_keys == {"b", "o"}
    for screen in (ImagesScreen, DisksScreen, ProgressScreen, ErrorScreen, CancelDialog, HelpScreen, LogScreen):
        clash = done_keys & set(_keys_of(screen.BINDINGS))
        assert not clash, f"{screen.__name__} binds {clash} too"
    assert not done_keys & set(_keys_of(BtyApp.BINDINGS))
