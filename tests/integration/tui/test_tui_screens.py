"""Screen behaviour that needs no disk: driven on recorded data, like the snapshots."""

from __future__ import annotations

import asyncio

from bty_live.disk.hotplug import DiskEvent
from bty_live.tui.messages import DiskHotplug
from bty_live.tui.screens import ConfirmScreen, DisksScreen, ImagesScreen
from tests.integration.tui.snapshot_app import confirm, snapshot_app
from tests.integration.tui.tui_helpers import screen_text, wait_for_screen


def test_a_disk_unplugged_while_its_confirmation_is_open_can_no_longer_be_confirmed() -> None:
    async def main() -> None:
        app = snapshot_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await confirm(pilot)  # "nvme0n1" typed, not yet Enter
            app.post_message(DiskHotplug(DiskEvent("removed", "nvme0n1", "/dev/nvme0n1")))
            await pilot.pause()
            assert "/dev/nvme0n1 changed after it was chosen" in screen_text(app)
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen) and not app.flashing
            await pilot.press("escape")
            await wait_for_screen(pilot, DisksScreen)

    asyncio.run(main())


def test_esc_walks_back_from_the_confirmation_to_the_images_without_writing() -> None:
    async def main() -> None:
        app = snapshot_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await confirm(pilot)
            await pilot.press("escape")
            await wait_for_screen(pilot, DisksScreen)
            await pilot.press("escape")
            await wait_for_screen(pilot, ImagesScreen)
            assert not app.flashing and len(app.screen_stack) == 1

    asyncio.run(main())
