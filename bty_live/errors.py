"""Error classes, one per stage of a flash.

The engine and its helpers raise these and never exit; front-ends map each class to
an exit code (see `bty_live.cli.EXIT_CODES`). Every message is one line that names
the thing that went wrong and what to do about it.
"""

from __future__ import annotations


class BtyError(Exception):
    """Base of every error bty-live reports to a user."""

    #: short machine-readable class name, used in JSON events and receipts
    kind = "error"
    #: what was done about it afterwards (e.g. "the target was wiped"), shown after the message
    aftermath: str = ""

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
    """The user (or a signal) stopped the run."""

    kind = "cancelled"


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
