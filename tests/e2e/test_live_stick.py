"""The live stick end to end, in QEMU: UEFI (OVMF) unless a test names another firmware (Secure
Boot: tests/e2e/test_tuning.py; legacy BIOS: here), the stick on USB (qemu-xhci + usb-storage),
blank NVMe targets with serial numbers TARGET1, TARGET2, and the demo image on the stick."""

from __future__ import annotations

import re
import subprocess
import time
import tomllib
from pathlib import Path

import pexpect
import pytest

from tests.e2e.rig import (
    FIRST_PAINT,
    ROOT,
    SHELL_PROMPT,
    StickRun,
    boot_disk,
    decompressed,
    gpt_partitions,
    has_gpt,
    partition_mismatches,
    plain,
    untouched,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1800)]

DEMO_BOOTED = "bty-demo: booted"
UNATTENDED = "bty.image=demo bty.disk=serial=TARGET1"


def demo_sha256() -> str:
    manifest = tomllib.loads((ROOT / "images" / "demo.img.zst.toml").read_text())
    return str(manifest["sha256"])


def test_unattended_flash_powers_off_and_the_target_boots_alone(stick: Path, workdir: Path) -> None:
    run = StickRun(stick, workdir, cmdline=f"{UNATTENDED} bty.after=poweroff", fail_on="bty unattended: FAILED")
    code, console, seconds = run.run_to_end(workdir / "stick-console.log")
    assert code == 0, f"QEMU did not end by a guest power-off (exit {code}); see {workdir}"
    assert "bty-initrd: firmware: UEFI, Secure Boot off" in console, console[:3000]
    assert "bty unattended: FAILED" not in console
    assert "bty unattended: done; poweroff" in console
    assert "reboot: Power down" in console
    assert "/dev/nvme0n1" in console and "serial TARGET1" in console
    assert re.search(r"receipt: /run/bty/images/receipts/\S+\.json", console)
    assert untouched(run.target(2)), "TARGET2 was written to"

    booted, boot_seconds = boot_disk(run.target(1), workdir / "target1-console.log", DEMO_BOOTED)
    assert booted, f"TARGET1 did not print '{DEMO_BOOTED}' when booted alone; see {workdir}"
    print(f"\nunattended flash + power-off: {seconds:.0f} s; TARGET1 booted alone: {boot_seconds:.0f} s")


def test_legacy_bios_boots_the_same_stick_to_an_unattended_flash(stick: Path, workdir: Path) -> None:
    # SeaBIOS: the boot code in the stick's MBR loads GRUB's core image from the BIOS boot
    # partition, which reads the same menu, kernel and initrd as UEFI's GRUB. `smallest` must pick
    # TARGET1 (3 GiB): the stick (a USB disk of about 450 MiB) is smaller still, but it is the
    # boot medium, never eligible, with or without EFI variables to say which disk it is.
    subprocess.run(["truncate", "-s", "3G", str(workdir / "target1.img")], check=True)
    subprocess.run(["truncate", "-s", "4G", str(workdir / "target2.img")], check=True)
    run = StickRun(stick, workdir, firmware="bios", keep_targets=True,
                   cmdline="bty.image=demo bty.disk=smallest bty.after=poweroff", fail_on="bty unattended: FAILED")
    code, console, seconds = run.run_to_end(workdir / "stick-console.log")
    assert code == 0, f"QEMU did not end by a guest power-off (exit {code}); see {workdir}"
    assert "bty-initrd: firmware: legacy BIOS" in console, console[:3000]
    assert "bty unattended: done; poweroff" in console and "reboot: Power down" in console
    assert "/dev/nvme0n1" in console and "serial TARGET1" in console
    assert untouched(run.target(2)), "TARGET2 was written to"
    # The demo OS is UEFI-only (images/README.md): TARGET1 is checked byte for byte instead.
    image = decompressed(ROOT / "images" / "demo.img.zst", workdir)
    assert partition_mismatches(image, run.target(1)) == []
    image.unlink()
    print(f"\nlegacy BIOS: unattended flash + power-off: {seconds:.0f} s")


def test_failing_target_gives_a_clear_error_is_wiped_and_nothing_reboots(stick: Path, workdir: Path) -> None:
    # bty.after=reboot: had the failure led to a reboot, QEMU (-no-reboot) would have exited.
    run = StickRun(stick, workdir, cmdline=f"{UNATTENDED} bty.after=reboot", fail_writes="1")
    console = run.spawn(workdir / "stick-console.log")
    try:
        console.expect("bty unattended: FAILED:")
        console.expect_re(r"[^\n]*\n")
        line = "bty unattended: FAILED:" + plain(console.child.before + console.child.after)
        assert "I/O error" in line and "/dev/nvme0n1" in line, line
        assert "wiped" in line, line
        console.expect("machine will not reboot")
        # The TUI takes over on the serial console, and the machine stays up.
        console.expect("bty-live: session on ttyS0")
        console.expect("Images", timeout=180)
        time.sleep(20)
        assert console.child.isalive(), "QEMU exited: the guest rebooted or powered off after the failure"
    finally:
        console.close()
    primary, backup = has_gpt(run.target(1))
    assert not primary and not backup, "the failed target still has a GPT (it could look bootable)"
    with open(run.target(1), "rb") as f:
        assert not any(f.read(1 << 20)), "the first MiB of the failed target is not zeroed"
    assert untouched(run.target(2))
    # The firmware finds nothing to boot on it (and falls back to its shell).
    log = workdir / "target1-console.log"
    refused, _ = boot_disk(run.target(1), log, "BdsDxe: failed to load", timeout=180)
    assert refused and DEMO_BOOTED not in log.read_text(errors="replace"), f"see {log}"


def test_the_stick_is_never_a_target_and_ambiguous_selectors_refuse(stick: Path, workdir: Path) -> None:
    # TARGET1 holds a copy of the stick (same partition UUIDs): the live system must still run
    # from the USB stick it booted from, and offer the copy, not the stick, as a target. The
    # root shell is asked for at the boot menu, as a user would.
    subprocess.run(["cp", "--sparse=always", str(stick), str(workdir / "target1.img")], check=True)
    subprocess.run(["truncate", "-s", "4G", str(workdir / "target2.img")], check=True)
    run = StickRun(stick, workdir, keep_targets=True, menu_timeout=30)
    console = run.spawn(workdir / "stick-console.log")
    try:
        # A key added at GRUB's menu: e edits the default (serial) entry, whose linux line is the
        # third (after "setparams" and a blank line); Ctrl-n next line, Ctrl-e its end, Ctrl-x boot.
        console.expect("GNU GRUB")
        console.expect("bty-live (serial console ttyS0)", timeout=60)
        for key in ("e", "\x0e", "\x0e", "\x05", " bty-live.session=shell", "\x18"):
            time.sleep(0.5)
            console.send(key)
        console.expect("bty-live: ready")
        console.expect(SHELL_PROMPT)
        assert "bty-live.session=shell" in console.shell("cat /proc/cmdline")
        disks = console.shell("bty disks")
        sda = next(line for line in disks.splitlines() if line.startswith("sda"))
        assert "BTYSTICK" in sda and "boot medium" in sda, disks
        nvme0 = next(line for line in disks.splitlines() if line.startswith("nvme0n1"))
        assert "TARGET1" in nvme0 and "yes" in nvme0, disks

        out = console.shell("bty unattended --no-consoles --cmdline 'bty.image=demo bty.disk=serial=BTYSTICK'; "
                            "echo rc=$?")
        assert "rc=6" in out and "matches no eligible disk" in out and "boot medium" in out, out

        out = console.shell("bty unattended --no-consoles --cmdline 'bty.image=demo bty.disk=tran=nvme'; echo rc=$?")
        assert "rc=6" in out and "matches 2 eligible disks" in out, out
        assert "TARGET1" in out and "TARGET2" in out, out

        out = console.shell("bty flash demo /dev/sda --yes; echo rc=$?")
        assert "rc=7" in out and "boot medium" in out, out

        out = console.shell("findmnt -no SOURCE,FSTYPE,OPTIONS / ; findmnt -no SOURCE,FSTYPE,OPTIONS /run/bty/images")
        assert re.search(r"/dev/sda2\s+squashfs\s+ro", out), out
        assert re.search(r"/dev/sda4\s+exfat\s+rw", out), out
        console.send("poweroff\n")
        console.wait_exit()
    finally:
        console.close()
    assert untouched(run.target(2))


def test_interactive_flash_through_the_tui_on_the_serial_console(stick: Path, workdir: Path) -> None:
    run = StickRun(stick, workdir)
    console = run.spawn(workdir / "stick-console.log")
    try:
        console.expect("bty-live: session on ttyS0")
        # Each key goes once the screen shows it is ready for it, never after a fixed pause: a
        # list once its rows are in (the status line under them is set with them, after the
        # list took the focus), a field once the footer shows its key hint (the hints list the
        # focused widget's bindings; the Confirm screen's first frame shows no Enter hint yet),
        # a screen's own key once the footer offers it.
        console.expect("demo", timeout=180)  # the Images screen lists the demo image
        to_tui = console.elapsed()  # from QEMU's start: firmware, boot menu, kernel, systemd, first paint
        console.expect_screen("images can be flashed")
        console.send("\r")  # choose it
        console.expect("TARGET1", timeout=120)  # the Disks screen
        console.expect_screen("disks can take this image")
        console.send("\r")  # the first eligible disk: nvme0n1 (TARGET1)
        console.expect("Confirm", timeout=120)
        console.expect_screen("Enter Erase and write")  # the name field has the focus
        console.send("nvme0n1")
        console.expect_screen("\u2502  nvme0n1", timeout=60)  # the field (its left border, padding) holds it
        console.send("\r")
        console.expect("Flashed and verified", timeout=600)
        console.expect_screen("o Power off", timeout=60)
        console.send("o")  # power off: asks first
        console.expect("Power off now", timeout=60)
        console.expect_screen("y Yes", timeout=60)
        console.send("y")
        console.wait_exit(timeout=180)
    finally:
        console.close()
    assert untouched(run.target(2))
    booted, _ = boot_disk(run.target(1), workdir / "target1-console.log", DEMO_BOOTED)
    assert booted, f"TARGET1 flashed through the TUI did not boot; see {workdir}"
    FIRST_PAINT["serial console, 80x24"] = to_tui
    print(f"\npower-on to the TUI's image list on the serial console: {to_tui:.1f} s")


def boot_code(image: Path) -> bytes:
    """The MBR's boot code (GRUB's boot.img on the stick: what a legacy BIOS runs)."""
    with open(image, "rb") as f:
        return f.read(440)


def images_partition(image: Path) -> dict[str, object]:
    return next(p for p in gpt_partitions(image) if str(p["type"]).upper().startswith("EBD0A0A2"))


def test_images_partition_grows_to_a_larger_stick_and_survives_an_interruption(stick: Path, workdir: Path) -> None:
    original = images_partition(stick)
    # 1. First boot on a 2 GiB stick; cut the power while the new file system is being filled.
    run = StickRun(stick, workdir, cmdline="bty-live.session=shell", targets=0, stick_size="2G")
    console = run.spawn(workdir / "boot1-console.log")
    try:
        console.expect("bty-images: growing BTY_IMAGES")
        console.expect("block copy verified")
        console.expect("bty-images: formatting")
    finally:
        console.close()  # the power cut
    part = images_partition(run.stick_copy)
    assert str(part.get("name", "")).startswith("bty-grow:"), part

    # 2. The next boot resumes from the verified block copy; nothing is lost.
    run2 = StickRun(run.stick_copy, workdir, cmdline="bty-live.session=shell", targets=0, in_place=True)
    console = run2.spawn(workdir / "boot2-console.log")
    try:
        console.expect("resuming an interrupted growth")
        console.expect("BTY_IMAGES now spans the stick")
        console.expect("bty-live: ready")
        console.expect(SHELL_PROMPT)
        out = console.shell("sha256sum /run/bty/images/demo.img.zst; df -m --output=size /run/bty/images")
        assert demo_sha256() in out, out
        size_mib = int(out.strip().splitlines()[-1])
        assert size_mib > 1500, out
        out = console.shell("bty images --json")  # the table wraps its cells at 80 columns
        assert '"name": "demo"' in out and '"digest_status": "manifest"' in out, out
        console.send("poweroff\n")
        console.wait_exit()
    finally:
        console.close()
    part = images_partition(run.stick_copy)
    assert part.get("name") == "BTY_IMAGES"
    assert boot_code(run.stick_copy) == boot_code(stick), "growing BTY_IMAGES lost the MBR's BIOS boot code"
    assert int(part["size"]) * 512 > 1800 << 20 and part["start"] == original["start"]  # type: ignore[call-overload]

    # 3. A third boot has nothing to do; it is a legacy BIOS one: the rewritten partition table
    # kept the MBR's boot code and GRUB's core image (asserted above) and both still start.
    run3 = StickRun(run.stick_copy, workdir, cmdline="bty-live.session=shell", targets=0, in_place=True,
                    firmware="bios")
    console = run3.spawn(workdir / "boot3-console.log")
    try:
        console.expect("bty-initrd: firmware: legacy BIOS")
        console.expect("bty-live: ready")
        console.expect(SHELL_PROMPT)
        out = console.shell("journalctl -b -u bty-images -o cat --no-pager | cat")
        assert "growing" not in out and "mounted at /run/bty/images" in out, out
        console.send("poweroff\n")
        console.wait_exit()
    finally:
        console.close()


def test_images_partition_is_not_grown_without_room_for_a_safe_copy(stick: Path, workdir: Path) -> None:
    part = images_partition(stick)
    end = (int(part["start"]) + int(part["size"])) * 512  # type: ignore[call-overload]
    small = end + (100 << 20)  # 100 MiB more: worth growing, but no room for a full copy
    run = StickRun(stick, workdir, cmdline="bty-live.session=shell", targets=0, stick_size=str(small))
    console = run.spawn(workdir / "stick-console.log")
    try:
        console.expect("growing it safely needs room for a full copy")
        console.expect("bty-live: ready")
        console.expect(SHELL_PROMPT)
        out = console.shell("sha256sum /run/bty/images/demo.img.zst")
        assert demo_sha256() in out, out
        console.send("poweroff\n")
        console.wait_exit()
    except pexpect.TIMEOUT:
        raise AssertionError(f"see {workdir}") from None
    finally:
        console.close()
    assert images_partition(run.stick_copy)["size"] == part["size"]
