"""Drive the QEMU rig (qemu/boot-stick.sh, qemu/boot-disk.sh) from the end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

ROOT = Path(__file__).resolve().parents[2]
BOOT_STICK = ROOT / "qemu" / "boot-stick.sh"
BOOT_DISK = ROOT / "qemu" / "boot-disk.sh"
ANSI = re.compile(r"\x1b(\[[0-9;?<=>$]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-B]|[=>78])")
SHELL_PROMPT = "root@bty-live:~# "

# Generous: TCG on a shared 2-core machine is slow, and CI machines are busier still.
BOOT_TIMEOUT = int(os.environ.get("BTY_E2E_BOOT_TIMEOUT", "420"))


def plain(text: str) -> str:
    """Console output without terminal escapes and carriage returns."""
    return ANSI.sub("", text).replace("\r", "")


@dataclass
class StickRun:
    """One boot of the stick (a copy of it in `workdir`), with targets workdir/targetN.img."""

    stick: Path
    workdir: Path
    cmdline: str = ""
    targets: int = 2
    bus: str = "nvme"
    target_size: str = "4G"
    stick_size: str | None = None
    fail_writes: str | None = None
    in_place: bool = False
    keep_targets: bool = False
    fail_on: str | None = None  # stop QEMU as soon as the console shows this (run_to_end)
    extra: Sequence[str] = ()
    started: float = field(default=0.0, init=False)

    def argv(self, serial_log: Path | None = None) -> list[str]:
        argv = [str(BOOT_STICK), "--stick", str(self.stick), "--workdir", str(self.workdir),
                "--targets", str(self.targets), "--bus", self.bus, "--target-size", self.target_size,
                "--cmdline", self.cmdline]
        if self.stick_size:
            argv += ["--stick-size", self.stick_size]
        if self.fail_writes:
            argv += ["--fail-writes", self.fail_writes]
        if self.in_place:
            argv.append("--in-place")
        if self.keep_targets:
            argv.append("--keep-targets")
        if serial_log:
            argv += ["--serial-log", str(serial_log)]
            if self.fail_on:
                argv += ["--fail-on", self.fail_on]
        if self.extra:
            argv += ["--", *self.extra]
        return argv

    def target(self, n: int) -> Path:
        return self.workdir / f"target{n}.img"

    @property
    def stick_copy(self) -> Path:
        return self.stick if self.in_place else self.workdir / "stick.img"

    def run_to_end(self, log: Path, timeout: int = BOOT_TIMEOUT) -> tuple[int, str, float]:
        """Boot, serial console to `log`, until QEMU exits (guest poweroff or reboot); returns
        (exit code, console text, seconds). A timeout kills QEMU and returns code 124."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with open(self.workdir / "rig.log", "ab") as rig_log:
            proc = subprocess.Popen(self.argv(log), stdout=rig_log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
                code = 124
        text = plain(log.read_text(errors="replace")) if log.exists() else ""
        return code, text, time.monotonic() - start

    def spawn(self, log: Path) -> Console:
        """Boot with the serial console on a pty, for pexpect."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        argv = self.argv()
        child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", codec_errors="replace",
                              timeout=BOOT_TIMEOUT, dimensions=(24, 80))
        child.logfile_read = open(log, "a", encoding="utf-8")  # noqa: SIM115 - closed in Console.close()
        return Console(child, started=self.started)


@dataclass
class Console:
    child: pexpect.spawn
    started: float

    def expect(self, pattern: str | list[str], timeout: int = BOOT_TIMEOUT) -> int:
        return int(self.child.expect_exact(pattern, timeout=timeout))

    def expect_re(self, pattern: str, timeout: int = BOOT_TIMEOUT) -> re.Match[str]:
        self.child.expect(pattern, timeout=timeout)
        return self.child.match  # type: ignore[no-any-return]

    def send(self, text: str) -> None:
        self.child.send(text)

    def shell(self, command: str, timeout: int = 120) -> str:
        """Run `command` at the root shell prompt; its output (plain text)."""
        self.child.sendline(command)
        self.child.expect_exact(SHELL_PROMPT, timeout=timeout)
        out = plain(self.child.before or "")
        return out.split("\n", 1)[1] if "\n" in out else ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait_exit(self, timeout: int = 120) -> None:
        self.child.expect(pexpect.EOF, timeout=timeout)

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        log = self.child.logfile_read
        if log:
            log.close()


def boot_disk(disk: Path, log: Path, expect: str, timeout: int = BOOT_TIMEOUT,
              serial: str = "TARGET1") -> tuple[bool, float]:
    """Boot `disk` alone; (whether `expect` showed on its serial console, seconds)."""
    start = time.monotonic()
    proc = subprocess.run([str(BOOT_DISK), str(disk), "--serial", serial, "--serial-log", str(log),
                           "--expect", expect, "--timeout", str(timeout)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return proc.returncode == 0, time.monotonic() - start


def gpt_partitions(image: Path) -> list[dict[str, object]]:
    out = subprocess.run(["sfdisk", "--json", str(image)], check=True, capture_output=True, text=True).stdout
    return list(json.loads(out)["partitiontable"]["partitions"])


def has_gpt(image: Path) -> tuple[bool, bool]:
    """(primary GPT header at LBA 1, backup GPT header at the last LBA) of a raw disk image."""
    size = image.stat().st_size
    with open(image, "rb") as f:
        f.seek(512)
        primary = f.read(8) == b"EFI PART"
        f.seek(size - 512)
        backup = f.read(8) == b"EFI PART"
    return primary, backup


def untouched(image: Path) -> bool:
    """A sparse target file nothing was written to: no allocated blocks at all."""
    return image.stat().st_blocks == 0
