"""`bty disks | cat` and `bty images | cat`: when stdout is not a terminal, one plain row per
line, never wrapped or folded at 80 columns, with the same columns as the terminal's table."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import LoopDevice
from tests.imagekit import MiB

BTY = [sys.executable, "-m", "bty_live.cli"]


def bty_piped(*args: str) -> str:
    """Run bty with stdout a pipe, in an environment that claims an 80-column terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env["COLUMNS"] = "80"
    proc = subprocess.run([*BTY, *args], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_bty_disks_into_a_pipe_prints_one_unwrapped_line_per_disk_with_the_long_backing_path(
        tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    deep = tmp_path / ("a-rather-long-directory-name-for-backing-files-" * 2).rstrip("-")
    deep.mkdir()
    loop = make_loop(8 * MiB, backing_dir=deep, name="disk-with-a-long-name-that-does-not-fit.img")
    backing = str(deep / "disk-with-a-long-name-that-does-not-fit.img")
    assert len(backing) > 80
    out = bty_piped("disks", "--images", str(tmp_path / "images"))
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "TRAN", "MODEL", "SERIAL", "ELIGIBLE"]
    [row] = [line for line in lines if line.split()[0] == loop.name]
    assert "loop" in row.split()
    assert backing in row, f"the backing file is not whole on {loop.name}'s line:\n{out}"
    assert "\x1b[" not in out  # no colours into a pipe
    assert all(line.split()[0] != "-" for line in lines[1:]), "a cell spilled onto a line of its own"


def test_bty_images_into_a_pipe_prints_one_unwrapped_line_per_image_with_the_long_description(
        tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a-very-long-image-file-name-for-the-classroom-computers.img").write_bytes(bytes(MiB))
    description = "Debian 12 with GNOME, LibreOffice, the lab's compilers and a printer driver for room 2.17"
    subprocess.run([*BTY, "images", "add", "--description", description, "--os", "debian-12",
                    str(images / "a-very-long-image-file-name-for-the-classroom-computers.img")],
                   check=True, capture_output=True)
    (images / "scratch.img").write_bytes(bytes(MiB))
    out = bty_piped("images", "--images", str(images))
    lines = out.splitlines()
    header = [line for line in lines if line.startswith("NAME")]
    assert header and header[0].split() == ["NAME", "OS", "FORMAT", "SIZE", "FILE", "DIGEST", "KNOWN-GOOD",
                                            "ON", "DESCRIPTION"]
    [row] = [line for line in lines if line.startswith("a-very-long-image-file-name-for-the-classroom-computers ")]
    assert len(row) > 80
    assert description in row and "debian-12" in row and "manifest" in row
    [scratch] = [line for line in lines if line.startswith("scratch ")]
    assert "unverified" in scratch
    assert "\x1b[" not in out
    rows = lines[lines.index(header[0]) + 1:]
    assert len(rows) == 2, out
