"""Rendering the engine's event stream on a terminal: a rich progress bar, plain milestone lines
(serial consoles, logs, pipes), or JSON lines for programs."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Protocol, TextIO

from bty_live.events import Event, Kind, Phase
from bty_live.units import format_duration, format_rate, format_size

if TYPE_CHECKING:  # rich is imported by ProgressBars alone: logs and pipes start without it (30-40 ms)
    from rich.console import Console
    from rich.progress import TaskID

#: the phases that move bytes: a progress bar each, a summary line when they end
_BAR_PHASES = (Phase.WRITE, Phase.VERIFY, Phase.CAPTURE)


class JsonLines:
    """`--json`: one event per line on stdout, flushed, for programs to follow."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def __call__(self, event: Event) -> None:
        self.out.write(event.to_json() + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


class LineOutput(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class MilestoneLines:
    """Plain lines at every 10% of a phase and for every message: for serial consoles and logs."""

    def __init__(self, out: LineOutput | None = None, step: float = 0.10) -> None:
        self.out = out or sys.stderr
        self.step = step
        self._next = step

    def __call__(self, event: Event) -> None:
        label = event.phase.label
        if event.kind == Kind.START:
            self._next = self.step
            self._line(f"{label}: {event.message or 'started'}")
        elif event.kind == Kind.PROGRESS:
            fraction = event.fraction
            if fraction is not None and fraction >= self._next:
                while fraction >= self._next:
                    self._next += self.step
                eta = f", {format_duration(event.eta)} left" if event.eta is not None else ""
                self._line(f"{label}: {fraction:4.0%}  {format_size(event.bytes_out)} of "
                           f"{format_size(event.total or 0)}, {format_rate(event.rate)}{eta}")
        elif event.kind == Kind.END and event.phase in _BAR_PHASES:
            self._line(f"{label}: done, {format_size(event.bytes_out)} in {format_duration(event.elapsed)} "
                       f"({format_rate(event.rate)})" + (f", {event.message}" if event.message else ""))
        elif event.kind == Kind.INFO:
            self._line(f"{label}: {event.message}")
        elif event.kind == Kind.ERROR:
            pass  # the CLI prints the one-line error itself

    def _line(self, text: str) -> None:
        self.out.write(f"bty: {text}\n")
        self.out.flush()

    def close(self) -> None:
        pass


class ProgressBars:
    """An interactive terminal: one rich progress bar per phase, messages printed above."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            refresh_per_second=5,
        )
        self.tasks: dict[Phase, TaskID] = {}
        self.progress.start()

    def __call__(self, event: Event) -> None:
        label = event.phase.label
        if event.kind == Kind.START and event.phase in _BAR_PHASES:
            self.tasks[event.phase] = self.progress.add_task(label, total=event.total)
        elif event.kind in (Kind.PROGRESS, Kind.END) and event.phase in self.tasks:
            task = self.tasks[event.phase]
            total = event.total if event.total else None
            if event.kind == Kind.END:
                total = event.bytes_out
            self.progress.update(task, completed=event.bytes_out, total=total)
        elif event.kind == Kind.INFO:
            self.progress.console.print(f"[dim]{label}:[/dim] {event.message}", highlight=False)

    def close(self) -> None:
        self.progress.stop()


def make_renderer(json_lines: bool) -> JsonLines | MilestoneLines | ProgressBars:
    if json_lines:
        return JsonLines()
    if sys.stderr.isatty():
        return ProgressBars()
    return MilestoneLines()
