"""The TUI's console font follows the screen's size: readable text on large monitors, never fewer
than 80x24 cells, and no change where there is no framebuffer console."""

from __future__ import annotations

import os
import pty
from pathlib import Path

import pytest

from bty_live.stick.console_font import (
    KERNEL_8X16,
    TERMINUS_16X32,
    choose_font,
    framebuffer_size,
    on_virtual_terminal,
    set_console_font,
)


@pytest.mark.parametrize(("width", "height", "font", "double", "grid"), [
    (3840, 2160, TERMINUS_16X32, True, (120, 33)),   # 4K: doubled Terminus
    (3200, 1800, TERMINUS_16X32, True, (100, 28)),
    (2560, 1440, TERMINUS_16X32, False, (160, 45)),  # doubled would give 80x22: too few rows
    (1920, 1200, TERMINUS_16X32, False, (120, 37)),
    (1920, 1080, TERMINUS_16X32, False, (120, 33)),  # the kernel's font would give 240x67
    (1600, 900, TERMINUS_16X32, False, (100, 28)),
    (1366, 768, None, False, (170, 48)),             # a laptop: the kernel's 8x16
    (1280, 800, None, False, (160, 50)),             # QEMU's default screen
    (1024, 768, None, False, (128, 48)),
    (640, 480, None, False, (80, 30)),
])
def test_the_font_is_chosen_by_screen_size(width: int, height: int, font: str | None, double: bool,
                                           grid: tuple[int, int]) -> None:
    choice = choose_font(width, height)
    assert (choice.font, choice.double) == (font, double)
    assert choice.grid(width, height) == grid


def test_a_wide_but_short_screen_keeps_at_least_24_rows() -> None:
    # 16x32 cells on 1920x700 would leave 21 rows: the kernel's font stays
    assert choose_font(1920, 700) == KERNEL_8X16


def test_the_description_names_font_and_cells() -> None:
    assert choose_font(1920, 1080).describe(1920, 1080) == f"{TERMINUS_16X32} for 1920x1080: 120x33 cells"
    assert "doubled" in choose_font(3840, 2160).describe(3840, 2160)
    assert "kernel's 8x16 font" in choose_font(1280, 800).describe(1280, 800)


def test_framebuffer_size_reads_sysfs_virtual_size(tmp_path: Path) -> None:
    (tmp_path / "virtual_size").write_text("1920,1080\n")
    assert framebuffer_size(tmp_path) == (1920, 1080)


@pytest.mark.parametrize("text", ["", "1920x1080", "0,0", "garbage,1"])
def test_an_unreadable_framebuffer_size_is_no_size(tmp_path: Path, text: str) -> None:
    (tmp_path / "virtual_size").write_text(text)
    assert framebuffer_size(tmp_path) is None


def test_no_framebuffer_is_no_size(tmp_path: Path) -> None:
    assert framebuffer_size(tmp_path / "fb0") is None


def test_a_pseudo_terminal_is_not_a_virtual_terminal_and_is_left_alone(tmp_path: Path) -> None:
    # a terminal emulator, SSH or a serial line: the font is not the TUI's to change
    (tmp_path / "virtual_size").write_text("3840,2160\n")
    leader, follower = pty.openpty()
    try:
        assert not on_virtual_terminal(follower)
        assert set_console_font(follower, fb=tmp_path) is None
    finally:
        os.close(leader)
        os.close(follower)


def test_a_file_is_not_a_terminal() -> None:
    with open(os.devnull) as null:
        assert not on_virtual_terminal(null.fileno())
