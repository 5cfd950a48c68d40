"""The agent's state machine: inventory -> ask -> act -> report, until it reboots or hands over.

    INVENTORY  post DMI, NICs and disks (retried while the server is unreachable)
    ASK        get the plan; the server answers flash, tui, localboot or wait
    FLASH      HttpSource -> load_streamed_image_source -> prepare_plan_for -> engine.flash,
               events streamed to the server by EventUplink (tuning: a seam, see tuning.py)
    REPORT     post the receipt (retried until the server takes it) and the engine's ledger
               record (passed or failed runs), which the server appends to its ledger.jsonl
    REBOOT     into the flashed disk (an injected action: `systemctl reboot`, or nothing)
    WAIT       ask again after the server's poll interval, bounded by `max_poll`
    HANDOVER   the plan says tui: exit, and the live system's console starts the TUI

A failed flash is reported (the engine's ERROR event; the disk is wiped by the engine) and the
agent asks again: the server answers wait until someone assigns the machine anew, and the agent
never re-runs a run id that failed here. A refused token or credential stops the agent at once.
A stop signal (SIGTERM, SIGHUP, SIGQUIT, Ctrl-C) during a run stops the engine (which wipes),
reports the run failed with the reason, and raises the engine's Cancelled: the CLI exits 128+N.

The image download gets the shared token only when its URL is on the server itself (or the plan
says `send_token`), never the machine's credential, and it has an overall deadline.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from bty_live.agent.api import ServerApi
from bty_live.agent.inventory import collect_inventory
from bty_live.agent.tuning import tuning_option
from bty_live.agent.uplink import EventUplink, UplinkStats
from bty_live.errors import (
    BtyError,
    Cancelled,
    NetworkError,
    RunWithdrawnError,
    ServerUnavailableError,
    TokenRefusedError,
    UsageError,
    stopped_by,
)
from bty_live.events import Event, EventSink, Kind, Phase
from bty_live.flash import engine
from bty_live.flash.plan import FlashOptions, VerifyMode
from bty_live.flash.prepare import prepare_plan_for
from bty_live.flash.receipt import Receipt
from bty_live.image.http_source import HttpSource, ResumeNotice
from bty_live.image.manifest import Manifest
from bty_live.image.remote import UrlOptions, fetch_manifest
from bty_live.image.source import load_streamed_image_source
from bty_live.protocol.httpconn import Backoff, shown_url
from bty_live.protocol.wire import Action, AgentPlan
from bty_live.signals import interrupt_signal
from bty_live.units import format_size

T = TypeVar("T")


class AgentState(StrEnum):
    INVENTORY = "inventory"
    ASK = "ask"
    FLASH = "flash"
    REPORT = "report"
    REBOOT = "reboot"
    WAIT = "wait"
    HANDOVER = "handover"


@dataclass(frozen=True)
class AgentConfig:
    mac: str
    token: str | None
    cafile: Path | None = None
    #: False (--no-reboot): stop where the agent would reboot, and return
    reboot: bool = True
    #: the longest the agent waits between two questions, whatever the server suggests
    max_poll: float = 60.0
    #: give up after waiting (or failing to reach the server) this long; None: never
    wait_limit: float | None = None
    #: reconnects of an image download without progress, and the waits between them
    download_backoff: Backoff = field(default_factory=Backoff)
    #: backoff of calls to the API while the server is unreachable (capped by max_poll)
    api_backoff: Backoff = field(default_factory=lambda: Backoff(attempts=1_000_000, first=1.0, cap=60.0))
    #: seconds between two event batches
    event_interval: float = 0.5
    #: seconds an image download may take in all; None: DOWNLOAD_GRACE + 1 s per MiB of the file
    download_deadline: float | None = None

    def deadline_for(self, file_size: int | None) -> float | None:
        """The whole download's deadline; None (no deadline, retries without progress are still
        bounded) for a file of unknown size."""
        if self.download_deadline is not None:
            return self.download_deadline
        return None if file_size is None else DOWNLOAD_GRACE + file_size / DOWNLOAD_MIN_RATE


#: the automatic download deadline: this many seconds, plus the file's size at DOWNLOAD_MIN_RATE bytes/s
DOWNLOAD_GRACE = 600.0
DOWNLOAD_MIN_RATE = float(1 << 20)


@dataclass(frozen=True)
class AgentOutcome:
    state: AgentState
    message: str
    receipt: Receipt | None = None
    #: the last failure, when the agent stopped without success
    failure: BtyError | None = None


@dataclass(frozen=True)
class Effects:
    """What the agent does to the world besides HTTP; injectable so tests never reboot."""

    reboot: Callable[[], None]
    say: Callable[[str], None]
    #: renders the engine's events on the console (the server gets them anyway)
    console: EventSink = field(default=lambda _event: None)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    inventory: Callable[[str], dict[str, Any]] = collect_inventory


@dataclass
class FlashOutcome:
    receipt: Receipt
    resumes: int
    uplink: UplinkStats
    #: the engine's ledger record of the run (LedgerRecord.to_dict()), for the server's ledger
    record: dict[str, Any] | None


class _FlashFailed(Exception):
    """A failed flash, with the ledger record the engine wrote for it (if it got that far)."""

    def __init__(self, error: BtyError, record: dict[str, Any] | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.record = record


def _record_of(error: BtyError) -> dict[str, Any] | None:
    """The ledger record the engine attached to a failed run (none when it failed before the engine ran)."""
    return error.record.to_dict() if error.record is not None else None


class _Tee:
    """Sends each event to several sinks; remembers whether an ERROR went out."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = sinks
        self.saw_error = False

    def __call__(self, event: Event) -> None:
        self.saw_error = self.saw_error or event.kind == Kind.ERROR
        for sink in self.sinks:
            sink(event)


class Agent:
    def __init__(self, api: ServerApi, config: AgentConfig, effects: Effects,
                 cancel: threading.Event | None = None,
                 on_state: Callable[[AgentState, AgentPlan | None], None] | None = None) -> None:
        self.api = api
        self.config = config
        self.effects = effects
        self.cancel = cancel or threading.Event()
        self.on_state = on_state
        self._failed_runs: dict[str, BtyError] = {}
        self._last_failure: BtyError | None = None
        self._waiting_since: float | None = None

    def _enter(self, state: AgentState, plan: AgentPlan | None = None) -> None:
        if self.on_state is not None:
            self.on_state(state, plan)

    def run(self) -> AgentOutcome:
        mac = self.config.mac
        say = self.effects.say
        self._enter(AgentState.INVENTORY)
        say(f"sending the inventory of {mac} to {self.api.server}")
        self._persist("send the inventory", lambda: self.api.post_inventory(mac, self.effects.inventory(mac)))
        while True:
            self._enter(AgentState.ASK)
            plan = self._persist("ask for a plan", lambda: self.api.plan(mac))
            if plan.action == Action.FLASH and plan.run_id in self._failed_runs:
                plan = AgentPlan(action=Action.WAIT, poll=plan.poll,
                                 message=f"run {plan.run_id} already failed here "
                                         f"({self._failed_runs[plan.run_id]}); waiting for a new assignment")
            if plan.action == Action.FLASH:
                self._waiting_since = None
                outcome = self._flash_and_report(plan)
                if outcome is not None:
                    return self._reboot(AgentState.REBOOT, f"flashed {outcome.receipt.image_name} onto "
                                        f"{outcome.receipt.target_path}", outcome.receipt)
            elif plan.action == Action.LOCALBOOT:
                return self._reboot(AgentState.REBOOT, plan.message or "the server says: boot the local disk")
            elif plan.action == Action.TUI:
                self._enter(AgentState.HANDOVER, plan)
                say("the server says: hand over to the TUI")
                return AgentOutcome(AgentState.HANDOVER, "handed over to the TUI")
            else:
                stop = self._wait(plan)
                if stop is not None:
                    return stop

    # -- acting --------------------------------------------------------------------------------

    def _flash_and_report(self, plan: AgentPlan) -> FlashOutcome | None:
        """Flash and post the receipt and ledger record; None (after reporting) if the flash failed."""
        assert plan.run_id is not None
        run_id, mac = plan.run_id, self.config.mac
        self._enter(AgentState.FLASH, plan)
        self.effects.say(f"run {run_id}: {plan.message}")
        try:
            outcome = self._flash(plan)
        except _FlashFailed as failed:
            exc, failed_record = failed.error, failed.record
            if isinstance(exc, TokenRefusedError):
                raise exc from None
            self._failed_runs[run_id] = exc
            self._last_failure = exc
            self.effects.say(f"run {run_id} FAILED: {exc.full_message()}")
            if failed_record is not None:
                self._best_effort("post the ledger record", lambda: self.api.post_ledger(mac, run_id, failed_record))
            if isinstance(exc, Cancelled) and exc.signum is not None:
                raise exc from None  # stopped by a signal: reported; the CLI exits 128+N
            return None
        self._enter(AgentState.REPORT, plan)
        # the engine's receipt says where the image came from ("download": url, resumes, bytes)
        posted = {**outcome.receipt.to_dict(), "saved_to": None}  # the agent's copy died with its RAM disk
        try:
            self._persist("post the receipt", lambda: self.api.post_receipt(mac, run_id, posted))
        except KeyboardInterrupt as stop:  # flashed and verified, but the server will not know: say so
            error = stopped_by(interrupt_signal(stop))
            failure = Event(Phase.FAILED, Kind.ERROR, message=f"{error} before the receipt was posted",
                            error=error.kind)
            self._best_effort("report the stop", lambda: self.api.post_events(mac, run_id, [failure.to_dict()]),
                              attempts=1)
            raise error from None
        if outcome.record is not None:
            record = outcome.record
            self._best_effort("post the ledger record", lambda: self.api.post_ledger(mac, run_id, record))
        for line in outcome.receipt.summary():
            self.effects.say(line)
        return outcome

    def _flash(self, plan: AgentPlan) -> FlashOutcome:
        """Run the engine on the streamed image; _FlashFailed carries the error and the run's ledger record."""
        assert plan.image is not None and plan.disk is not None and plan.run_id is not None
        image, run_id, mac = plan.image, plan.run_id, self.config.mac
        withdrawn: list[RunWithdrawnError] = []

        def refused(exc: NetworkError) -> None:
            if isinstance(exc, RunWithdrawnError) and not withdrawn:  # cancelled on the server: stop, wipe
                withdrawn.append(exc)
                self.effects.say(f"run {run_id}: {exc}; stopping the flash")
                self.cancel.set()  # cleared once this run has stopped: the next run starts afresh

        uplink = EventUplink(lambda events: self.api.post_events(mac, run_id, events),
                             interval=self.config.event_interval, on_refused=refused)
        sink = _Tee(uplink, self.effects.console)

        def resumed(notice: ResumeNotice) -> None:
            sink(Event(Phase.WRITE, Kind.INFO, message=f"download dropped at {format_size(notice.offset)} "
                                                       f"({notice.reason}); resumed there with a Range request"))

        url = self.api.url(image.url)
        token = self.config.token if self.api.is_server(url) or image.send_token else None
        known = image.file_size or None  # 0: an image on another host, its size learnt from the download
        source = HttpSource(url, token, known, name=image.file_name,
                            cafile=self.config.cafile, backoff=self.config.download_backoff, on_resume=resumed,
                            sleep=self.effects.sleep, deadline=self.config.deadline_for(known),
                            clock=self.effects.clock)
        with tempfile.TemporaryDirectory(prefix="bty-agent-") as tmp:
            workdir = Path(tmp)
            try:
                try:
                    verify = VerifyMode(plan.verify)
                except ValueError as exc:
                    raise UsageError(f"the plan asks for verify mode {plan.verify!r}, which this agent does not "
                                     "know; assign the machine again") from exc
                options = FlashOptions(verify=verify, receipts_dir=workdir / "receipts",
                                       tune=tuning_option(plan.tune, workdir, sink))  # SEAM(tuning)
                streamed = load_streamed_image_source(source, name=image.name, size=image.size or None,
                                                      blake3=image.blake3, manifest=self._index_of(url, token, sink))
                flash_plan = prepare_plan_for(streamed, plan.disk, options)
                for line in flash_plan.describe():
                    sink(Event(Phase.PLAN, Kind.INFO, message=line))
                result = engine.flash(flash_plan, sink, self.cancel)
            except Cancelled as exc:
                if exc.signum is not None or not withdrawn:
                    raise _FlashFailed(exc, _record_of(exc)) from exc
                cancelled = Cancelled(f"run {run_id} was cancelled on the server (the operator cancelled it or "
                                      "assigned the machine anew); the disk was wiped")
                raise _FlashFailed(cancelled, _record_of(exc)) from exc
            except BtyError as exc:
                if not sink.saw_error:  # failed before the engine ran (image, selector): say so once
                    sink(Event(Phase.FAILED, Kind.ERROR, message=exc.full_message(), error=exc.kind))
                raise _FlashFailed(exc, _record_of(exc)) from exc
            except KeyboardInterrupt as stop:  # a stop signal outside the engine (download, planning)
                error = stopped_by(interrupt_signal(stop))
                if not sink.saw_error:
                    sink(Event(Phase.FAILED, Kind.ERROR, message=error.full_message(), error=error.kind))
                raise _FlashFailed(error, None) from stop
            finally:
                if withdrawn:
                    self.cancel.clear()
                stats = uplink.close()
            return FlashOutcome(receipt=result.receipt, resumes=source.resumes, uplink=stats,
                                record=result.record.to_dict())

    def _index_of(self, url: str, token: str | None, sink: EventSink) -> Manifest | None:
        """The image's manifest from its server (URL.toml), for its block index: with it, a disk
        that holds the image or an older version of it is compared and only what differs is
        downloaded and written. Without it (another host, an older server) the image is written whole."""
        try:
            return fetch_manifest(url, UrlOptions(cafile=self.config.cafile, backoff=self.config.download_backoff),
                                  token)
        except BtyError as exc:
            sink(Event(Phase.PLAN, Kind.INFO, message=f"no block index for {shown_url(url)} ({exc}): the image is "
                                                      "written whole"))
            return None

    def _reboot(self, state: AgentState, why: str, receipt: Receipt | None = None) -> AgentOutcome:
        self._enter(state)
        if not self.config.reboot:
            self.effects.say(f"{why}; not rebooting (--no-reboot)")
            return AgentOutcome(state, why, receipt)
        self.effects.say(f"{why}; rebooting")
        self.effects.reboot()
        return AgentOutcome(state, why, receipt)

    def _wait(self, plan: AgentPlan) -> AgentOutcome | None:
        """Sleep before the next question; an outcome when the wait limit is reached."""
        self._enter(AgentState.WAIT, plan)
        now = self.effects.clock()
        if self._waiting_since is None:
            self._waiting_since = now
            self.effects.say(f"waiting: {plan.message}")
        limit = self.config.wait_limit
        if limit is not None and now - self._waiting_since >= limit:
            return AgentOutcome(AgentState.WAIT, f"gave up after waiting {limit:.0f} s for a plan: {plan.message}",
                                failure=self._last_failure)
        self.effects.sleep(min(max(plan.poll, 0.0), self.config.max_poll))
        return None

    def _best_effort(self, what: str, call: Callable[[], None], attempts: int = 3) -> None:
        """`call`, a few times; a failure is only a warning (the run itself is reported already)."""
        for attempt in range(1, attempts + 1):
            try:
                call()
                return
            except NetworkError as exc:
                if attempt == attempts or not isinstance(exc, ServerUnavailableError):
                    self.effects.say(f"warning: could not {what} ({exc})")
                    return
                self.effects.sleep(min(self.config.api_backoff.delay(attempt), self.config.max_poll))

    def _persist(self, what: str, call: Callable[[], T]) -> T:
        """`call` until the server answers; only an unreachable server is retried."""
        first_failure: float | None = None
        retry = 0
        while True:
            try:
                return call()
            except ServerUnavailableError as exc:
                now = self.effects.clock()
                first_failure = now if first_failure is None else first_failure
                limit = self.config.wait_limit
                if limit is not None and now - first_failure >= limit:
                    raise
                retry += 1
                delay = min(self.config.api_backoff.delay(retry), self.config.max_poll)
                self.effects.say(f"could not {what} ({exc}); trying again in {delay:.0f} s")
                self.effects.sleep(delay)
