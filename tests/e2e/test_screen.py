"""The TUI on a real screen: the stick's screen boot entry (the console on tty1 only, no serial
console), QEMU's VGA card showing a 1920x1080 monitor, and what it shows read back by QMP
`screendump` and OCR (tests/e2e/screen.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.rig import BOOT_TIMEOUT, FIRST_PAINT, StickRun
from tests.e2e.screen import Ppm, Qmp, median_height, ocr, text_of

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1200)]

WIDTH, HEIGHT = 1920, 1080


@contextlib.contextmanager
def rig_running(argv: list[str], workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The rig script in its own session, stopped (QEMU with it) on the way out."""
    with open(workdir / "rig.log", "ab") as rig_log:
        proc = subprocess.Popen(argv, stdout=rig_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)


class ScreenRecorder(threading.Thread):
    """Takes a screendump every `interval` seconds: (seconds since `start`, file) in `shots`."""

    def __init__(self, qmp: Qmp, directory: Path, start: float, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.qmp, self.directory, self.start_time, self.interval = qmp, directory, start, interval
        self.shots: list[tuple[float, Path]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                at = time.monotonic() - self.start_time
                path = self.qmp.screendump(self.directory / f"screen-{len(self.shots):04d}.ppm")
                with self.lock:
                    self.shots.append((at, path))
                self.stopped.wait(self.interval)
        except (OSError, RuntimeError) as exc:  # QEMU went away: the test says so
            self.error = exc

    def snapshot(self) -> list[tuple[float, Path]]:
        with self.lock:
            return list(self.shots)


def shows_title_bar(path: Path) -> bool:
    """The TUI has painted: its blue title bar spans the top row (the boot console is black)."""
    return Ppm.read(path).blue_fraction(8) > 0.5


def shows_image_list(path: Path) -> bool:
    """The Images screen with its list, as OCR reads it: the status line and the second image's
    name (the title bar, white on blue, and the highlighted row are not read reliably)."""
    text = text_of(ocr(path)).lower()
    return "can be flashed" in text and "demo-tunable" in text


def test_the_tui_is_readable_on_a_1920x1080_screen(stick: Path, workdir: Path) -> None:
    sock = workdir / "qmp.sock"
    run = StickRun(stick, workdir, console="screen", targets=1, extra=[
        "-vga", "none", "-device", f"VGA,edid=on,xres={WIDTH},yres={HEIGHT}",
        "-qmp", f"unix:{sock},server=on,wait=off"])
    shots_dir = workdir / "shots"
    shots_dir.mkdir()
    start = time.monotonic()
    with rig_running(run.argv(workdir / "serial.log"), workdir) as proc:
        qmp = Qmp(sock, timeout=120)
        recorder = ScreenRecorder(qmp, shots_dir, start)
        recorder.start()
        first: tuple[float, Path] | None = None
        checked = 0  # the shots before this one did not show the list
        try:
            while first is None:
                assert proc.poll() is None, f"QEMU stopped before the TUI showed; see {workdir}"
                assert recorder.error is None, f"screendump failed: {recorder.error}"
                assert time.monotonic() - start < BOOT_TIMEOUT, f"no image list on the screen; see {shots_dir}"
                shots = recorder.snapshot()
                if len(shots) <= checked:
                    time.sleep(0.5)
                    continue
                at, path = shots[checked]
                if shows_title_bar(path) and shows_image_list(path):
                    first = (at, path)
                else:
                    path.unlink()  # 6 MB each: keep only the one that tells
                    checked += 1
        finally:
            recorder.stopped.set()
            recorder.join(timeout=30)
            qmp.close()
        for _, path in recorder.snapshot()[checked + 1:]:
            path.unlink(missing_ok=True)
    seconds, shot = first
    words = ocr(shot)
    text = text_of(words)
    # The font follows the screen: Terminus 16x32 (120x33 cells), not the kernel's 8x16 (240x67
    # cells, words about 10 px tall).
    height = median_height(words)
    assert height >= 16, f"words are {height:.0f} px tall on the screen: the console font was not enlarged ({shot})"
    assert "bty demo OS" in text, text
    FIRST_PAINT[f"framebuffer {WIDTH}x{HEIGHT} (VGA)"] = seconds
    print(f"\npower-on to the TUI's image list on the {WIDTH}x{HEIGHT} framebuffer: {seconds:.1f} s "
          f"(words {height:.0f} px tall; {shot})")
