"""Every error class bty-live reports, and the exit code of each: the one home of both.

The engine and its helpers raise these and never exit; every front-end (`bty`, the TUI,
unattended mode, the agent) maps a class to its exit code with `exit_code_for`. Every message
is one line that names the thing that went wrong and what to do about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bty_live.capture.receipt import CaptureReceipt
    from bty_live.flash.ledger import LedgerRecord
    from bty_live.flash.receipt import Receipt


class BtyError(Exception):
    """Base of every error bty-live reports to a user."""

    #: short machine-readable class name, used in JSON events and receipts
    kind = "error"
    #: what was done about it afterwards (e.g. "the target was wiped"), shown after the message
    aftermath: str = ""
    #: the failed run's receipt, when the engine had opened the disk (saved like a good one);
    #: a failed `bty capture`'s is a CaptureReceipt
    receipt: Receipt | CaptureReceipt | None = None
    #: the failed run's ledger record, when the engine had started the run
    record: LedgerRecord | None = None

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


class ImageFetchError(ImageError):
    """The image could not be downloaded completely from the server."""

    kind = "fetch"


class NotFoundError(ImageFetchError):
    """The server has no such file (HTTP 404): for an image a failure, for a manifest beside it
    only the news that there is none."""


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


class ServerUnavailableError(NetworkError):
    """The server could not be reached or answered 5xx: worth trying again later."""

    kind = "unreachable"


class TokenRefusedError(NetworkError):
    """The server refused our token (401/403): trying again will not help."""

    kind = "token"


class ServerRejectedError(NetworkError):
    """The server answered 4xx (other than 401/403) or something we cannot use."""

    kind = "rejected"


class RunWithdrawnError(ServerRejectedError):
    """The server is no longer on this run (409): the operator cancelled it or assigned the
    machine anew. An agent stops the run's flash when its reports get this answer."""

    kind = "withdrawn"


class ToolError(BtyError):
    """An external tool is missing or failed."""

    kind = "tool"


class LedgerError(BtyError):
    """The ledger cannot be written (read problems are reported, not raised)."""

    kind = "ledger"


class StateError(BtyError):
    """The state directory cannot be used."""

    kind = "state"


# --------------------------------------------------------------------------- exit codes

#: exit code per error class; the first matching class (most specific first) wins
EXIT_CODES: list[tuple[type[BaseException], int, str]] = [
    (UsageError, 2, "bad arguments"),
    (SourceCorruptError, 4, "image corrupt or truncated"),
    (DigestMismatchError, 5, "image digest does not match its manifest"),
    (ImageError, 3, "image missing, unreadable or of an unknown format"),
    (SelectorError, 6, "disk selector matched no eligible disk, or several"),
    (TargetRefusedError, 7, "target refused: boot medium, holds the images, mounted, in use, read-only, "
     "too small, or fake capacity"),
    (TargetVanishedError, 9, "target disk vanished during the run"),
    (TargetIOError, 8, "I/O error or no space on the target"),
    (VerifyError, 10, "read-back verification failed"),
    (FixupError, 11, "partition-table fix-up failed"),
    (TuneError, 13, "post-flash tuning failed (the step is named; the disk is wiped)"),
    (NetworkError, 14, "the bty server is unreachable, or refused the token"),
    (ToolError, 12, "a required tool is missing or failed"),
    (Cancelled, 130, "cancelled (Ctrl-C, or the confirmation was not given); 128+N when signal N "
     "stopped it: 143 SIGTERM, 129 SIGHUP, 131 SIGQUIT (a touched disk is wiped first)"),
    (BtyError, 1, "other error"),
]
#: not an error: `bty tui` / `bty unattended` ask the stick's session wrapper
#: (/usr/lib/bty-live/session) for a root shell; distinct from every error's code
SHELL_EXIT_CODE = 20
INTERNAL_ERROR = 70


def exit_code_for(exc: BaseException) -> int:
    """The exit code of a run that ended with `exc` (a stop signal N: 128 + N, as a shell says)."""
    if isinstance(exc, Cancelled) and exc.signum is not None:
        from bty_live.signals import exit_code_for_signal

        return exit_code_for_signal(exc.signum)
    for cls, code, _ in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return INTERNAL_ERROR


def exit_codes_help() -> str:
    """The exit codes, as `bty --help` and `bty flash --help` list them."""
    lines = ["exit codes:", "  0    success"]
    for _, code, text in sorted(EXIT_CODES, key=lambda item: item[1]):
        lines.append(f"  {code:<4} {text}")
    lines.append(f"  {SHELL_EXIT_CODE:<4} a root shell was asked for (bty tui, bty unattended on the stick)")
    lines.append(f"  {INTERNAL_ERROR:<4} internal error (a bug: rerun with BTY_DEBUG=1 and report it)")
    return "\n".join(lines)
