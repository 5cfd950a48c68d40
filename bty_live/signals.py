"""Stop signals: SIGTERM, SIGHUP and SIGQUIT stop a flash the way Ctrl-C does.

systemd stops `bty unattended` and the agent with SIGTERM at poweroff, a closed SSH session
sends SIGHUP, and Ctrl-\\ sends SIGQUIT. Left to their default action each kills the process in
the middle of a write, with no wipe, no message and no ledger record. Front-ends install one of
these handlers instead:

- `raise_on_stop_signals()`: for front-ends that run the engine in the main thread (the CLI,
  unattended mode, the agent). The signal raises `StopSignal`, a KeyboardInterrupt, so the
  engine's own Ctrl-C path stops the stages, wipes the target and records the run.
- `call_on_stop_signals(callback)`: for front-ends with an event loop of their own (the TUI),
  which cancel the engine's worker themselves and exit once it has wiped.

The exit code of a run stopped by a signal is 128 + the signal's number, as a shell reports it
(130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP, 131 for SIGQUIT).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

#: the signals that mean "stop now" and that a flash must survive long enough to wipe
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class StopSignal(KeyboardInterrupt):
    """A stop signal arrived; raised in the main thread like Ctrl-C's KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code_for_signal(signum: int) -> int:
    return 128 + signum


def interrupt_signal(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: its StopSignal's, else SIGINT (Ctrl-C)."""
    return exc.signum if isinstance(exc, StopSignal) else signal.SIGINT


_stopping: list[int] = []  # the signal that is stopping us, once one has arrived


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    if _stopping:  # already stopping: a second signal must not cut the wipe or the ledger record short
        return
    _stopping.append(signum)
    # Ignored by the kernel from now on, not by a Python handler: CPython resets the signals it
    # handles to their default action while the interpreter exits, and a late SIGTERM then killed
    # bty after the wipe and its message (exit -15 instead of 143). Programs started after this
    # (the wipe's partx) inherit the ignored dispositions; they are short and never the target of
    # a stop.
    for sig in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(sig, signal.SIG_IGN)
    raise StopSignal(signum)


def raise_on_stop_signals() -> None:
    """Make Ctrl-C and every stop signal raise StopSignal in the main thread, once: later
    signals are ignored while the run stops, wipes and records (call from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _stopping.clear()
    for sig in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(sig, _raise_stop)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """raise_on_stop_signals() for the duration of a command; the previous handlers after it
    (a command run inside another program, such as the tests, leaves its handlers as they were)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    raise_on_stop_signals()
    try:
        yield
    finally:
        if not _stopping:  # once stopping, later signals stay ignored until the process has exited
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def call_on_stop_signals(callback: Callable[[int], None]) -> None:
    """Make every stop signal call `callback(signum)` in the main thread instead of killing us."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        callback(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def block_stop_signals() -> set[int]:
    """Block SIGINT and the stop signals (for the wipe that makes a half-written disk safe);
    returns the previous mask for `restore_signal_mask`. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return set()
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *STOP_SIGNALS}))


def restore_signal_mask(mask: set[int]) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Stop signals wait (blocked, not lost) until the block ends: for a wipe, a rename, a record
    that a second Ctrl-C must not cut short."""
    mask = block_stop_signals()
    try:
        yield
    finally:
        restore_signal_mask(mask)
