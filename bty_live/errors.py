"""Error classes, one per stage of a flash.

The engine and its helpers raise these and never exit; front-ends map each class to
an exit code (see `bty_live.cli.EXIT_CODES`). Every message is one line that names
the thing that went wrong and what to do about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bty_live.flash.receipt import Receipt


class BtyError(Exception):
    """Base of every error bty-live reports to a user."""

    #: short machine-readable class name, used in JSON events and receipts
    kind = "error"
    #: what was done about it afterwards (e.g. "the target was wiped"), shown after the message
    aftermath: str = ""
    #: the failed run's receipt, when the engine had opened the disk (saved like a good one)
    receipt: Receipt | None = None

    def full_message(self) -> str:
        return f"{self}; {self.aftermath}" if self.aftermath else str(self)


class UsageError(BtyError):
    kind = "usage"


class ImageError(BtyError):
    """The image cannot be used at all: missing, unreadable, unknown format, bad manifest."""

    kind = "image"


class SourceCorruptError(ImageError):
    """The image's compressed stream is corrupt or truncated."""

    kind = "corrupt"


class DigestMismatchError(ImageError):
    """The decompressed image does not match the digest its manifest promises."""

    kind = "digest"


class SelectorError(BtyError):
    """A disk selector matched no eligible disk, or more than one."""

    kind = "selector"


class TargetRefusedError(BtyError):
    """The chosen disk must not be written: boot medium, mounted, in use, read-only, too small."""

    kind = "refused"


class TargetIOError(BtyError):
    """Writing or reading the target failed (I/O error, no space)."""

    kind = "io"


class TargetVanishedError(TargetIOError):
    """The target disk disappeared while it was being written."""

    kind = "vanished"


class VerifyError(BtyError):
    """The bytes read back from the target differ from the image."""

    kind = "verify"


class FixupError(BtyError):
    """Moving the backup GPT or growing the last partition failed."""

    kind = "fixup"


class Cancelled(BtyError):
    """The user (or a signal) stopped the run.

    `signum` is the signal that stopped it (SIGINT for Ctrl-C, SIGTERM, SIGHUP, SIGQUIT), or
    None when it was stopped otherwise (the confirmation was not given, the TUI's cancel);
    the exit code is then 128 + signum, as a shell reports a process a signal stopped.
    """

    kind = "cancelled"

    def __init__(self, message: str, *, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum


def stopped_by(signum: int) -> Cancelled:
    """The Cancelled error of a run that the signal `signum` stopped."""
    from bty_live.signals import signal_name

    name = signal_name(signum)
    why = "Ctrl-C" if name == "SIGINT" else f"{name} (the system is shutting down, or someone stopped bty)"
    return Cancelled(f"cancelled by {why}", signum=signum)


class TuneError(BtyError):
    """Post-flash tuning failed: a step of the task, the task itself, or mounting the target.

    The image was written and verified before tuning began; `step` names the failing step when
    one did, `report` the CIJOE output directory that shows why.
    """

    kind = "tune"

    def __init__(self, message: str, *, step: str | None = None, uses: str | None = None,
                 report: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.uses = uses
        self.report = report


class NetworkError(BtyError):
    """Talking to the bty server failed."""

    kind = "network"
