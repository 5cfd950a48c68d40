"""What the agent tells the server about its machine: DMI identity, NICs, disks with their ids.

Disks come with their eligibility verdict (the same rules as `bty disks`), so an operator can
write a selector that matches exactly one eligible disk without a console on the machine.
"""

from __future__ import annotations

import os
import platform
from typing import Any

from bty_live import __version__
from bty_live.disk.discovery import discover_disks
from bty_live.disk.eligibility import assess_all, eligibility_context
from bty_live.disk.model import Disk
from bty_live.system.machine import MachineIdentity, read_machine_identity


def disk_summary(disk: Disk, reasons: tuple[str, ...]) -> dict[str, Any]:
    return {
        "name": disk.name,
        "path": disk.path,
        "size": disk.size,
        "transport": disk.transport,
        "vendor": disk.vendor,
        "model": disk.model,
        "serial": disk.serial,
        "wwn": disk.wwn,
        "by_id": list(disk.by_id),
        "by_path": list(disk.by_path),
        "removable": disk.removable,
        "rotational": disk.rotational,
        "read_only": disk.read_only,
        "pttype": disk.pttype,
        "eligible": not reasons,
        "reasons": list(reasons),
    }


def collect_inventory(mac: str, identity: MachineIdentity | None = None,
                      disks: list[Disk] | None = None) -> dict[str, Any]:
    identity = identity or read_machine_identity()
    found = discover_disks() if disks is None else disks
    ctx = eligibility_context()
    return {
        "mac": mac,
        "machine": identity.to_dict(),
        "disks": [disk_summary(a.disk, a.reasons) for a in assess_all(found, ctx)],
        "hostname": platform.node(),
        "kernel": os.uname().release,
        "bty_version": __version__,
    }
