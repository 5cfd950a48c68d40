"""The TUI's screens, one module each. Screens get their data as constructor arguments (or
callables they run in thread workers) and report choices by posting messages; the app decides
what comes next."""

from bty_live.tui.screens.capture_confirm import CaptureConfirmScreen
from bty_live.tui.screens.capture_disks import CaptureDisksScreen
from bty_live.tui.screens.capture_done import CaptureDoneScreen
from bty_live.tui.screens.capture_form import CaptureFormScreen
from bty_live.tui.screens.confirm import ConfirmScreen
from bty_live.tui.screens.dialogs import CancelDialog, CaptureCancelDialog, HelpScreen, LogScreen, PowerDialog
from bty_live.tui.screens.disks import DisksScreen
from bty_live.tui.screens.done import DoneScreen
from bty_live.tui.screens.error import ErrorScreen
from bty_live.tui.screens.images import ImagesScreen
from bty_live.tui.screens.progress import CaptureProgressScreen, ProgressScreen, RunProgressScreen

__all__ = [
    "CancelDialog",
    "CaptureCancelDialog",
    "CaptureConfirmScreen",
    "CaptureDisksScreen",
    "CaptureDoneScreen",
    "CaptureFormScreen",
    "CaptureProgressScreen",
    "ConfirmScreen",
    "DisksScreen",
    "DoneScreen",
    "ErrorScreen",
    "HelpScreen",
    "ImagesScreen",
    "LogScreen",
    "PowerDialog",
    "ProgressScreen",
    "RunProgressScreen",
]
