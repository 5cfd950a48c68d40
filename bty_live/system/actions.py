"""What the live system does once a run is over (reboot, power off, a root shell), shared by the
TUI and unattended mode. Kept apart from the engine so the TUI's first screen need not import it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SystemActions:
    """What happens after a successful run; injectable so tests never power off the machine."""

    reboot: Callable[[], None]
    poweroff: Callable[[], None]


def systemd_actions() -> SystemActions:
    from bty_live.system.run import run

    def reboot() -> None:
        run(["systemctl", "reboot"], check=False)

    def poweroff() -> None:
        run(["systemctl", "poweroff"], check=False)

    return SystemActions(reboot=reboot, poweroff=poweroff)
