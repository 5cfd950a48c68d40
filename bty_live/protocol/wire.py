"""The wire format between `bty agent` and `bty serve`: paths, the plan a machine is given, MACs.

One module both sides import, so the agent and the server cannot drift apart. Everything here
is pure data: no HTTP, no SQLite.

    POST /api/v1/machines/{mac}/inventory   the agent: who I am (DMI, NICs, disks with ids)
    GET  /api/v1/machines/{mac}/plan        the agent: what shall I do?  -> AgentPlan
    POST /api/v1/machines/{mac}/events      the agent: a batch of engine events (events.Event)
    POST /api/v1/machines/{mac}/receipt     the agent: the flash's receipt (receipt.Receipt)

Two secrets: the shared token (every netbooted machine has it: it only lets a machine enrol)
and each machine's own credential, which the server hands out once, in the answer to the
machine's first inventory (`{"credential": C}`), and which every later request about that MAC
must carry in the `X-Bty-Credential` header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

API = "/api/v1"
#: how the agent and operators present the token (also accepted as ?token= for iPXE, which cannot set headers)
TOKEN_HEADER = "authorization"
TOKEN_QUERY = "token"
#: the header that carries a machine's own credential (issued at enrolment, bound to its MAC)
CREDENTIAL_HEADER = "X-Bty-Credential"

_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}$")
#: characters a token may hold: it travels on a kernel command line and in URLs unescaped
TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~-]+$")
MIN_TOKEN_LENGTH = 16


def normalise_mac(text: str) -> str:
    """aa:bb:cc:dd:ee:ff from any of AA:BB:..., aa-bb-..., aabbccddeeff; ValueError otherwise."""
    value = text.strip().lower()
    if value.startswith("01-") and len(value) == 20:  # pxelinux BOOTIF form: 01-aa-bb-cc-dd-ee-ff
        value = value[3:]
    if not _MAC.match(value):
        raise ValueError(f"{text!r} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    digits = value.replace(":", "").replace("-", "")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def machine_path(mac: str, what: str) -> str:
    """/api/v1/machines/aa-bb-cc-dd-ee-ff/WHAT: hyphens keep the path free of colons."""
    return f"{API}/machines/{mac.replace(':', '-')}/{what}"


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer T` header value (scheme case-insensitive), else None."""
    if authorization is None or authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip()


def credential_header(credential: str | None) -> dict[str, str]:
    return {CREDENTIAL_HEADER: credential} if credential else {}


class Action(StrEnum):
    """What the server tells a machine to do."""

    FLASH = "flash"  # stream IMAGE onto the disk SELECTOR, verify, tune, report, reboot
    TUI = "tui"  # hand the console to a person (the live system starts the TUI)
    LOCALBOOT = "localboot"  # boot the local disk (reboot; the iPXE script then exits to it)
    WAIT = "wait"  # nothing to do yet: ask again after `poll` seconds


@dataclass(frozen=True)
class ImageRef:
    """An image as the server offers it."""

    name: str
    file_name: str
    #: where to GET it: absolute, or a path relative to the server URL
    url: str
    #: bytes of the file as shipped (compressed)
    file_size: int
    #: bytes of the decompressed image and its blake3: what the disk must read back as
    size: int
    blake3: str
    #: send the shared token with the download even though `url` names another host than the
    #: server (the plan's explicit instruction); the server itself always gets it
    send_token: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file_name": self.file_name, "url": self.url, "file_size": self.file_size,
                "size": self.size, "blake3": self.blake3, "send_token": self.send_token}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRef:
        return cls(name=str(data["name"]), file_name=str(data["file_name"]), url=str(data["url"]),
                   file_size=int(data["file_size"]), size=int(data["size"]), blake3=str(data["blake3"]),
                   send_token=data.get("send_token") is True)


@dataclass(frozen=True)
class AgentPlan:
    """The server's answer to "what shall I do?"."""

    action: Action
    #: identifies one assignment: events and the receipt carry it, so a stale agent cannot
    #: mark a newer assignment done
    run_id: str | None = None
    image: ImageRef | None = None
    #: a disk selector (serial=..., path=..., tran=nvme,size>=100G, ...) or a device
    disk: str | None = None
    verify: str = "readback"
    #: post-flash tuning task (the server already resolved the manifest's default); None: none
    tune: str | None = None
    #: seconds to wait before asking again (WAIT), as the server suggests
    poll: float = 10.0
    #: why, for the console and the log ("no plan assigned yet", "the last run failed: ...")
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "run_id": self.run_id,
            "image": self.image.to_dict() if self.image else None,
            "disk": self.disk,
            "verify": self.verify,
            "tune": self.tune,
            "poll": self.poll,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentPlan:
        """Parse and check a plan; ValueError names what is wrong."""
        try:
            action = Action(data["action"])
            image = ImageRef.from_dict(data["image"]) if data.get("image") else None
            plan = cls(action=action, run_id=data.get("run_id"), image=image, disk=data.get("disk"),
                       verify=str(data.get("verify") or "readback"), tune=data.get("tune"),
                       poll=float(data.get("poll") or 10.0), message=str(data.get("message") or ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed plan ({type(exc).__name__}: {exc})") from exc
        if action == Action.FLASH and (plan.image is None or not plan.disk or not plan.run_id):
            raise ValueError("a flash plan needs an image, a disk selector and a run id")
        return plan
