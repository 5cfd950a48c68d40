"""The bty-live TUI: screens over the same engine and event stream as the CLI.

    Images -> Disks -> Confirm -> Progress -> Done
                 \\________\\__________\\-> Error
    Images -c-> Capture: disk -> name and trim -> confirm -> Progress -> Captured -> (Disks)

The screens only show data and post what the user chose; this module decides what comes next,
runs the blocking work (planning, the flash) in thread workers and forwards the engine's events
to the Progress screen and the log. `make_app` is the one way to build it, for the `bty tui`
command, the tests and the snapshot apps alike.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.scrollbar import ScrollBar
from textual.timer import Timer

from bty_live.capture.plan import CaptureOptions, CapturePlan
from bty_live.disk.hotplug import DiskEvent
from bty_live.disk.model import Disk
from bty_live.events import Event
from bty_live.flash.plan import FlashOptions, FlashPlan
from bty_live.image.catalog import CatalogEntry, resolve_images_dir
from bty_live.signals import STOP_SIGNALS, call_on_stop_signals, exit_code_for_signal, signal_name
from bty_live.tui.backend import Backend, Watcher, real_backend
from bty_live.tui.capture_name import default_image_name
from bty_live.tui.messages import (
    CapturedListed,
    CaptureFinished,
    CapturePlanned,
    DiskHotplug,
    FlashEvent,
    FlashFinished,
    NextStep,
    Planned,
    StepChosen,
)
from bty_live.tui.progress import EventThrottle
from bty_live.tui.screens import (
    CancelDialog,
    CaptureConfirmScreen,
    CaptureDisksScreen,
    CaptureDoneScreen,
    CaptureFormScreen,
    CaptureProgressScreen,
    ConfirmScreen,
    DisksScreen,
    DoneScreen,
    ErrorScreen,
    HelpScreen,
    ImagesScreen,
    LogScreen,
    PowerDialog,
    ProgressScreen,
    RunProgressScreen,
)
from bty_live.tui.text import error_cause, log_line
from bty_live.tui.widgets import CellScrollBarRender

if TYPE_CHECKING:
    from bty_live.system.actions import SystemActions

#: quitting during a flash cancels it: the CLI's exit code for a cancelled run
CANCELLED_EXIT_CODE = 130
#: hot-plug events come in bursts (a disk, then each partition): rescan once they settle
RESCAN_DELAY = 0.3
LOG_LINES = 2000
#: the 16 colours of any console, drawn by the console itself: no truecolor, no 256-colour
THEME = "ansi-dark"

#: the ledger's badge of an image: "known-good", "unverified" (only its manifest is known-good) or ""
KnownGood = Callable[[CatalogEntry], bool | str]


class BtyApp(App[int]):
    CSS_PATH = "bty.tcss"
    TITLE = "bty-live"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("l,f2", "log", "Log", key_display="l"),
        Binding("ctrl+q", "quit", "Quit", key_display="^q", priority=True, show=False),
    ]

    def __init__(
        self,
        *,
        images_dir: Path,
        backend: Backend,
        actions: SystemActions,
        known_good: KnownGood | None = None,
        options: FlashOptions | None = None,
        clock: Callable[[], float] = time.time,
        follow_hotplug: bool = True,
        handle_stop_signals: bool = False,
    ) -> None:
        super().__init__()
        # whole-cell scrollbar thumbs: the partial blocks Textual draws are not in the console font
        ScrollBar.renderer = CellScrollBarRender
        if self.theme != THEME:  # `bty tui` sets $TEXTUAL_THEME, sparing a restyle after the first frame
            self.theme = THEME
        self.animation_level = "none"
        self.images_dir = images_dir
        self.backend = backend
        self.actions = actions
        self.known_good = known_good
        self.options = options or FlashOptions()
        self.clock = clock
        self.follow_hotplug = follow_hotplug
        #: the log view's lines: the engine's events and the app's own notes
        self.log_lines: deque[str] = deque(maxlen=LOG_LINES)
        self.flashing = False
        #: a capture is running (its worker holds the disk and writes the image file)
        self.capturing = False
        self._cancel = threading.Event()
        self._progress: RunProgressScreen | None = None
        self._planning: DisksScreen | None = None
        self._capture_planning: CaptureFormScreen | None = None
        #: the image the last capture made, highlighted in the images list afterwards
        self._captured: Path | None = None
        self._watcher: Watcher | None = None
        self._rescan_timer: Timer | None = None
        self._quit_when_finished = False
        #: what was chosen last, so the Error screen can offer "choose another disk"
        self._entry: CatalogEntry | None = None
        self.handle_stop_signals = handle_stop_signals
        #: the stop signal (SIGTERM, SIGHUP, SIGQUIT) that is ending the app, once one arrived
        self.stop_signal: int | None = None
        #: the one line for stderr once the app has exited on a stop signal (`bty tui` prints it)
        self.stop_note: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_handlers: dict[int, object] = {}

    # -- screens ---------------------------------------------------------------------------------

    def get_default_screen(self) -> Screen[None]:
        return ImagesScreen(lambda: self.backend.list_images(self.images_dir), self.known_good,
                            where=str(self.images_dir))

    def get_key_display(self, binding: Binding) -> str:
        """Key names the Linux console's font can draw (no "⏎")."""
        display = super().get_key_display(binding)
        return {"\u23ce": "Enter", "\u232b": "Bksp"}.get(display, display)

    @property
    def top(self) -> Screen[object] | None:
        """The active screen, or None while the app shuts down (a late timer or message must
        not fail on the empty screen stack)."""
        return self.screen_stack[-1] if self.screen_stack else None

    @property
    def busy(self) -> bool:
        """A flash or a capture is running: quitting cancels it first, no shell."""
        return self.flashing or self.capturing

    def _unwind(self, depth: int = 1) -> None:
        """Pop screens until `depth` remain (1: the Images screen)."""
        while len(self.screen_stack) > depth:
            self.pop_screen()

    def note(self, text: str) -> None:
        """A line in the log view from the app itself (the engine's lines name their phase)."""
        self._append_log(f"{time.strftime('%H:%M:%S')} {'tui':<6} {'note':<5} {text}")

    def _append_log(self, line: str) -> None:
        self.log_lines.append(line)
        top = self.top
        if isinstance(top, LogScreen):
            top.append(line)

    # -- lifecycle -------------------------------------------------------------------------------

    def on_mount(self) -> None:
        if self.handle_stop_signals:
            self._install_stop_signals()
        if not self.follow_hotplug:
            return

        def on_disk_event(event: DiskEvent) -> None:  # on the watcher's thread
            self.post_message(DiskHotplug(event))

        try:
            watcher = self.backend.watch_disks(on_disk_event)
            watcher.start()
        except OSError as exc:
            self.note(f"hot-plug events unavailable ({exc}): press r on the Disks screen to rescan")
            return
        self._watcher = watcher

    def on_unmount(self) -> None:
        # a flash must not outlive the app: the engine stops and wipes; the worker's thread is
        # joined when the event loop closes
        self._cancel.set()
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous_handlers.clear()
        if self._watcher is not None:
            self._watcher.stop()
        if self._rescan_timer is not None:
            self._rescan_timer.stop()

    # -- stop signals ----------------------------------------------------------------------------

    def _install_stop_signals(self) -> None:
        """SIGTERM, SIGHUP and SIGQUIT stop a flash as the Progress screen's confirmed cancel does
        (the engine wipes and records the run), then the app exits with 128+N. Installed from the
        event loop's thread, the main thread under `app.run()`."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        self._previous_handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        call_on_stop_signals(self._on_stop_signal)

    def _on_stop_signal(self, signum: int) -> None:
        """The signal handler: it may run between any two bytecodes of the loop, so it only
        schedules `stop_for_signal` on the loop (call_soon_threadsafe wakes the loop up)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.stop_for_signal, signum)

    def stop_for_signal(self, signum: int) -> None:
        """Cancel the running flash, if any, and exit with 128+signum once the worker has wiped
        the disk and recorded the run; with no flash running, exit at once."""
        if self.stop_signal is not None:
            return  # already stopping: a second signal must not cut the wipe short
        self.stop_signal = signum
        code = exit_code_for_signal(signum)
        if not self.busy:
            self.stop_note = f"bty tui: stopped by {signal_name(signum)}; no flash was running, nothing was written"
            self.exit(code, return_code=code)
            return
        what = "capture" if self.capturing else "flash"
        self.note(f"{signal_name(signum)} received: cancelling the {what}, then exiting")
        self._quit_when_finished = True
        self._request_cancel()

    def _stopped_note(self, message: FlashFinished) -> str:
        name = signal_name(self.stop_signal or signal.SIGTERM)
        if message.receipt is not None:  # the flash ended before the cancel could stop it
            return (f"bty tui: stopped by {name} after the flash had finished: "
                    f"{message.receipt.target_path} holds the verified image")
        error = message.error
        aftermath = getattr(error, "aftermath", None)
        if aftermath:
            return f"bty tui: stopped by {name}: the flash was cancelled; {aftermath}"
        cause = error_cause(error) if error is not None else "the flash ended without a receipt"
        return f"bty tui: stopped by {name}: {cause}"

    # -- global actions --------------------------------------------------------------------------

    def action_help(self) -> None:
        if not isinstance(self.top, HelpScreen):
            self.push_screen(HelpScreen())

    def action_log(self) -> None:
        if not isinstance(self.top, LogScreen):
            self.push_screen(LogScreen(self.log_lines))

    async def action_quit(self) -> None:
        if not self.busy:
            self.exit(0)
            return

        def answered(cancel: bool | None) -> None:
            if cancel:
                self._quit_when_finished = True
                self._request_cancel()

        self.push_screen(self._progress.cancel_dialog() if self._progress else CancelDialog("the disk"), answered)

    def action_shell(self) -> None:
        from bty_live.errors import SHELL_EXIT_CODE

        if not self.busy:
            self.exit(SHELL_EXIT_CODE, return_code=SHELL_EXIT_CODE)

    # -- the flow: image -> disk -> plan -> confirm -> flash ---------------------------------------

    @on(ImagesScreen.Chosen)
    def _image_chosen(self, message: ImagesScreen.Chosen) -> None:
        self._entry = message.entry
        self.push_screen(self._disks_screen(message.entry))

    def _disks_screen(self, entry: CatalogEntry) -> DisksScreen:
        return DisksScreen(entry, lambda: self.backend.assess_disks(entry, self.images_dir))

    @on(DisksScreen.Chosen)
    def _disk_chosen(self, message: DisksScreen.Chosen) -> None:
        screen = self.top
        if not isinstance(screen, DisksScreen):
            return
        self._planning = screen
        screen.show_planning(True)
        self.note(f"planning {message.entry.name} onto {message.disk.path}")
        self._plan(message.entry, message.disk)

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def _plan(self, entry: CatalogEntry, disk: Disk) -> None:
        """`prepare_plan`, as `bty flash` calls it: the image is read (a zstd file's frames are
        walked), the disk probed again and judged by the same rules."""
        try:
            plan = self.backend.plan(entry, disk, self.options, self.images_dir)
            contents = self.backend.contents(plan.disk)
        except Exception as exc:  # noqa: BLE001 - shown on the Error screen, whatever it is
            self.post_message(Planned(None, [], exc))
            return
        self.post_message(Planned(plan, contents, None))

    @on(Planned)
    def _planned(self, message: Planned) -> None:
        screen, self._planning = self._planning, None
        top = self.top
        if not isinstance(top, DisksScreen) or top is not screen:
            return  # the user went back meanwhile
        top.show_planning(False)
        if message.error is not None or message.plan is None:
            error = message.error or RuntimeError("no plan")
            self.note(f"refused: {error}")
            self.push_screen(ErrorScreen(error, list(self.log_lines)[-6:], can_retry_disk=True))
            return
        self.push_screen(ConfirmScreen(message.plan, message.contents))

    @on(ConfirmScreen.Confirmed)
    def _confirmed(self, message: ConfirmScreen.Confirmed) -> None:
        self.start_flash(message.plan)

    def start_flash(self, plan: FlashPlan) -> None:
        self.flashing = True
        self._flash(plan, self._begin_run(plan.describe(), ProgressScreen(plan, clock=self.clock)))

    def _begin_run(self, plan_lines: list[str], progress: RunProgressScreen) -> threading.Event:
        """A flash or a capture starts: back to the first screen, a fresh cancel event, the plan
        in the log, the Progress screen on top. Returns the cancel event for the worker."""
        self._unwind(1)
        self._cancel = threading.Event()
        self._quit_when_finished = False
        for line in plan_lines:
            self.note(f"plan: {line}")
        self._progress = progress
        self.push_screen(progress)
        return self._cancel

    def _end_run(self, stopped_note: Callable[[], str]) -> bool:
        """A flash or a capture ended: exit when the user quit (or a signal stopped it) meanwhile,
        else close what covers the Progress screen. False when there is nothing left to show
        (exiting, shutting down): the caller then shows no result."""
        progress, self._progress = self._progress, None
        if self._quit_when_finished:  # quit during the run: it was cancelled, as Ctrl-C in the CLI
            code = CANCELLED_EXIT_CODE
            if self.stop_signal is not None:
                code = exit_code_for_signal(self.stop_signal)
                self.stop_note = stopped_note()
            self.exit(code, return_code=code)
            return False
        if self.top is None:
            return False  # shutting down
        if progress is not None:
            while self.top is not progress and len(self.screen_stack) > 1:
                self.pop_screen()  # a dialog, the help or the log over the Progress screen
        return True

    @work(thread=True, exclusive=True, group="flash", exit_on_error=False)
    def _flash(self, plan: FlashPlan, cancel: threading.Event) -> None:
        """The engine, on this worker's thread. Its events go through the throttle, then across
        to the event loop as messages; the copy loop never waits for the screen."""
        def forward(event: Event) -> None:
            self.post_message(FlashEvent(event))

        sink = EventThrottle(forward)
        try:
            receipt = self.backend.flash(plan, sink, cancel)
        except Exception as exc:  # noqa: BLE001 - every failure is shown on the Error screen
            self.post_message(FlashFinished(None, exc))
            return
        try:
            saved_to, save_error = str(self.backend.save_receipt(receipt)), None
        except OSError as exc:
            saved_to, save_error = None, str(exc)
        self.post_message(FlashFinished(receipt, None, saved_to=saved_to, save_error=save_error))

    @on(FlashEvent)
    def _flash_event(self, message: FlashEvent) -> None:
        line = log_line(message.event)
        if line is not None:
            self._append_log(line)
        if self._progress is not None:
            self._progress.show_event(message.event)

    @on(RunProgressScreen.CancelRequested)
    def _cancel_requested(self) -> None:
        self._request_cancel()

    def _request_cancel(self) -> None:
        if self.busy and not self._cancel.is_set():
            self.note("cancel requested: the capture stops, then removes its partial image" if self.capturing
                      else "cancel requested: the engine stops, then wipes the target")
            self._cancel.set()
            if self._progress is not None:
                self._progress.show_cancelling()

    @on(FlashFinished)
    def _flash_finished(self, message: FlashFinished) -> None:
        self.flashing = False
        if not self._end_run(lambda: self._stopped_note(message)):
            return
        if message.receipt is not None:
            note = (f"receipt saved to {message.saved_to}" if message.saved_to
                    else f"the receipt could not be saved ({message.save_error})")
            self.note(note)
            self.switch_screen(DoneScreen(message.receipt, note))
        else:
            error = message.error or RuntimeError("the flash ended without a receipt")
            self.switch_screen(ErrorScreen(error, list(self.log_lines)[-6:], can_retry_disk=self._entry is not None))

    # -- after: next steps -------------------------------------------------------------------------

    @on(StepChosen)
    def _step_chosen(self, message: StepChosen) -> None:
        step = message.step
        if step == NextStep.ANOTHER_IMAGE:
            self._back_to_images()
        elif step == NextStep.ANOTHER_DISK and self._entry is not None:
            self._unwind(1)
            self.push_screen(self._disks_screen(self._entry))
        elif step == NextStep.CAPTURE_DISK:
            self._unwind(1)
            self.action_capture()
        elif step == NextStep.FLASH_CAPTURED and self._captured is not None:
            self._list_captured(self._captured)
        elif step == NextStep.SHELL:
            self.action_shell()
        elif step in (NextStep.REBOOT, NextStep.POWEROFF):
            self._ask_power(step)

    def _back_to_images(self) -> None:
        """The Images screen, its list read again (the image a capture made highlighted)."""
        self._unwind(1)
        images = self.top
        if isinstance(images, ImagesScreen):
            images.reload(highlight=str(self._captured) if self._captured is not None else None)

    def _ask_power(self, step: NextStep) -> None:
        """Reboot or power off once the user says yes (a stray key must not take the machine down)."""
        def answered(yes: bool | None) -> None:
            if yes:
                self._power(step)

        if not isinstance(self.top, PowerDialog):
            self.push_screen(PowerDialog("reboot" if step == NextStep.REBOOT else "power off"), answered)

    def _power(self, step: NextStep) -> None:
        verb = "reboot" if step == NextStep.REBOOT else "power off"
        self.note(f"{verb} requested")
        try:
            (self.actions.reboot if step == NextStep.REBOOT else self.actions.poweroff)()
        except Exception as exc:  # noqa: BLE001 - tell the user, keep the app usable
            self.notify(f"could not {verb}: {exc}", severity="error")
            return
        self.notify(f"{verb.capitalize()}: asked the system to {verb}...")

    # -- capture: disk -> name and trim -> plan -> confirm -> capture -> the new image ---------------

    def action_capture(self) -> None:
        """Capture a disk of this machine into the images directory (from the Images screen)."""
        if self.busy or not isinstance(self.top, ImagesScreen):
            return
        self.push_screen(CaptureDisksScreen(lambda: self.backend.assess_for_capture(self.images_dir),
                                            where=str(self.images_dir)))

    @on(CaptureDisksScreen.Chosen)
    def _capture_disk_chosen(self, message: CaptureDisksScreen.Chosen) -> None:
        self.push_screen(CaptureFormScreen(message.disk, self.images_dir,
                                           default_image_name(message.disk, self.clock())))

    @on(CaptureFormScreen.Submitted)
    def _capture_submitted(self, message: CaptureFormScreen.Submitted) -> None:
        screen = self.top
        if not isinstance(screen, CaptureFormScreen):
            return
        self._capture_planning = screen
        screen.show_planning(True)
        self.note(f"planning the capture of {message.disk.path} into {message.output}"
                  + (" (trimmed)" if message.trim else ""))
        self._plan_capture(message.disk, message.output, CaptureOptions(trim=message.trim))

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def _plan_capture(self, disk: Disk, output: Path, options: CaptureOptions) -> None:
        """`prepare_capture`, as `bty capture` calls it: the disk judged by the read rules, its
        head, partition table and filesystems read, the free space measured."""
        try:
            draft = self.backend.plan_capture(disk, output, options)
        except Exception as exc:  # noqa: BLE001 - shown on the Error screen, whatever it is
            self.post_message(CapturePlanned(None, exc))
            return
        self.post_message(CapturePlanned(draft, None))

    @on(CapturePlanned)
    def _capture_planned(self, message: CapturePlanned) -> None:
        screen, self._capture_planning = self._capture_planning, None
        top = self.top
        if not isinstance(top, CaptureFormScreen) or top is not screen:
            return  # the user went back meanwhile
        top.show_planning(False)
        if message.error is not None or message.draft is None:
            error = message.error or RuntimeError("no capture plan")
            self.note(f"refused: {error}")
            self.push_screen(ErrorScreen(error, list(self.log_lines)[-6:], can_retry_disk=True, capture=True))
            return
        if message.draft.no_room:
            self.note(f"refused: {message.draft.no_room}")
        self.push_screen(CaptureConfirmScreen(message.draft))

    @on(CaptureConfirmScreen.Confirmed)
    def _capture_confirmed(self, message: CaptureConfirmScreen.Confirmed) -> None:
        self.start_capture(message.plan)

    def start_capture(self, plan: CapturePlan) -> None:
        self.capturing = True
        self._captured = None
        self._capture(plan, self._begin_run(plan.describe(), CaptureProgressScreen(plan, clock=self.clock)))

    @work(thread=True, exclusive=True, group="flash", exit_on_error=False)
    def _capture(self, plan: CapturePlan, cancel: threading.Event) -> None:
        """The capture engine, on this worker's thread; its events reach the Progress screen as
        the flash's do. It saves its receipt itself."""
        def forward(event: Event) -> None:
            self.post_message(FlashEvent(event))

        try:
            result = self.backend.capture(plan, EventThrottle(forward), cancel)
        except Exception as exc:  # noqa: BLE001 - every failure is shown on the Error screen
            self.post_message(CaptureFinished(None, exc))
            return
        self.post_message(CaptureFinished(result, None))

    @on(CaptureFinished)
    def _capture_finished(self, message: CaptureFinished) -> None:
        self.capturing = False
        if not self._end_run(lambda: self._capture_stopped_note(message)):
            return
        if message.result is not None:
            receipt = message.result.receipt
            self._captured = Path(receipt.output)
            self.note(f"captured {receipt.output}; manifest {message.result.manifest}"
                      + (f"; receipt saved to {receipt.saved_to}" if receipt.saved_to else ""))
            self.switch_screen(CaptureDoneScreen(message.result))
            images = self.screen_stack[0]
            if isinstance(images, ImagesScreen):
                images.reload(highlight=receipt.output)  # listed by the time the user goes back
        else:
            error = message.error or RuntimeError("the capture ended without a result")
            self.switch_screen(ErrorScreen(error, list(self.log_lines)[-6:], can_retry_disk=True, capture=True))

    def _capture_stopped_note(self, message: CaptureFinished) -> str:
        name = signal_name(self.stop_signal or signal.SIGTERM)
        if message.result is not None:
            return f"bty tui: stopped by {name} after the capture had finished: {message.result.receipt.output}"
        cause = error_cause(message.error) if message.error is not None else "the capture ended without a result"
        return f"bty tui: stopped by {name}: {cause}"

    @work(thread=True, exclusive=True, group="images-lookup", exit_on_error=False)
    def _list_captured(self, output: Path) -> None:
        """"Flash it now": the new image as the catalog describes it (its frames walked)."""
        try:
            entries = self.backend.list_images(self.images_dir)
        except Exception as exc:  # noqa: BLE001 - told on the Images screen
            self.post_message(CapturedListed(output, None, str(exc)))
            return
        entry = next((e for e in entries if e.path.resolve() == output.resolve()), None)
        problem = f"it is not listed in {self.images_dir}" if entry is None else entry.problem
        self.post_message(CapturedListed(output, entry, problem))

    @on(CapturedListed)
    def _captured_listed(self, message: CapturedListed) -> None:
        if not isinstance(self.top, CaptureDoneScreen):
            return  # the user went elsewhere meanwhile
        self._back_to_images()
        if message.entry is None or message.problem:
            self.notify(f"{message.output.name} cannot be flashed: {message.problem}", severity="error")
            return
        self._entry = message.entry
        self.push_screen(self._disks_screen(message.entry))

    # -- hot-plug --------------------------------------------------------------------------------

    @on(DiskHotplug)
    def _hotplug(self, message: DiskHotplug) -> None:
        event = message.event
        if event.action != "changed":
            self.note(f"disk {event.action}: {event.path}")
        screen = self.top
        if isinstance(screen, (DisksScreen, CaptureDisksScreen)):
            if self._rescan_timer is not None:
                self._rescan_timer.stop()
            self._rescan_timer = self.set_timer(RESCAN_DELAY, self._rescan_disks)
        elif isinstance(screen, (ConfirmScreen, CaptureConfirmScreen)) and event.name == screen.plan.disk.name \
                and event.action != "changed":
            screen.disk_changed()

    def _rescan_disks(self) -> None:
        self._rescan_timer = None
        screen = self.top
        if isinstance(screen, (DisksScreen, CaptureDisksScreen)):
            screen.rescan()


def make_app(
    *,
    images_dir: Path | str | None = None,
    actions: SystemActions | None = None,
    known_good: KnownGood | None = None,
    backend: Backend | None = None,
    options: FlashOptions | None = None,
    clock: Callable[[], float] = time.time,
    follow_hotplug: bool = True,
    handle_stop_signals: bool = False,
) -> BtyApp:
    """The app, wired to the real engine unless told otherwise.

    images_dir: as `bty flash --images` (None: $BTY_IMAGES, the stick's partition, ./images).
    actions: reboot and power off (default: `systemctl reboot|poweroff`); tests pass recorders.
    known_good: the ledger's badge per image: "known-good", "unverified" or "" (None: no badges).
    backend: the functions the TUI calls (default: the real ones; snapshots use recorded data).
    clock: wall time for the elapsed counter (snapshots freeze it).
    follow_hotplug: follow hot-plug events (the Disks screen then updates by itself).
    handle_stop_signals: SIGTERM, SIGHUP and SIGQUIT cancel a running flash (the disk is wiped)
      and exit with 128+N (`bty tui` sets it; tests in the pytest process leave it off).
    """
    if actions is None:
        from bty_live.system.actions import systemd_actions

        actions = systemd_actions()
    return BtyApp(
        images_dir=resolve_images_dir(images_dir),
        backend=backend or real_backend(),
        actions=actions,
        known_good=known_good,
        options=options,
        clock=clock,
        follow_hotplug=follow_hotplug,
        handle_stop_signals=handle_stop_signals,
    )
