"""What the server does with what agents and operators tell it: the rules, without HTTP.

- An agent's inventory registers (or refreshes) its machine.
- Asking for a plan answers from the machine's assignment: flash (with the image's size and
  blake3), tui, localboot or wait. A flash that finished is answered with localboot, one that
  failed with wait, so a machine never loops through the same flash.
- Events of the current run move the plan to running (or failed) and set the status line.
- A receipt of the current run closes the plan.
- A ledger record (bty_live.flash.ledger.LedgerRecord, made by the agent's engine, passed or failed)
  is appended to the server's ledger.jsonl, the same file format `bty ledger` reads on a stick.
- Events, receipts and ledger records are taken only for the run the machine is on (409
  otherwise), and a receipt or record must name the digest of the image assigned to that run.
- Credentials: the shared token only enrols. A machine's first inventory gets a credential
  bound to its MAC (returned once, stored as a sha256 hash); every later request about that MAC
  must carry it. A machine enrols again only once per `assign` or after `bty serve reset MAC`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bty_live.errors import ImageError, UsageError
from bty_live.events import Event, Kind, Phase
from bty_live.flash.ledger import LedgerRecord, append_record
from bty_live.image.catalog import image_stem
from bty_live.image.remote import UrlOptions, check_blake3, fetch_manifest, file_name_of, is_image_url
from bty_live.protocol.httpconn import shown_url
from bty_live.protocol.wire import Action, AgentPlan, ImageRef
from bty_live.server.images import find_served
from bty_live.server.state import PlanRecord, PlanState, ReceiptRecord, Store
from bty_live.units import format_rate, format_size

#: the settings key under which `bty serve` records its images directory (for `bty serve assign`)
IMAGES_DIR_SETTING = "images_dir"
VERIFY_MODES = ("readback", "stream", "off")


class BadRequest(ValueError):
    """The request body is not what the API expects (HTTP 400)."""

    status = 400


class Forbidden(BadRequest):
    """The request does not carry the machine's credential (HTTP 403): nothing changes."""

    status = 403


def describe_url_image(url: str, blake3: str | None, cafile: Path | None) -> tuple[int | None, str]:
    """(decompressed size or None, blake3) of an image on another host, for a plan: `blake3`
    given, else its URL.toml's. A machine flashed from the network has nobody watching, so an
    image without any digest is refused here, as images of the images directory without a
    manifest are."""
    if blake3 is not None:
        return None, check_blake3(blake3)
    manifest = fetch_manifest(url, UrlOptions(cafile=cafile))
    if manifest is None:
        raise ImageError(f"image {shown_url(url)} has no manifest beside it ({file_name_of(url)}.toml answers 404), "
                         "so a machine could not verify it; publish the one `bty images add` writes, or give "
                         "--blake3 HEX")
    return manifest.size, manifest.blake3


class Conflict(BadRequest):
    """The request is about a run the machine is not on (HTTP 409)."""

    status = 409


class PayloadTooLarge(BadRequest):
    """The request body is larger than the server takes (HTTP 413)."""

    status = 413


def credential_hash(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


@dataclass(frozen=True)
class StatusLine:
    status: str
    detail: str


#: a machine's status while a phase of its run is going on (the web UI draws a bar for these)
BUSY_STATUS = {Phase.PLAN: "planning", Phase.WRITE: "writing", Phase.VERIFY: "verifying",
               Phase.FIXUP: "fixing up", Phase.TUNE: "tuning"}


def status_of(event: Event) -> StatusLine | None:
    """The machine's status line after `event`, or None if the event does not change it."""
    if event.kind == Kind.ERROR:
        return StatusLine("failed", event.message)
    if event.phase == Phase.DONE:
        return StatusLine("flashed", event.message or "flashed; waiting for the receipt")
    label = BUSY_STATUS.get(event.phase)
    if label is None:
        return None
    if event.kind == Kind.PROGRESS and event.total:
        return StatusLine(label, f"{event.bytes_out / event.total:.0%} of {format_size(event.total)} "
                                 f"at {format_rate(event.rate)}")
    return StatusLine(label, event.message)


class Deployments:
    """The server's behaviour over a Store and an images directory."""

    def __init__(self, store: Store, images_dir: Path | None, poll: float = 10.0,
                 ledger: Path | None = None) -> None:
        self.store = store
        self.images_dir = images_dir
        self.poll = poll
        self.ledger = ledger

    # -- operators -----------------------------------------------------------------------------

    def assign(self, mac: str, action: Action, image: str | None = None, disk: str | None = None,
               verify: str = "readback", tune: str | None = None, blake3: str | None = None,
               cafile: Path | None = None) -> PlanRecord:
        """Give `mac` a new plan. A flash needs an image the server can offer (or an http(s) URL
        with a digest: its URL.toml, or `blake3`) and a disk selector."""
        if verify not in VERIFY_MODES:
            raise UsageError(f"verify mode {verify!r} is not one of {', '.join(VERIFY_MODES)}")
        size: int | None = None
        if blake3 is not None and not (image and is_image_url(image)):
            raise UsageError("--blake3 is for an image given by URL; an image of the images directory has its "
                             "manifest")
        if action == Action.FLASH:
            if not image or not disk:
                raise UsageError("a flash needs an IMAGE and --disk SELECTOR (e.g. --disk serial=S3Z1NB0K)")
            if is_image_url(image):
                size, blake3 = describe_url_image(image, blake3, cafile)
            elif self.images_dir is not None:  # the file name: unique, while manifest names may repeat
                found = find_served(image, self.images_dir)
                image, blake3 = found.file_name, found.blake3
        elif image or disk:
            raise UsageError(f"--action {action.value} takes no IMAGE or --disk")
        return self.store.assign(mac, action, image=image, disk=disk, verify=verify, tune=tune,
                                 image_blake3=blake3 if action == Action.FLASH else None, image_size=size)

    def cancel(self, mac: str) -> PlanRecord:
        """Take `mac`'s plan away; UsageError when it has none, or when its run is over. A running
        flash stops at the agent's next report and the disk is wiped (never left half-written and
        bootable-looking); a pending plan is simply gone."""
        plan = self.store.plan(mac)
        if plan is None:
            raise UsageError(f"machine {mac} has no plan to cancel")
        if plan.state in (PlanState.DONE, PlanState.FAILED):
            raise UsageError(f"run {plan.run_id} of {mac} is over ({plan.state.value}); nothing to cancel")
        cancelled = self.store.cancel(mac)
        return cancelled or plan

    def reset(self, mac: str) -> None:
        """Let `mac` enrol again (it rebooted into the netboot system); its old credential is refused."""
        self.store.reset_credential(mac)

    # -- credentials ---------------------------------------------------------------------------

    def enrol(self, mac: str) -> str:
        """A new credential for `mac` (returned once, only its hash is kept); Forbidden if the
        machine is enrolled already and may not enrol again now."""
        credential = secrets.token_urlsafe(32)
        if not self.store.enrol(mac, credential_hash(credential)):
            raise Forbidden(f"machine {mac} is enrolled already and its request carries no credential; if it "
                            f"rebooted into the netboot system, run `bty serve reset {mac}` (or assign it again) "
                            "on the server")
        return credential

    def check_credential(self, mac: str, offered: str | None) -> None:
        """Forbidden unless `offered` is `mac`'s credential."""
        stored = self.store.credential_hash(mac)
        if stored is None or not offered:
            raise Forbidden(f"requests about machine {mac} need its own credential (X-Bty-Credential, issued "
                            "when it enrols with its first inventory); the shared token alone is refused")
        if not hmac.compare_digest(credential_hash(offered), stored):
            raise Forbidden(f"wrong credential for machine {mac}; if it rebooted into the netboot system, run "
                            f"`bty serve reset {mac}` on the server")

    def overview(self) -> list[dict[str, Any]]:
        """Every machine with its status, its plan and its last receipt."""
        rows = []
        for machine in self.store.machines():
            plan = self.store.plan(machine.mac)
            receipt = self.store.last_receipt(machine.mac)
            rows.append({**machine.to_dict(), "plan": plan.to_dict() if plan else None,
                         "receipt": receipt.to_dict() if receipt else None})
        return rows

    # -- agents --------------------------------------------------------------------------------

    def inventory(self, mac: str, inventory: dict[str, Any]) -> None:
        machine = inventory.get("machine")
        model = str(machine.get("model") or "") if isinstance(machine, dict) else ""
        self.store.record_inventory(mac, model, inventory)
        if self.store.plan(mac) is None:
            self.store.touch_status(mac, "new", "inventory received; no plan assigned yet")

    def plan_for(self, mac: str) -> AgentPlan:
        plan = self.store.plan(mac)
        if plan is None:
            return self._wait(mac, f"no plan for {mac} yet: assign one with `bty serve assign {mac} IMAGE "
                                   "--disk SELECTOR`")
        if plan.action != Action.FLASH:
            self.store.touch_status(mac, plan.action.value, f"told to {plan.action.value} (run {plan.run_id})")
            return AgentPlan(action=plan.action, run_id=plan.run_id, poll=self.poll,
                             message=f"the server says {plan.action.value}")
        if plan.state == PlanState.DONE:
            return AgentPlan(action=Action.LOCALBOOT, run_id=plan.run_id, poll=self.poll,
                             message=f"already flashed with {plan.shown_image} (run {plan.run_id}): booting the local "
                                     "disk")
        if plan.state == PlanState.FAILED:
            return self._wait(mac, f"run {plan.run_id} failed ({plan.detail}); assign the machine again to retry",
                              status="failed", detail=plan.detail)
        assert plan.image is not None
        if is_image_url(plan.image):
            return self._url_plan(plan)
        if self.images_dir is None:
            return self._wait(mac, "the server has no images directory")
        try:
            image = find_served(plan.image, self.images_dir)
        except ImageError as exc:
            return self._wait(mac, f"image {plan.image} cannot be served now ({exc})")
        tune = image.tune_task if plan.tune is None else plan.tune  # None: the manifest's [tune] task
        return AgentPlan(action=Action.FLASH, run_id=plan.run_id, image=image.ref(), disk=plan.disk,
                         verify=plan.verify, tune=None if tune == "off" else tune, poll=self.poll,
                         message=f"flash {image.name} onto {plan.disk}")

    def _url_plan(self, plan: PlanRecord) -> AgentPlan:
        """A flash of an image on another host: the agent streams it from there (the server's token
        is not sent along), checked against the digest the server took at `assign`."""
        assert plan.image is not None and plan.image_blake3 is not None
        file_name = file_name_of(plan.image)
        ref = ImageRef(name=image_stem(Path(file_name)), file_name=file_name, url=plan.image, file_size=0,
                       size=plan.image_size or 0, blake3=plan.image_blake3)
        tune = None if plan.tune in (None, "off") else plan.tune  # no images directory: no manifest's task
        return AgentPlan(action=Action.FLASH, run_id=plan.run_id, image=ref, disk=plan.disk, verify=plan.verify,
                         tune=tune, poll=self.poll, message=f"flash {plan.shown_image} onto {plan.disk}")

    def _wait(self, mac: str, message: str, status: str = "waiting", detail: str | None = None) -> AgentPlan:
        self.store.touch_status(mac, status, message if detail is None else detail)  # no row for an unknown MAC
        return AgentPlan(action=Action.WAIT, poll=self.poll, message=message)

    def events(self, mac: str, run_id: str, raw: list[Any]) -> int:
        """Store a batch of events; returns how many. BadRequest if any is not an engine event."""
        events = [_event(item) for item in raw]
        if not events:
            return 0
        now = time.time()
        with self.store.transaction() as db:
            plan = self._current(mac, run_id)
            self.store.add_events(db, mac, run_id, [e.to_dict() for e in events], now)
            if plan.state in (PlanState.DONE, PlanState.FAILED):
                return len(events)
            failure = next((e for e in events if e.kind == Kind.ERROR), None)
            if failure is not None:
                self.store.set_plan_state(db, mac, run_id, PlanState.FAILED, failure.message, now)
            elif plan.state == PlanState.PENDING:
                self.store.set_plan_state(db, mac, run_id, PlanState.RUNNING, "", now)
            line = status_of(failure) if failure is not None else _last_status(events)
            if line is not None:
                self.store.set_status(db, mac, line.status, line.detail, now)
        return len(events)

    def receipt(self, mac: str, run_id: str, receipt: Any) -> ReceiptRecord:
        if not isinstance(receipt, dict) or not {"result", "image_name", "image_blake3"} <= receipt.keys():
            raise BadRequest("a receipt needs at least result, image_name and image_blake3 (Receipt.to_dict())")
        now = time.time()
        with self.store.transaction() as db:
            plan = self._current(mac, run_id)
            self._check_digest(plan, receipt["image_blake3"], "receipt")
            self.store.add_receipt(db, mac, run_id, receipt, now)
            if plan.state not in (PlanState.DONE, PlanState.FAILED):
                ok = receipt["result"] == "ok"
                summary = (f"{receipt['image_name']} onto {receipt.get('target_path')}, blake3 "
                           f"{str(receipt['image_blake3'])[:16]}..., read-back {receipt.get('readback_check')}")
                self.store.set_plan_state(db, mac, run_id, PlanState.DONE if ok else PlanState.FAILED,
                                          summary if ok else str(receipt.get("error") or "failed"), now)
                self.store.set_status(db, mac, "done" if ok else "failed", summary, now)
        found = self.store.receipts(mac, limit=1)
        return found[0]

    def ledger_record(self, mac: str, run_id: str, raw: Any) -> LedgerRecord:
        """Append an agent's ledger record to the server's ledger (LedgerError if it cannot be)."""
        if not isinstance(raw, dict):
            raise BadRequest("a ledger record must be a JSON object (LedgerRecord.to_dict())")
        try:
            record = LedgerRecord.from_dict(raw)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"not a ledger record ({exc})") from exc
        if self.ledger is None:
            raise BadRequest("this server keeps no ledger")
        self._check_digest(self._current(mac, run_id), record.image_blake3, "ledger record")
        # the agent's receipt path is gone with its RAM disk: point at the server's copy instead
        record = replace(record, receipt=f"bty serve: {mac} run {run_id}",
                         macs=record.macs if mac in record.macs else (*record.macs, mac))
        append_record(self.ledger, record)
        return record

    def _current(self, mac: str, run_id: str) -> PlanRecord:
        """The plan of `run_id` if it is the run `mac` is on; Conflict otherwise."""
        plan = self.store.plan(mac)
        if plan is None or plan.run_id != run_id:
            now = f"run {plan.run_id}" if plan else "no run"
            raise Conflict(f"machine {mac} is not on run {run_id!r} (it is on {now}); nothing was stored")
        return plan

    def _assigned_blake3(self, plan: PlanRecord) -> str | None:
        if plan.image_blake3:
            return plan.image_blake3
        if plan.image is None or self.images_dir is None:
            return None
        try:
            return find_served(plan.image, self.images_dir).blake3
        except ImageError:
            return None

    def _check_digest(self, plan: PlanRecord, blake3: object, what: str) -> None:
        """BadRequest unless `blake3` is the digest of the image assigned to `plan`'s run."""
        expected = self._assigned_blake3(plan) if plan.action == Action.FLASH else None
        if expected is None:
            raise Conflict(f"run {plan.run_id} of {plan.mac} flashes no image the server can check a {what} "
                           "against; nothing was stored")
        if not isinstance(blake3, str) or not hmac.compare_digest(blake3.lower().encode(), expected.lower().encode()):
            raise BadRequest(f"the {what}'s image digest {str(blake3)[:16]}... is not that of {plan.shown_image} "
                             f"({expected[:16]}...), the image assigned to run {plan.run_id}; nothing was stored")


def _last_status(events: list[Event]) -> StatusLine | None:
    for event in reversed(events):
        line = status_of(event)
        if line is not None:
            return line
    return None


def _event(item: Any) -> Event:
    if not isinstance(item, dict):
        raise BadRequest("each event must be a JSON object (events.Event.to_dict())")
    try:
        return Event.from_dict(item)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRequest(f"not an engine event ({type(exc).__name__}: {exc})") from exc
