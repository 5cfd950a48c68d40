"""What the pages show: a machine's row from the store's records, an image's row from the ledger.

Pure: the records in, the row out, so the page, its live updates and the tests agree on every
cell. The templates only lay the cells out.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bty_live.flash.ledger import LedgerRecord, summarize
from bty_live.server.service import BUSY_STATUS
from bty_live.server.state import MachineRecord, PlanRecord, ReceiptRecord, StoredEvent
from bty_live.units import format_duration, format_rate, format_size

#: statuses during which the progress bar moves
ACTIVE = frozenset(BUSY_STATUS.values())


@dataclass(frozen=True)
class Progress:
    phase: str
    fraction: float
    done: str
    total: str
    rate: str
    eta: str

    @property
    def percent(self) -> int:
        return round(self.fraction * 100)


@dataclass(frozen=True)
class MachineRow:
    mac: str
    #: the element id of the row, also the SSE event name that replaces it
    row_id: str
    model: str
    serial: str
    disks: str
    plan: str
    status: str
    detail: str
    progress: Progress | None
    last_result: str
    last_seen: str
    last_seen_at: float


def row_id(mac: str) -> str:
    return "m-" + re.sub(r"[^0-9a-f]", "", mac.lower())


def _disks(inventory: dict[str, Any]) -> str:
    disks = inventory.get("disks")
    if not isinstance(disks, list):
        return "-"
    parts = []
    for disk in disks:
        if isinstance(disk, dict):
            size = disk.get("size")
            parts.append(f"{disk.get('name', '?')} {format_size(size) if isinstance(size, int) else '?'}")
    return ", ".join(parts) or "none"


def _plan(plan: PlanRecord | None) -> str:
    if plan is None:
        return "none"
    if plan.action.value == "flash":
        return f"flash {plan.shown_image} onto {plan.disk} ({plan.state.value})"
    return f"{plan.action.value} ({plan.state.value})"


def _progress(status: str, event: StoredEvent | None) -> Progress | None:
    if status not in ACTIVE or event is None:
        return None
    data = event.event
    total = data.get("total") or 0
    done = data.get("bytes_out") or 0
    if not isinstance(total, int) or not isinstance(done, int) or total <= 0:
        return None
    rate = data.get("rate")
    eta = data.get("eta")
    return Progress(
        phase=str(data.get("phase", "")),
        fraction=min(1.0, done / total),
        done=format_size(done),
        total=format_size(total),
        rate=format_rate(rate) if isinstance(rate, (int, float)) else "-",
        eta=format_duration(eta) if isinstance(eta, (int, float)) else "-",
    )


def seen_at(then: float, now: float) -> str:
    """The server's clock time of `then` (its date too when not today). A clock time, not "5 s
    ago": a row then changes only when something happens, so the live view sends only news."""
    if time.localtime(then)[:3] == time.localtime(now)[:3]:
        return time.strftime("%H:%M:%S", time.localtime(then))
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(then))


def machine_row(machine: MachineRecord, plan: PlanRecord | None, receipt: ReceiptRecord | None,
                progress: StoredEvent | None, now: float) -> MachineRow:
    found = machine.inventory.get("machine")
    identity: dict[str, Any] = found if isinstance(found, dict) else {}
    last = "-" if receipt is None else f"{receipt.result}: {receipt.image_name} ({seen_at(receipt.received_at, now)})"
    return MachineRow(
        mac=machine.mac,
        row_id=row_id(machine.mac),
        model=machine.model or "unknown model",
        serial=str(identity.get("serial") or "-"),
        disks=_disks(machine.inventory),
        plan=_plan(plan),
        status=machine.status,
        detail=machine.detail,
        progress=_progress(machine.status, progress),
        last_result=last,
        last_seen=seen_at(machine.last_seen, now),
        last_seen_at=machine.last_seen,
    )


# -- the images page -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelResult:
    """How one machine model fared with one image (every tuning task together)."""

    model: str
    passed: int
    failed: int
    known_good: bool


@dataclass(frozen=True)
class ImageRow:
    name: str
    file_name: str
    size: str
    blake3: str
    #: why the server cannot offer it ("" when it can)
    problem: str
    #: machine models with runs of this image, known-good ones first
    models: tuple[ModelResult, ...]


def image_rows(served: list[dict[str, Any]], records: Sequence[LedgerRecord]) -> list[ImageRow]:
    """The images page: each image with its runs per machine model, keyed by the manifest's
    blake3 (what the agents verified the disk against), from the server's ledger."""
    by_image: dict[str, dict[str, ModelResult]] = {}
    for combo in summarize(records):
        models = by_image.setdefault(combo.image_blake3, {})
        seen = models.get(combo.model.lower())
        models[combo.model.lower()] = ModelResult(
            model=seen.model if seen else combo.model,
            passed=combo.passed + (seen.passed if seen else 0),
            failed=combo.failed + (seen.failed if seen else 0),
            known_good=combo.known_good or (seen.known_good if seen else False))
    found = []
    for image in served:
        digest = str(image.get("blake3") or "")
        results = by_image.get(digest, {}).values() if digest else ()
        size = image.get("size")
        found.append(ImageRow(
            name=str(image.get("name", "")),
            file_name=str(image.get("file_name", "")),
            size=format_size(size) if isinstance(size, int) else "-",
            blake3=digest,
            problem=str(image.get("problem") or ""),
            models=tuple(sorted(results, key=lambda m: (not m.known_good, m.model.lower())))))
    return found
