"""The CIJOE task a tuning runs: which one (manifest, --tune, bty.tune=), and what it holds.

A task is CIJOE's YAML (`doc`, `steps`, optional `config`). bty reads one task-level setting from
the `config` table CIJOE leaves free for tasks:

    config:
      bty:
        needs_linux_root: false   # default true

With the default, an image without a mountable Linux root (Windows, FreeBSD, unknown) skips
tuning with a note. A task that says `needs_linux_root: false` runs anyway, with
`[bty.target] root = ""`, and must handle such images itself (e.g. with `run:` steps on the disk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import blake3

from bty_live.errors import ImageError, TuneError, UsageError
from bty_live.image.manifest import Manifest

OFF = "off"
#: steps whose `mode:` must be a quoted string: YAML reads an unquoted 0644 as the number 420
_MODE_SCRIPTS = frozenset({"bty.write_file"})


@dataclass(frozen=True)
class TaskStep:
    name: str
    uses: str  # the script: bty.hostname, core.cmdrunner for `run:` steps


@dataclass(frozen=True)
class TuneTask:
    path: Path
    digest: str  # blake3 of the task file: what the known-good ledger keys on
    doc: str
    steps: tuple[TaskStep, ...]
    needs_linux_root: bool = True


@dataclass(frozen=True)
class TaskChoice:
    task: Path
    config: Path | None
    source: Literal["manifest", "override"]


def task_digest(path: Path) -> str:
    """blake3 of the task file's bytes."""
    return blake3.blake3(path.read_bytes()).hexdigest()


def load_task(path: Path) -> TuneTask:
    """Read and check a task before anything is mounted; errors name the file and the fix."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TuneError(f"tuning task {path} cannot be read ({exc.strerror}); check the path") from exc
    import yaml  # here: a flash without a task (most) plans without loading the YAML parser (~25 ms)

    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        raise TuneError(f"tuning task {path} is not valid YAML ({exc}); fix it") from exc

    def bad(why: str) -> TuneError:
        return TuneError(f"tuning task {path}: {why}; fix the task")

    if not isinstance(data, dict):
        raise bad("the top level must be a mapping with doc and steps")
    steps_data = data.get("steps")
    if not isinstance(steps_data, list) or not steps_data:
        raise bad("it has no steps (a list under `steps:`)")
    steps = []
    for number, step in enumerate(steps_data, 1):
        if not isinstance(step, dict) or not isinstance(step.get("name"), str):
            raise bad(f"step {number} has no name")
        uses = "core.cmdrunner" if "run" in step else step.get("uses")
        if not isinstance(uses, str):
            raise bad(f"step {step['name']!r} has neither `uses:` nor `run:`")
        arguments = step.get("with") or {}
        if not isinstance(arguments, dict):
            raise bad(f"step {step['name']!r}: `with:` must be a mapping")
        if uses in _MODE_SCRIPTS and isinstance(arguments.get("mode"), int):
            raise bad(f"step {step['name']!r}: mode must be quoted, e.g. mode: \"0644\" (YAML reads an unquoted "
                      f"0644 as the number {0o644}, here {arguments['mode']})")
        steps.append(TaskStep(step["name"], uses))
    config = data.get("config") or {}
    bty_config: Any = config.get("bty", {}) if isinstance(config, dict) else {}
    needs_root = bty_config.get("needs_linux_root", True) if isinstance(bty_config, dict) else True
    if not isinstance(needs_root, bool):
        raise bad("config.bty.needs_linux_root must be true or false")
    return TuneTask(path=path, digest=blake3.blake3(raw).hexdigest(), doc=str(data.get("doc") or ""),
                    steps=tuple(steps), needs_linux_root=needs_root)


def choose_task(tune: str | None, manifest: Manifest | None, images_dir: Path | None) -> TaskChoice | None:
    """Which task tunes this flash: `--tune`/`bty.tune=` (a path, or "off"), else the manifest's.

    A task given on the command line is looked for as given, then in the images directory.
    The manifest's config goes with the manifest's task only: an override task gets bty's
    `[bty]` tables and nothing else.
    """
    if tune is not None and tune.strip().lower() == OFF:
        return None
    if tune:
        candidates = [Path(tune)]
        if images_dir is not None and not Path(tune).is_absolute():
            candidates.append(images_dir / tune)
        for candidate in candidates:
            if candidate.is_file():
                return TaskChoice(candidate, None, "override")
        raise UsageError(f"tuning task {tune} does not exist (looked in "
                         + " and ".join(str(c.parent if c.parent != Path() else Path.cwd()) for c in candidates)
                         + "); give a path to a CIJOE task (.yaml), or `off`")
    if manifest is None or not manifest.tune.task:
        return None
    base = images_dir or Path()
    task = base / manifest.tune.task
    if not task.is_file():
        raise ImageError(f"manifest of {manifest.name} names tuning task {manifest.tune.task}, which is not in "
                         f"{base}; copy it there, or flash with --tune off")
    config = None
    if manifest.tune.config:
        config = base / manifest.tune.config
        if not config.is_file():
            raise ImageError(f"manifest of {manifest.name} names tuning config {manifest.tune.config}, which is "
                             f"not in {base}; copy it there, or flash with --tune off")
    return TaskChoice(task, config, "manifest")
