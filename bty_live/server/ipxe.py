"""iPXE scripts: the bootstrap a TFTP root or DHCP hands out, and the script per MAC.

    bootstrap (TFTP or DHCP boot file)      #!ipxe
                                            chain http://SERVER/ipxe/${mac:hexhyp}?token=T
    per MAC, to flash, wait or open the TUI: kernel + initrd of the netboot live system with
                                            bty.server=URL bty.token=T BOOTIF=01-${mac:hexhyp}
    per MAC, once flashed (or localboot):   exit (the firmware boots the next device: the disk)

iPXE expands `${mac:hexhyp}` itself, so the kernel learns the MAC of the NIC it booted from.
"""

from __future__ import annotations

from bty_live.protocol.wire import TOKEN_QUERY
from bty_live.server.config import NetbootFiles

NETBOOT_ROUTE = "/netboot"
IPXE_ROUTE = "/ipxe"


def _text(why: str) -> str:
    """A message safe inside an iPXE `echo`: one line, no ${...} expansion."""
    return " ".join(why.replace("$", "").split())


def bootstrap_script(base_url: str, token: str) -> str:
    """The first script: chain to this server's script for the booting NIC."""
    base = base_url.rstrip("/")
    return ("#!ipxe\n"
            "echo bty-live: asking the bty server what to do with ${mac}\n"
            f"chain {base}{IPXE_ROUTE}/${{mac:hexhyp}}?{TOKEN_QUERY}={token} || goto failed\n"
            "exit\n"
            ":failed\n"
            f"echo bty-live: the bty server at {base} did not answer; booting the next device in 10 s\n"
            "sleep 10\n"
            "exit 1\n")


def agent_script(base_url: str, token: str, netboot: NetbootFiles, mac: str, why: str) -> str:
    """Boot the netboot live system, whose `bty agent` asks this server for its plan."""
    base = base_url.rstrip("/")
    args = " ".join(part for part in (
        f"initrd={netboot.initrd}",
        f"bty.server={base}",
        f"bty.token={token}",
        "BOOTIF=01-${mac:hexhyp}",
        netboot.kernel_args,
    ) if part)
    return ("#!ipxe\n"
            f"echo bty-live: {mac}: {_text(why)}\n"
            f"kernel {base}{NETBOOT_ROUTE}/{netboot.kernel} {args}\n"
            f"initrd --name {netboot.initrd} {base}{NETBOOT_ROUTE}/{netboot.initrd}\n"
            "boot\n")


def localboot_script(mac: str, why: str) -> str:
    """Leave iPXE: the firmware goes on to the next boot device, the flashed disk."""
    return ("#!ipxe\n"
            f"echo bty-live: {mac}: {_text(why)}\n"
            "exit\n")


def no_netboot_script(mac: str) -> str:
    return ("#!ipxe\n"
            f"echo bty-live: {mac}: the bty server has no netboot kernel (start it with --netboot DIR); "
            "booting the next device in 10 s\n"
            "sleep 10\n"
            "exit 1\n")
