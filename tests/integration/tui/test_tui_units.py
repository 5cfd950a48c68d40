"""The TUI's plain-Python parts: the event throttle, the progress state, the wording of errors."""

from __future__ import annotations

import pytest

from bty_live import errors
from bty_live.errors import ToolError
from bty_live.events import Event, Kind, Phase
from bty_live.tui.progress import EventThrottle, FlashProgress
from bty_live.tui.text import bar, clip, error_cause, error_heading, format_clock, log_line, next_steps

MiB = 1 << 20


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress(done: int, phase: Phase = Phase.WRITE) -> Event:
    return Event(phase, Kind.PROGRESS, bytes_out=done, total=100 * MiB)


def test_the_throttle_passes_at_most_five_progress_events_a_second_and_every_other_event() -> None:
    clock, seen = FakeClock(), list[Event]()
    throttle = EventThrottle(seen.append, max_rate=5.0, clock=clock)
    throttle(Event(Phase.WRITE, Kind.START, total=100 * MiB))
    for i in range(100):  # 100 progress events in one second, as a fast engine could send
        throttle(progress(i * MiB))
        clock.now += 0.01
    throttle(Event(Phase.WRITE, Kind.INFO, message="a decision"))
    throttle(Event(Phase.WRITE, Kind.END, bytes_out=100 * MiB, total=100 * MiB))
    kinds = [e.kind for e in seen]
    assert kinds.count(Kind.PROGRESS) == 5
    assert kinds[0] == Kind.START and kinds[-2:] == [Kind.INFO, Kind.END]
    assert throttle.dropped == 95


def test_the_first_progress_event_of_each_phase_passes_at_once() -> None:
    clock, seen = FakeClock(), list[Event]()
    throttle = EventThrottle(seen.append, clock=clock)
    throttle(progress(1 * MiB))
    throttle(Event(Phase.VERIFY, Kind.START, total=100 * MiB))
    throttle(progress(1 * MiB, Phase.VERIFY))  # no time has passed: still shown
    assert [(e.phase, e.kind) for e in seen] == [(Phase.WRITE, Kind.PROGRESS), (Phase.VERIFY, Kind.START),
                                                 (Phase.VERIFY, Kind.PROGRESS)]


def test_progress_keeps_the_write_counts_through_the_verify_phase_and_ticks_off_each_step() -> None:
    events = [
        Event(Phase.WRITE, Kind.START, total=100 * MiB, timestamp=10.0),
        Event(Phase.WRITE, Kind.PROGRESS, bytes_out=40 * MiB, zero_bytes=10 * MiB, total=100 * MiB, rate=2e7,
              eta=3.0, timestamp=12.0),
        Event(Phase.WRITE, Kind.END, bytes_out=100 * MiB, zero_bytes=30 * MiB, total=100 * MiB, elapsed=5.0,
              timestamp=15.0),
        Event(Phase.VERIFY, Kind.START, total=100 * MiB, message="reading back", timestamp=15.1),
        Event(Phase.VERIFY, Kind.PROGRESS, bytes_out=25 * MiB, total=100 * MiB, timestamp=16.0),
    ]
    state = FlashProgress()
    for event in events:
        state = state.apply(event)
    assert state.phase == Phase.VERIFY and state.fraction == 0.25
    assert (state.written, state.zeroed) == (70 * MiB, 30 * MiB)
    assert state.finished == {Phase.WRITE: 5.0}
    assert state.last_message == "reading back"
    assert state.elapsed(now=20.0) == 10.0


def test_an_error_event_ends_the_progress_as_failed() -> None:
    state = FlashProgress().apply(Event(Phase.WRITE, Kind.START, total=10))
    state = state.apply(Event(Phase.FAILED, Kind.ERROR, message="image x is corrupt", error="corrupt"))
    assert state.phase == Phase.FAILED and state.last_message == "image x is corrupt"


#: what planning and flashing raise (bty_live.errors, and the tool runner's error)
FLASH_ERRORS = (errors.UsageError, errors.ImageError, errors.SourceCorruptError, errors.DigestMismatchError,
                errors.SelectorError, errors.TargetRefusedError, errors.TargetIOError, errors.TargetVanishedError,
                errors.VerifyError, errors.FixupError, errors.Cancelled, ToolError)


@pytest.mark.parametrize("error_class", FLASH_ERRORS, ids=lambda cls: cls.__name__)
def test_every_flash_error_class_gets_its_own_heading_and_advice(error_class: type[Exception]) -> None:
    error = error_class("something failed")
    assert error_heading(error) not in ("Internal error", "The flash failed")
    assert next_steps(error) != next_steps(errors.BtyError("something failed"))


def test_an_unexpected_exception_is_called_a_bug_with_its_class_named() -> None:
    error = KeyError("frames")
    assert error_heading(error) == "Internal error"
    assert "bug" in next_steps(error)
    assert error_cause(error) == "KeyError: 'frames'"


def test_the_cause_includes_what_was_done_to_the_disk_afterwards() -> None:
    error = errors.TargetIOError("I/O error writing /dev/sdb at 1 GiB")
    error.aftermath = "/dev/sdb wiped: partition tables and signatures at its start and end were zeroed"
    assert error_cause(error) == f"I/O error writing /dev/sdb at 1 GiB; {error.aftermath}"
    assert error_heading(ToolError("sgdisk failed")) == "A required tool is missing or failed"


def test_the_bar_clock_and_clip_are_drawn_with_console_safe_glyphs() -> None:
    assert bar(0.5, 10) == "\u2588" * 5 + "\u2591" * 5
    assert bar(None, 4) == "\u2591" * 4
    assert format_clock(None) == "--:--" and format_clock(7.4) == "0:07" and format_clock(3725) == "1:02:05"
    assert clip("debian-12-desktop", 8) == "debian-~" and clip("sda", 5) == "sda  "


def test_progress_events_stay_out_of_the_log_and_phase_ends_carry_their_numbers() -> None:
    assert log_line(progress(MiB)) is None
    line = log_line(Event(Phase.WRITE, Kind.END, bytes_out=64 * MiB, rate=8e8, elapsed=0.1, digest="ab" * 32))
    assert line is not None and "write  end   64 MiB in 0.1 s (800 MB/s), blake3 abababababababab" in line


def test_a_plan_with_tuning_shows_the_tune_step_and_its_live_step_messages() -> None:
    from bty_live.tui.text import progress_parts

    state = FlashProgress(tuning=True)
    for event in (Event(Phase.FIXUP, Kind.END, elapsed=1.0, timestamp=1.0),
                  Event(Phase.TUNE, Kind.START, message="tuning demo with t.yaml (2 steps)", timestamp=2.0),
                  Event(Phase.TUNE, Kind.INFO, message="step 1/2 hostname (bty.hostname): started", timestamp=3.0)):
        state = state.apply(event)
    parts = progress_parts(state, now=4.0)
    assert "[>] tune" in parts.steps and "[x] fix-ups" in parts.steps
    assert "step 1/2 hostname" in parts.message
    assert "tune" not in progress_parts(FlashProgress(), now=0.0).steps  # no task: no tune step


def test_the_first_screen_does_not_import_the_engine_the_unattended_runner_or_the_task_reader() -> None:
    # On the stick every module read from the squashfs delays the first paint (about 5 s of it
    # is imports under QEMU TCG): what runs only after a disk is chosen is imported then.
    import subprocess
    import sys

    probe = ("import sys, bty_live.tui.app; "
             "print(' '.join(m for m in ('bty_live.flash.engine', 'bty_live.stick.unattended', 'bty_live.tune.task', "
             "'bty_live.tune.tuning', 'yaml', 'cijoe') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    assert loaded == []
