"""Where bty keeps what it leaves behind: the live stick's images partition, receipts, CIJOE reports.

On the stick everything goes to the BTY_IMAGES partition (mounted at /run/bty/images), so it
survives the session; elsewhere to $BTY_RECEIPTS or the XDG state directory.
"""

from __future__ import annotations

import os
from pathlib import Path

#: where the live stick mounts its BTY_IMAGES partition
LIVE_IMAGES_DIR = Path("/run/bty/images")
RECEIPTS_ENV = "BTY_RECEIPTS"
#: CIJOE's output directories, beside the receipts (or in the images directory)
REPORTS_DIR = "reports"


def default_receipts_dir() -> Path:
    """$BTY_RECEIPTS, else receipts/ on the live stick's images partition, else ~/.local/state."""
    env = os.environ.get(RECEIPTS_ENV)
    if env:
        return Path(env)
    if LIVE_IMAGES_DIR.is_dir():
        return LIVE_IMAGES_DIR / "receipts"
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "bty-live" / "receipts"


def default_reports_dir() -> Path:
    """Where reports go when there is no writable images directory: beside the receipts."""
    return default_receipts_dir().parent / REPORTS_DIR
