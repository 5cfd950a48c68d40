"""Who is this machine: DMI identity and network interfaces, read from sysfs.

Used by tuning (templated hostnames, the CIJOE config), the known-good ledger (keyed by machine
model) and the PXE agent's inventory. Reads only sysfs and /proc: no tools, no root needed for
most fields (the DMI serial is root-only on most systems and comes back None otherwise).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bty_live.system.sysfs import listdir, read_text

DMI = Path("/sys/class/dmi/id")
NET = Path("/sys/class/net")
_PLACEHOLDERS = {
    "",
    "to be filled by o.e.m.",
    "default string",
    "system serial number",
    "not specified",
    "none",
    "0123456789",
    "123456789",
}


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str
    driver: str | None
    carrier: bool | None  # link up; None when the interface is down and cannot tell


@dataclass(frozen=True)
class MachineIdentity:
    vendor: str | None
    product: str | None
    serial: str | None
    uuid: str | None
    board: str | None
    nics: tuple[Nic, ...] = field(default=())
    boot_mac: str | None = None  # the NIC the machine network-booted from, if known

    @property
    def model(self) -> str:
        """'vendor product', the key the known-good ledger groups machines by."""
        return " ".join(x for x in (self.vendor, self.product) if x) or "unknown model"

    @property
    def primary_mac(self) -> str | None:
        if self.boot_mac:
            return self.boot_mac
        return self.nics[0].mac if self.nics else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model
        return data


def _dmi(name: str, root: Path) -> str | None:
    value = read_text(root / name) or ""
    return None if value.lower() in _PLACEHOLDERS else value


def _nics(root: Path) -> tuple[Nic, ...]:
    """Physical interfaces (those with a device behind them), sorted by name; no lo, bridges, veths."""
    found = []
    for name in listdir(root):
        directory = root / name
        if not (directory / "device").exists():
            continue
        mac = (read_text(directory / "address") or "").lower()
        if not mac or mac == "00:00:00:00:00:00":
            continue
        driver = None
        driver_link = directory / "device" / "driver"
        if driver_link.exists():
            driver = os.path.basename(os.path.realpath(driver_link))
        state = read_text(directory / "carrier")  # unreadable while the interface is down
        carrier = None if state is None else state == "1"
        found.append(Nic(name=name, mac=mac, driver=driver, carrier=carrier))
    return tuple(found)


def boot_mac_from_cmdline(cmdline: str) -> str | None:
    """pxelinux/iPXE's BOOTIF=01-aa-bb-cc-dd-ee-ff, or bty.mac=aa:bb:..., normalised."""
    match = re.search(r"(?:^|\s)BOOTIF=(?:01-)?([0-9a-fA-F]{2}(?:[-:][0-9a-fA-F]{2}){5})", cmdline)
    if not match:
        match = re.search(r"(?:^|\s)bty\.mac=([0-9a-fA-F]{2}(?:[-:][0-9a-fA-F]{2}){5})", cmdline)
    return match.group(1).replace("-", ":").lower() if match else None


def read_machine_identity(dmi: Path = DMI, net: Path = NET, cmdline: str | None = None) -> MachineIdentity:
    if cmdline is None:
        try:
            cmdline = Path("/proc/cmdline").read_text()
        except OSError:
            cmdline = ""
    return MachineIdentity(
        vendor=_dmi("sys_vendor", dmi),
        product=_dmi("product_name", dmi),
        serial=_dmi("product_serial", dmi),
        uuid=_dmi("product_uuid", dmi),
        board=_dmi("board_name", dmi),
        nics=_nics(net),
        boot_mac=boot_mac_from_cmdline(cmdline),
    )
