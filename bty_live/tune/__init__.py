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

from bty_live.errors import TuneError
from bty_live.tune.model import StepResult, TuneRequest, TuneResult
from bty_live.tune.task import OFF, TaskChoice, TuneTask, choose_task, load_task, task_digest
from bty_live.tune.tuning import run_tuning

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
