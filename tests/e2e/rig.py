"""Drive the QEMU rig (qemu/boot-stick.sh, qemu/boot-disk.sh) from the end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

ROOT = Path(__file__).resolve().parents[2]
BOOT_STICK = ROOT / "qemu" / "boot-stick.sh"
BOOT_DISK = ROOT / "qemu" / "boot-disk.sh"
ANSI = re.compile(r"\x1b(\[[0-9;?<=>$]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-B]|[=>78])")
SHELL_PROMPT = "root@bty-live:~# "
#: SGR sequences (colours, bold): all Textual puts between the styled spans of one line of text
SGR = r"(?:\x1b\[[0-9;:]*m)*"

#: seconds from the rig's start (QEMU's power-on, within a second or two) to the TUI's image
#: list, per console: the tests that see it fill this in, the e2e summary prints it
FIRST_PAINT: dict[str, float] = {}

# Generous: TCG on a shared 2-core machine is slow, and CI machines are busier still.
BOOT_TIMEOUT = int(os.environ.get("BTY_E2E_BOOT_TIMEOUT", "420"))


def plain(text: str) -> str:
    """Console output without terminal escapes and carriage returns."""
    return ANSI.sub("", text).replace("\r", "")


def on_screen(text: str) -> str:
    """A regex for `text` as one line of the TUI paints it on the serial console: its characters
    may be split by SGR sequences (a key hint's key is bold, its description is not), never by a
    cursor move, so the text is on one line of the screen."""
    return SGR.join(re.escape(char) for char in text)


def console_args(serial_log: Path | None, fail_on: str | None, extra: Sequence[str]) -> list[str]:
    """The rig scripts' shared options: the serial console to a log file (QEMU stopped as soon as
    it shows `fail_on`), then extra QEMU arguments."""
    argv: list[str] = []
    if serial_log:
        argv += ["--serial-log", str(serial_log)]
        if fail_on:
            argv += ["--fail-on", fail_on]
    if extra:
        argv += ["--", *extra]
    return argv


def run_rig(argv: list[str], workdir: Path, log: Path, timeout: int,
            milestones: Sequence[str] = ()) -> tuple[int, str, float, dict[str, float]]:
    """Run a rig script (its own output to workdir/rig.log) until it exits; returns (exit code,
    console text from `log`, seconds, {milestone: seconds after power-on when its text first
    showed on the console}). Power-on is when the rig starts QEMU (it creates `log` then). A
    timeout, or an interrupted test, stops the script's whole session; a timeout returns 124."""
    workdir.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    start = time.monotonic()
    seen: dict[str, float] = {}
    power_on: float | None = None
    with open(workdir / "rig.log", "ab") as rig_log:
        proc = subprocess.Popen(argv, stdout=rig_log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        code: int | None = None
        try:
            while code is None:
                try:
                    code = proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    if time.monotonic() - start > timeout:
                        code = 124
                now = time.monotonic()
                if power_on is None and log.exists():
                    power_on = now
                if power_on is not None and len(seen) < len(milestones):
                    text = plain(log.read_text(errors="replace"))
                    for mark in milestones:
                        if mark not in seen and mark in text:
                            seen[mark] = now - power_on
        finally:
            if proc.poll() is None:  # timed out, or the test was interrupted: QEMU (and a server) too
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
    text = plain(log.read_text(errors="replace")) if log.exists() else ""
    return code, text, time.monotonic() - start, seen


def spawn_rig(argv: list[str], workdir: Path, log: Path) -> pexpect.spawn:
    """Run a rig script with the serial console on an 80x24 pty, for pexpect; what it shows is
    appended to `log`."""
    workdir.mkdir(parents=True, exist_ok=True)
    child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", codec_errors="replace",
                          timeout=BOOT_TIMEOUT, dimensions=(24, 80))
    child.logfile_read = open(log, "a", encoding="utf-8")  # noqa: SIM115 - closed in Console.close()
    return child


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
    firmware: str = "uefi"  # uefi, secureboot (enforced, Microsoft's keys) or bios (SeaBIOS)
    console: str = "serial"  # the boot entry: serial (console=ttyS0) or screen (tty1 only)
    menu_timeout: int = 0  # seconds GRUB shows its menu (0: hidden)
    extra: Sequence[str] = ()
    started: float = field(default=0.0, init=False)

    def argv(self, serial_log: Path | None = None) -> list[str]:
        argv = [str(BOOT_STICK), "--stick", str(self.stick), "--workdir", str(self.workdir),
                "--targets", str(self.targets), "--bus", self.bus, "--target-size", self.target_size,
                "--cmdline", self.cmdline, "--firmware", self.firmware, "--console", self.console,
                "--menu-timeout", str(self.menu_timeout)]
        if self.stick_size:
            argv += ["--stick-size", self.stick_size]
        if self.fail_writes:
            argv += ["--fail-writes", self.fail_writes]
        if self.in_place:
            argv.append("--in-place")
        if self.keep_targets:
            argv.append("--keep-targets")
        return argv + console_args(serial_log, self.fail_on, self.extra)

    def target(self, n: int) -> Path:
        return self.workdir / f"target{n}.img"

    @property
    def stick_copy(self) -> Path:
        return self.stick if self.in_place else self.workdir / "stick.img"

    def run_to_end(self, log: Path, timeout: int = BOOT_TIMEOUT) -> tuple[int, str, float]:
        """Boot, serial console to `log`, until QEMU exits (guest poweroff or reboot); returns
        (exit code, console text, seconds). A timeout kills QEMU and returns code 124."""
        code, text, seconds, _ = run_rig(self.argv(log), self.workdir, log, timeout)
        return code, text, seconds

    def spawn(self, log: Path) -> Console:
        """Boot with the serial console on a pty, for pexpect."""
        self.started = time.monotonic()
        return Console(spawn_rig(self.argv(), self.workdir, log), started=self.started)


@dataclass
class Console:
    child: pexpect.spawn
    started: float

    def expect(self, pattern: str | list[str], timeout: int = BOOT_TIMEOUT) -> int:
        return int(self.child.expect_exact(pattern, timeout=timeout))

    def expect_re(self, pattern: str, timeout: int = BOOT_TIMEOUT) -> re.Match[str]:
        self.child.expect(pattern, timeout=timeout)
        return self.child.match  # type: ignore[no-any-return]

    def expect_screen(self, text: str, timeout: int = 120) -> None:
        """Wait until the TUI paints `text` (see `on_screen`): what it shows once a screen is
        ready for the next key, e.g. a key hint in the footer, which lists the bindings of the
        focused widget. On a timeout, the assertion says what the screen showed instead."""
        try:
            self.child.expect(on_screen(text), timeout=timeout)
        except pexpect.TIMEOUT:
            shown = " ".join(ANSI.sub(" ", self.child.before or "").split())
            raise AssertionError(f"the screen never showed {text!r} in {timeout} s; its last output: "
                                 f"{shown[-1500:]}") from None

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


def nic_args(mac: str) -> list[str]:
    """QEMU arguments for a network card with this MAC (boot-stick.sh adds none): a virtio NIC
    on a private user-mode network, without a boot ROM (nothing to network-boot)."""
    return ["-netdev", "user,id=bty-nic0,restrict=on",
            "-device", f"virtio-net-pci,netdev=bty-nic0,mac={mac},romfile="]


@contextlib.contextmanager
def mounted_images_partition(stick: Path) -> Iterator[Path]:
    """The BTY_IMAGES (exFAT) partition of a stick image, mounted read-only: a read-only loop
    device over the partition and exfat-fuse (the host kernel has no exFAT driver). The stick
    must not be in use by QEMU."""
    part = next(p for p in gpt_partitions(stick) if str(p["type"]).upper().startswith("EBD0A0A2"))  # basic data
    start, size = int(part["start"]) * 512, int(part["size"]) * 512  # type: ignore[call-overload]
    device = subprocess.run(["losetup", "--find", "--show", "--read-only", "--offset", str(start),
                             "--sizelimit", str(size), str(stick)],
                            check=True, capture_output=True, text=True).stdout.strip()
    try:
        with tempfile.TemporaryDirectory(prefix="bty-e2e-images-") as mountpoint:
            subprocess.run(["mount.exfat-fuse", "-o", "ro", device, mountpoint], check=True,
                           capture_output=True, text=True)
            try:
                yield Path(mountpoint)
            finally:
                for _ in range(10):
                    if subprocess.run(["umount", mountpoint], capture_output=True).returncode == 0:
                        break
                    time.sleep(0.5)
                else:
                    subprocess.run(["umount", "--lazy", mountpoint], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)


# --------------------------------------------------------------------------- netboot (server mode)

NETBOOT = ROOT / "qemu" / "netboot.sh"
BTY = ROOT / ".venv" / "bin" / "bty"
NET_MAC = "52:54:00:b7:00:01"


class SessionConsole(Console):
    """A Console whose child leads a session of several processes (qemu/netboot.sh: the server,
    the VM): close() stops them all, not only the script."""

    def close(self) -> None:
        if self.child.isalive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, signal.SIGTERM)
            with contextlib.suppress(pexpect.ExceptionPexpect):
                self.child.expect(pexpect.EOF, timeout=60)
        super().close()


@dataclass
class NetbootRun:
    """One network boot through qemu/netboot.sh: `bty serve` on this host's loopback with the
    netboot kernel and initrd of `netboot`, a plan assigned, and a VM with blank disks (serial
    numbers `serials`) booted by its iPXE ROM. Server state, images, disks and logs in `workdir`."""

    netboot: Path
    workdir: Path
    image: Path | None = None
    action: str = "flash"
    disk: str | None = None
    serials: str = "BTYDISK"
    mac: str = NET_MAC
    kernel_args: str | None = None
    fail_on: str | None = None  # stop QEMU as soon as the console shows this (run_to_end)
    mem: int | None = None
    extra: Sequence[str] = ()
    started: float = field(default=0.0, init=False)

    def argv(self, serial_log: Path | None = None) -> list[str]:
        argv = [str(NETBOOT), "--workdir", str(self.workdir), "--netboot", str(self.netboot),
                "--action", self.action, "--serials", self.serials, "--mac", self.mac]
        if self.image is not None:
            argv += ["--image", str(self.image)]
        if self.disk:
            argv += ["--disk", self.disk]
        if self.kernel_args is not None:
            argv += ["--kernel-args", self.kernel_args]
        if self.mem:
            argv += ["--mem", str(self.mem)]
        return argv + console_args(serial_log, self.fail_on, self.extra)

    def target(self, n: int) -> Path:
        return self.workdir / f"target{n}.img"

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    @property
    def images(self) -> Path:
        return self.workdir / "images"

    def run_to_end(self, log: Path, timeout: int = BOOT_TIMEOUT,
                   milestones: Sequence[str] = ()) -> tuple[int, str, float, dict[str, float]]:
        """Serve, boot, serial console to `log`, until QEMU exits (the agent reboots the guest:
        -no-reboot ends the run); returns (exit code, console text, seconds, {milestone: seconds
        after power-on when its text first showed on the console}). A timeout stops everything
        (QEMU and the server) and returns code 124."""
        return run_rig(self.argv(log), self.workdir, log, timeout, milestones)

    def spawn(self, log: Path) -> Console:
        """Serve and boot with the serial console on a pty, for pexpect."""
        self.started = time.monotonic()
        return SessionConsole(spawn_rig(self.argv(), self.workdir, log), started=self.started)

    @property
    def admin_token(self) -> str:
        """The operator's token of the web UI (qemu/netboot.sh writes it)."""
        return (self.workdir / "admin-token").read_text().strip()

    def server_url(self, timeout: float = 120) -> str:
        """Where `bty serve` listens on this host, once its log says so."""
        deadline = time.monotonic() + timeout
        log = self.workdir / "server.log"
        while time.monotonic() < deadline:
            found = re.search(r"serving (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace")
                              if log.exists() else "")
            if found:
                return found.group(1)
            time.sleep(0.2)
        raise AssertionError(f"bty serve did not say where it listens within {timeout:.0f} s; see {log}")

    def machines(self) -> list[dict[str, object]]:
        """What the server's state says (`bty serve machines --json`)."""
        out = subprocess.run([str(BTY), "serve", "machines", "--state", str(self.state), "--json"],
                             check=True, capture_output=True, text=True).stdout
        return list(json.loads(out)["machines"])


def partition_mismatches(image: Path, target: Path) -> list[str]:
    """How the disk `target` differs from the raw disk image `image`, partition by partition:
    the same partitions (start, size, type, UUID) holding the same bytes. The regions outside the
    partitions are left out: the flash's GPT fix-ups move the backup table to the disk's end."""
    want, have = gpt_partitions(image), gpt_partitions(target)
    keys = ("start", "size", "type", "uuid")
    if [[p.get(k) for k in keys] for p in want] != [[p.get(k) for k in keys] for p in have]:
        return [f"partition table: {have} instead of {want}"]
    problems = []
    with open(image, "rb") as a, open(target, "rb") as b:
        for part in want:
            start, size = int(part["start"]) * 512, int(part["size"]) * 512  # type: ignore[call-overload]
            a.seek(start)
            b.seek(start)
            done = 0
            while done < size:
                n = min(8 << 20, size - done)
                if a.read(n) != b.read(n):
                    problems.append(f"partition {part['node']} differs at byte {start + done} (8 MiB block)")
                    break
                done += n
    return problems


def decompressed(image_zst: Path, scratch: Path) -> Path:
    """The raw disk image of a .img.zst, decompressed into `scratch` (reused when there)."""
    raw = scratch / image_zst.name.removesuffix(".zst")
    if not raw.exists():
        subprocess.run(["zstd", "-dqf", str(image_zst), "-o", str(raw)], check=True)
    return raw
