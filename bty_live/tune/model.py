"""What a tuning run is asked to do and what it did (it fails with bty_live.errors.TuneError)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bty_live.system.machine import MachineIdentity


@dataclass(frozen=True)
class TuneRequest:
    """Tune the system just written to `disk` with the CIJOE task `task`."""

    task: Path
    disk: str  # the flashed disk's device node (/dev/sdb, a by-id link)
    image_name: str
    image_blake3: str | None = None
    image_file: str = ""
    image_os: str = ""
    #: the images directory: reports go to <images_dir>/reports/ (unless `reports_dir` is given)
    images_dir: Path | None = None
    reports_dir: Path | None = None
    #: the image's own CIJOE config (TOML), merged under bty's `[bty]` tables
    config: Path | None = None
    #: the manifest's hint for the root partition: a partition number, a GPT partition name or a
    #: filesystem label; tried before the Discoverable Partitions types
    root_hint: str | None = None
    #: None: read this machine's identity (DMI, NICs) from sysfs
    machine: MachineIdentity | None = None
    disk_model: str | None = None
    disk_serial: str | None = None
    #: mount /proc, /sys and /dev inside the target so steps can chroot into it
    api_mounts: bool = True
    #: seconds the whole task may take
    timeout: float = 3600.0


StepStatus = Literal["passed", "failed", "skipped", "not run"]


@dataclass(frozen=True)
class StepResult:
    number: int
    name: str
    uses: str
    status: StepStatus
    seconds: float = 0.0


@dataclass(frozen=True)
class TuneResult:
    """A tuning run that passed, or was skipped (a failure raises TuneError instead)."""

    status: Literal["passed", "skipped"]
    task: str
    task_digest: str
    note: str = ""
    steps: tuple[StepResult, ...] = ()
    report_dir: str | None = None
    root_device: str | None = None
    root_found_by: str | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneResult:
        """The inverse of to_dict (e.g. from a receipt's `tune` field)."""
        values = dict(data)
        values["steps"] = tuple(StepResult(**step) for step in values.get("steps", ()))
        values["notes"] = tuple(values.get("notes", ()))
        return cls(**values)

    def summary(self) -> str:
        if self.status == "skipped":
            return f"tuning skipped: {self.note}"
        passed = sum(1 for s in self.steps if s.status == "passed")
        where = f"; report {self.report_dir}" if self.report_dir else ""
        return (f"tuned with {Path(self.task).name}: {passed}/{len(self.steps)} steps passed "
                f"in {self.seconds:.1f} s{where}")
