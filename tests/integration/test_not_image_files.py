"""Paths that are not image files (a FIFO, a character device such as /dev/zero, a socket, a
directory) are refused at once by `bty images add`, `bty inspect` and `bty flash`, naming what
they are; reading them would hang forever or never end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import LoopDevice

BTY = str(Path(sys.executable).with_name("bty"))
#: a hang is the defect: any of these commands must answer well within this
TIMEOUT = 20


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "stream.img"
    os.mkfifo(path)
    return path


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "sock.img"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    yield path
    server.close()


def bty(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BTY, *args], capture_output=True, text=True, timeout=TIMEOUT)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["images", "add"], ["inspect"]])
def test_a_fifo_is_refused_as_a_fifo_instead_of_hanging(fifo: Path, command: list[str]) -> None:
    proc = bty(*command, str(fifo))
    assert proc.returncode == 3
    assert f"image {fifo} is a FIFO (named pipe), not a disk image file" in one_line(proc)


@pytest.mark.parametrize("command", [["images", "add"], ["inspect"]])
def test_dev_zero_is_refused_as_a_character_device_instead_of_reading_forever(command: list[str]) -> None:
    proc = bty(*command, "/dev/zero")
    assert proc.returncode == 3
    assert "image /dev/zero is a character device, not a disk image file" in one_line(proc)


def test_a_socket_and_a_directory_are_refused_naming_what_they_are(unix_socket: Path, tmp_path: Path) -> None:
    assert "is a socket, not a disk image file" in one_line(bty("inspect", str(unix_socket)))
    assert f"image {tmp_path} is a directory, not a disk image file" in one_line(bty("images", "add", str(tmp_path)))


@pytest.mark.parametrize("kind", ["fifo", "chardev", "directory"])
def test_flash_says_what_the_image_path_is_instead_of_does_not_exist(
        kind: str, fifo: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(16 << 20, fill=b"\x33")
    path, what = {"fifo": (str(fifo), "a FIFO (named pipe)"), "chardev": ("/dev/zero", "a character device"),
                  "directory": (str(tmp_path), "a directory")}[kind]
    proc = bty("flash", path, loop.path, "--yes", "--images", str(tmp_path))
    assert proc.returncode == 3
    line = one_line(proc)
    assert f"image {path} is {what}, not a disk image file" in line and "does not exist" not in line
    assert loop.read(0, 4096) == b"\x33" * 4096


def test_a_missing_image_still_says_it_does_not_exist(tmp_path: Path) -> None:
    proc = bty("inspect", str(tmp_path / "gone.img"))
    assert proc.returncode == 3 and "does not exist" in one_line(proc)


def test_flash_says_a_block_device_given_as_the_image_is_one(make_loop: Callable[..., LoopDevice],
                                                               tmp_path: Path) -> None:
    source, target = make_loop(16 << 20, fill=b"\x11"), make_loop(16 << 20, fill=b"\x33")
    proc = bty("flash", source.path, target.path, "--yes", "--images", str(tmp_path))
    assert proc.returncode == 3
    assert f"image {source.path} is a block device, not a disk image file" in one_line(proc)
    assert target.read(0, 4096) == b"\x33" * 4096
