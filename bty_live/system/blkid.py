"""`blkid -p -o export`: the one parser of its output and the one place it is run.

-p probes the device (or file) itself: no cache, no udev database, so it works on the appliance
without udevd and on a copy of an image's partition head alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bty_live.system.run import run

#: blkid -p exit codes (blkid(8)): 0 found, 2 nothing found, 8 ambivalent (several signatures)
FOUND = 0
NOTHING = 2
AMBIVALENT = 8

_ESCAPE = re.compile(r"\\(.)")
_NODE_ERROR = re.compile(r"error: (/\S+): (.*)")


def parse_export(text: str) -> dict[str, str]:
    """KEY=VALUE lines of one device; `-o export` escapes shell-special characters with a backslash."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = _ESCAPE.sub(r"\1", value)
    return values


def parse_export_by_node(text: str) -> dict[str, dict[str, str]]:
    """Several devices' KEY=VALUE blocks (blank-line separated, each starting with DEVNAME), by node."""
    values: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            current = None
        elif key == "DEVNAME":
            current = values.setdefault(value, {})
        elif current is not None:
            current[key] = _ESCAPE.sub(r"\1", value)
    return values


@dataclass(frozen=True)
class Probe:
    """What one `blkid -p` run over several nodes found."""

    values: Mapping[str, Mapping[str, str]]  # node -> {TYPE, LABEL, UUID, PTTYPE, PART_ENTRY_NAME, ...}
    errors: Mapping[str, str]  # node -> why blkid could not read it

    def error_text(self) -> str | None:
        """Why some nodes could not be probed, one clause each; None when all could."""
        return "; ".join(f"cannot read {node}: {why}" for node, why in self.errors.items()) or None


def probe_nodes(paths: Sequence[str], timeout: float = 60) -> Probe:
    """`blkid -p -o export` for several nodes in one call.

    blkid exits non-zero when one node has nothing on it; the others are still printed, so the
    exit status is ignored. Nodes it could not open are reported on stderr as
    "blkid: error: NODE: WHY".
    """
    proc = run(["blkid", "-p", "-o", "export", *paths], check=False, timeout=timeout)
    errors = {m.group(1): m.group(2) for m in _NODE_ERROR.finditer(proc.stderr)}
    return Probe(values=parse_export_by_node(proc.stdout), errors=errors)


def probe_one(path: Path | str) -> tuple[int, dict[str, str], str]:
    """(exit status, values, stderr-or-stdout detail) of `blkid -p` on one file or device."""
    proc = run(["blkid", "-p", "-o", "export", str(path)], check=False)
    return proc.returncode, parse_export(proc.stdout), (proc.stderr or proc.stdout).strip()
