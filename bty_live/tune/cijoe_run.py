"""Run a CIJOE task in a child process and turn its progress into TUNE events.

CIJOE runs as `python -m bty_live.tune._cijoe_main` (its own CLI, behind a small wrapper), not
inside bty's process: its resource collector is a process-wide singleton that also collects from
the current directory, it appends to sys.path, resets the root logger (`basicConfig(force=True)`)
and keeps counters in a class attribute. A child process keeps all of that away from the TUI or
the agent running the engine, and lets a hung task be killed by the timeout.

The child's progress is CIJOE's own `task.state` (YAML) in the output directory, rewritten when
each step starts and once at the end. It is polled while the child runs; whatever the polls
missed is caught up from the final state, so every step gets exactly one "started" and one
outcome event, in order, however fast or slow the steps are.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bty_live.errors import ToolError, TuneError
from bty_live.events import Event, EventSink, Kind, Phase
from bty_live.system.run import run
from bty_live.tune.model import StepResult, StepStatus

RUNNER_MODULE = "bty_live.tune._cijoe_main"
POLL_SECONDS = 0.2
STATE_FILE = "task.state"
LOG_FILE = "bty-cijoe.log"

#: CIJOE's own ERROR lines that say *that* something failed, not why
_GENERIC = re.compile(
    r"^(script\(.*\) : (err\(-?\d+\)|failed)|one or more steps failed|exiting, fail_fast.*"
    r"|task\.load\(\): see errors above.*|failed: .*|no task\.state, nothing to produce a report for|missing config)$"
)
_LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):")
#: argparse's last words when a step's `with:` arguments do not parse (it exits CIJOE)
_USAGE_ERROR = re.compile(r"^[\w.-]+: error: (.+)$")


def cijoe_argv(task: Path, config: Path, output: Path, workdir: Path) -> list[str]:
    """`-P`: no directory is put in front of the child's import path (Python 3.11+); run_cijoe also
    starts it in `workdir`, so the directory bty was started in (a checkout's cijoe/ folder) can
    never shadow the installed CIJOE."""
    return [sys.executable, "-P", "-m", RUNNER_MODULE, str(workdir), str(task), "-c", str(config), "-o",
            str(output), "-l"]


def read_state(path: Path) -> dict[str, Any] | None:
    """The task state, or None while it does not exist or is half written."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("steps"), list) else None


def _status(step: dict[str, Any]) -> tuple[bool, StepStatus | None, float]:
    """(started, outcome or None while running, seconds)."""
    status = step.get("status") or {}
    started = float(status.get("started") or 0) > 0
    outcome: StepStatus | None = None
    keys: tuple[StepStatus, ...] = ("failed", "passed", "skipped")
    for key in keys:
        if status.get(key):
            outcome = key
            break
    return started, outcome, float(status.get("elapsed") or 0.0)


class StepWatcher:
    """Emits, per step, one INFO event when it starts and one when it ends, in step order."""

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink
        self.announced_start: set[int] = set()
        self.announced_end: set[int] = set()

    def _emit(self, message: str) -> None:
        self.sink(Event(Phase.TUNE, Kind.INFO, message=message))

    def update(self, state: dict[str, Any], final: bool = False) -> list[StepResult]:
        steps = [s for s in state.get("steps", []) if isinstance(s, dict)]
        results = []
        for number, step in enumerate(steps, 1):
            name, uses = str(step.get("name", f"step{number}")), str(step.get("uses", "?"))
            label = f"step {number}/{len(steps)} {name} ({uses})"
            started, outcome, seconds = _status(step)
            if outcome is None and final:  # a step still "running" at the end took CIJOE down with it
                outcome = "failed" if started else "not run"
            if (started or outcome is not None) and number not in self.announced_start and outcome != "not run":
                self.announced_start.add(number)
                self._emit(f"{label}: started")
            if outcome is not None and number not in self.announced_end:
                self.announced_end.add(number)
                suffix = {"passed": f" in {seconds:.1f} s", "failed": f" after {seconds:.1f} s"}.get(outcome, "")
                if outcome == "not run":
                    suffix = " (an earlier step failed)"
                self._emit(f"{label}: {outcome}{suffix}")
            results.append(StepResult(number, name, uses, outcome or "not run", seconds))
        return results


@dataclass(frozen=True)
class CijoeOutcome:
    returncode: int
    log: str  # the child's stdout and stderr
    steps: tuple[StepResult, ...]
    state_found: bool


def run_cijoe(argv: list[str], output: Path, sink: EventSink, timeout: float, cwd: Path | None = None) -> CijoeOutcome:
    """Run the child (through bty_live.system.run, in `cwd`) in a thread; poll its task.state meanwhile."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["proc"] = run(argv, check=False, timeout=timeout, cwd=cwd)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            box["error"] = exc

    watcher = StepWatcher(sink)
    state_path = output / STATE_FILE
    thread = threading.Thread(target=work, name="bty-cijoe", daemon=True)
    thread.start()
    seen: tuple[int, int] | None = None  # (mtime, size) of the last state read whole
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        try:
            st = state_path.stat()
        except OSError:
            continue
        if (st.st_mtime_ns, st.st_size) != seen:
            state = read_state(state_path)
            if state is not None:  # else half written: read it again on the next poll
                seen = (st.st_mtime_ns, st.st_size)
                watcher.update(state)
    error = box.get("error")
    if isinstance(error, ToolError):
        raise TuneError(f"the tuning task did not finish: {error}; the report so far is in {output}",
                        report=str(output)) from error
    if error is not None:
        raise error
    proc: subprocess.CompletedProcess[str] = box["proc"]
    log = (proc.stdout or "") + (proc.stderr or "")
    state = read_state(state_path)
    steps = watcher.update(state, final=True) if state is not None else []
    return CijoeOutcome(proc.returncode, log, tuple(steps), state is not None)


def not_run_reason(outcome: CijoeOutcome, output: Path) -> str:
    """Why CIJOE ran no step: its exit status and own words, or, when it exited 0 yet left no task
    state, that (so "exit status 0" is never given as the reason of a failure)."""
    if outcome.returncode == 0:
        return (f"(cijoe exited without running the task: no {STATE_FILE} in {output}): check that "
                f"`{sys.executable} -P -c 'import cijoe.cli.cli as m; print(m.__file__)'` shows the installed CIJOE")
    return f"(cijoe exit status {outcome.returncode}): {failure_reason(outcome.log, None)}"


def step_dir(output: Path, number: int, name: str) -> Path:
    """Where CIJOE keeps a step's command logs and artifacts (cijoe.core.misc.sanitize_ident)."""
    ident = f"{number:03}_{name}"
    for char in r'/\|!?[]<>.,:;"*':
        ident = ident.replace(char, "_")
    return output / ident


def _traceback_end(lines: list[str], start: int) -> str | None:
    """The last line of the traceback that follows line `start` (a `log.exception` header)."""
    last = None
    for line in lines[start + 1:]:
        if _LOG_LINE.match(line):
            break
        if line.strip():
            last = line.strip()
    return last


def error_lines(log: str) -> list[str]:
    """The specific reasons in the child's ERROR lines (CIJOE's generic ones left out)."""
    lines = log.splitlines()
    found = []
    for i, line in enumerate(lines):
        usage = _USAGE_ERROR.match(line)
        if usage:
            found.append(f"the step's `with:` arguments do not parse: {usage.group(1)}")
            continue
        if not line.startswith("ERROR:"):
            continue
        message = line.split("(): ", 1)[1] if "(): " in line else line[len("ERROR:"):]
        if _GENERIC.match(message.strip()):
            if message.strip().endswith(": failed"):
                end = _traceback_end(lines, i)
                if end:
                    found.append(end)
            continue
        found.append(message.strip())
    return found


def failed_command(step_dir: Path) -> str | None:
    """`command` exited with N: its last line, for the last failing command of a step."""
    states = sorted(step_dir.glob("cmd_*.state"), key=lambda p: p.stem)
    for state_path in reversed(states):
        try:
            state = yaml.safe_load(state_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        if not state.get("err"):
            continue
        output = state_path.with_suffix(".output")
        try:
            tail = [line for line in output.read_text(errors="replace").splitlines() if line.strip()][-1:]
        except OSError:
            tail = []
        return f"`{state.get('cmd')}` exited with {state.get('err')}" + (f": {tail[0].strip()}" if tail else "")
    return None


def failure_reason(log: str, step_dir: Path | None) -> str:
    """Why a step failed: the script's own error, else its failing command, else a pointer.
    Without a step (the task did not load), every reason CIJOE gave."""
    reasons = error_lines(log)
    if reasons and step_dir is None:
        return "; ".join(dict.fromkeys(reasons))
    if reasons:
        return reasons[-1]
    if step_dir is not None:
        command = failed_command(step_dir)
        if command:
            return command
    return "no reason was logged"
