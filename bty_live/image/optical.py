"""ISO 9660 images made for optical drives only: written to a disk, they do not boot.

A Linux live ISO is hybrid (isohybrid, `xorriso -as mkisofs -isohybrid-mbr`): an MBR with boot
code, a partition table and the 0x55AA signature sits in the ISO's unused first 32 KiB, so the
same bytes boot from a CD and from a disk. A Windows install ISO (Microsoft's CDIMAGE/oscdimg)
leaves those 32 KiB empty: it boots only through El Torito, which firmware follows on optical
drives, and its UDF filesystem and `sources/install.wim` are no use on a disk the firmware
cannot boot. Writing one to a stick is the classic "it flashed fine but does not boot".

Told from the image's first MiB: an ISO 9660 primary volume descriptor at 32 KiB (ECMA-119
8.4) and no MBR boot signature at byte 510. Windows media are then recognised by the
descriptor's publisher / data preparer ("MICROSOFT CORPORATION"), application ("CDIMAGE ...")
or volume id (CCCOMA_X64FRE_EN-US_DV9, CPBA_..., CCSA_..., ...).

This only warns (the plan, `bty inspect`): someone may write such an ISO on purpose (a virtual
CD drive, a disk that is read, not booted).
"""

from __future__ import annotations

import re

from bty_live.image.partition_table import MBR_SIGNATURE, is_iso9660

_PVD = 0x8000  # sector 16 of 2048 bytes
#: (field, offset in the descriptor, length): ECMA-119 8.4
_FIELDS = {"volume": (40, 32), "publisher": (318, 128), "preparer": (446, 128), "application": (574, 128)}
#: volume ids of Microsoft's install media: consumer, business, server, enterprise, ... editions
_WINDOWS_VOLUME = re.compile(r"^(CCCOMA|CPBA|CCSA|CENA|CCBA|CES|CSSA|SSS|CTP|GRMC|GSP1RM|IR[0-9]|J_CC)_")
_FIX = ("to make a Windows installer stick use Microsoft's Media Creation Tool, Rufus or woeusb, "
        "or flash a disk image captured from an installed Windows")


def descriptor_fields(head: bytes) -> dict[str, str]:
    """The primary volume descriptor's identifiers (volume, publisher, preparer, application)."""
    fields = {}
    for name, (offset, length) in _FIELDS.items():
        raw = head[_PVD + offset : _PVD + offset + length]
        fields[name] = raw.decode("ascii", "replace").strip()
    return fields


def is_windows_media(fields: dict[str, str]) -> bool:
    return (bool(_WINDOWS_VOLUME.match(fields["volume"]))
            or any(fields[key].upper().startswith("MICROSOFT") for key in ("publisher", "preparer"))
            or fields["application"].upper().startswith("CDIMAGE"))


def optical_only_warning(head: bytes, name: str) -> str | None:
    """Why the image will not boot from a disk, when its head shows an ISO 9660 image without an
    MBR (not hybrid); None for every other image."""
    if not is_iso9660(head) or head[510:512] == MBR_SIGNATURE:
        return None
    fields = descriptor_fields(head)
    if is_windows_media(fields):
        volume = f" (volume {fields['volume']})" if fields["volume"] else ""
        return (f"image {name} is a Windows install ISO{volume}, not a disk image: it does not boot when "
                f"written to a disk; {_FIX}")
    return (f"image {name} is an ISO 9660 image without an MBR (not hybrid): it boots from a CD/DVD drive, "
            "not when written to a disk; use the distribution's hybrid (USB) image if the disk must boot")
