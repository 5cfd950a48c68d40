"""Post-flash tuning: run a CIJOE task on the system just written, from the flasher itself.

Upstream bty ran CIJOE from its server over SSH into every flashed machine: one key into every
machine. bty-live tunes on the machine being flashed instead: after write, verify and fix-ups
the target's root filesystem is mounted on the flasher and a CIJOE task (local transport) edits
it; no central credential exists.

    from bty_live.tune import TuneRequest, run_tuning
    result = run_tuning(TuneRequest(task=Path("demo.task.yaml"), disk="/dev/sdb", image_name="demo",
                                    image_blake3="...", images_dir=Path("/run/bty/images")), sink)

The scripts tasks use (`uses: bty.hostname`, ...) are the `cijoe.bty` package shipped beside
`bty_live`. See `tuning.py` for the sequence, `task.py` for choosing and reading tasks,
`rootfs.py` for finding and mounting the root, `config.py` for what scripts are told.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bty_live.errors import TuneError
    from bty_live.tune.model import StepResult, TuneRequest, TuneResult
    from bty_live.tune.task import OFF, TaskChoice, TuneTask, choose_task, load_task, task_digest
    from bty_live.tune.tuning import run_tuning

#: where each name lives. Imported on first use (PEP 562): the TUI and the CLI import
#: bty_live.tune.model for a plan long before any task runs, and that must not pull in the task
#: reader (YAML) and the CIJOE runner on a live stick where every import costs boot time.
_HOMES = {
    "TuneError": "bty_live.errors",
    "StepResult": "bty_live.tune.model",
    "TuneRequest": "bty_live.tune.model",
    "TuneResult": "bty_live.tune.model",
    "OFF": "bty_live.tune.task",
    "TaskChoice": "bty_live.tune.task",
    "TuneTask": "bty_live.tune.task",
    "choose_task": "bty_live.tune.task",
    "load_task": "bty_live.tune.task",
    "task_digest": "bty_live.tune.task",
    "run_tuning": "bty_live.tune.tuning",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


__all__ = [
    "OFF",
    "StepResult",
    "TaskChoice",
    "TuneError",
    "TuneRequest",
    "TuneResult",
    "TuneTask",
    "choose_task",
    "load_task",
    "run_tuning",
    "task_digest",
]
