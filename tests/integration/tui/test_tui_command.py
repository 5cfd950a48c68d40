"""`bty tui` as a command: its argparse wiring, and the real app in a Linux-console pty."""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
from pathlib import Path

import pexpect
import pytest

from bty_live.commands import tui
from tests.integration.tui.snapshot_app import CP437

#: CSI and OSC sequences, to leave only what the terminal draws
_ESCAPES = re.compile(rb"\x1b\[[0-9;?<>=$]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>]")


def test_the_tui_subcommand_registers_its_options_help_and_run() -> None:
    parser = argparse.ArgumentParser(prog="bty")
    tui.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tui", "--images", "/run/bty/images"])
    assert args.func is tui.run and args.images == "/run/bty/images"
    assert "Confirm" in tui.DESCRIPTION and "exit status" in tui.DESCRIPTION


def spawn_tui(images: Path) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEXTUAL") and k != "COLORTERM"}
    env["TERM"] = "linux"
    return pexpect.spawn(sys.executable, ["-m", "bty_live.tui", "--images", str(images)], env=env,
                         dimensions=(24, 80), timeout=60)


@pytest.fixture
def small_images(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    (images / "alpine.img").write_bytes(bytes(1 << 20))
    return images


def test_on_a_linux_console_it_draws_in_16_colours_with_the_console_font_and_quits_with_ctrl_q(
        small_images: Path) -> None:
    child = spawn_tui(small_images)
    child.logfile_read = io.BytesIO()
    child.expect("alpine")  # the images list is drawn
    child.expect(" Help")  # ... and the key hints
    child.sendcontrol("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    output = child.logfile_read.getvalue()
    assert not re.search(rb"\x1b\[[0-9;]*[34]8;[25];", output), "truecolor or 256-colour sequences were sent"
    text = _ESCAPES.sub(b"", output).decode("utf-8")
    foreign = sorted({c for c in text if c not in CP437 and c not in "\r\n\x07"})
    assert not foreign, f"glyphs the console font lacks: {foreign!r}"


def test_the_shell_key_exits_with_the_code_that_makes_the_wrapper_start_a_shell(small_images: Path) -> None:
    child = spawn_tui(small_images)
    child.expect(" Help")
    child.send("s")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 20  # SHELL_EXIT_CODE, which no error shares
