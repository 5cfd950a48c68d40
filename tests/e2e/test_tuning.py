"""Post-flash tuning end to end, in QEMU: the stick flashes demo-tunable (the demo OS with an ext4
root) unattended, its manifest's CIJOE task (images/demo-tunable.task.yaml) tunes the flashed
root, and the target, booted alone, shows the hostname made from the flashing machine's MAC,
the machine-id the task wrote, and the output of the first-boot job it installed.

The stick boots with Secure Boot enforced under Microsoft's keys (shim -> Debian's signed GRUB ->
Debian's signed kernel), so the kernel runs in lockdown: every path of a flash is exercised there
(O_DIRECT writes, BLKZEROOUT, the O_DIRECT read-back, re-reading the partition
table, pyparted's fix-ups, mounting the flashed root for tuning, CIJOE, the power-off)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.rig import (
    ROOT,
    StickRun,
    boot_disk,
    gpt_partitions,
    mounted_images_partition,
    nic_args,
    plain,
    untouched,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1800)]

#: the stick's machine has one network card with this MAC; the task names the target after it
MAC = "52:54:00:b7:e5:01"
HOSTNAME = "demo-" + MAC.replace(":", "")  # the task's "demo-{mac_nodelim}"
ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
IMAGES_MOUNT = "/run/bty/images"  # the images partition on the live system


def root_file(disk: Path, path: str) -> str:
    """A file of the ext4 root partition of a raw disk image, read with debugfs (no mount)."""
    part = next(p for p in gpt_partitions(disk) if str(p["type"]).upper() == ROOT_X86_64)
    offset = int(part["start"]) * 512  # type: ignore[call-overload]
    proc = subprocess.run(["debugfs", "-R", f"cat {path}", f"{disk}?offset={offset}"],
                          check=True, capture_output=True, text=True)
    return proc.stdout


def on_stick(images: Path, live_path: str) -> Path:
    """A path the live system printed (/run/bty/images/...) in the mounted images partition."""
    return images / Path(live_path).relative_to(IMAGES_MOUNT)


def test_unattended_flash_tunes_the_target_and_it_boots_with_its_own_identity(stick: Path, workdir: Path) -> None:
    run = StickRun(stick, workdir, cmdline="bty.image=demo-tunable bty.disk=serial=TARGET1 bty.after=poweroff",
                   fail_on="bty unattended: FAILED", firmware="secureboot", extra=nic_args(MAC))
    code, console, seconds = run.run_to_end(workdir / "stick-console.log")
    assert code == 0, f"QEMU did not end by a guest power-off (exit {code}); see {workdir}"
    assert "bty-initrd: firmware: UEFI, Secure Boot on, kernel lockdown integrity" in console, console[:3000]
    assert "bty unattended: FAILED" not in console
    assert "bty unattended: done; poweroff" in console
    assert re.search(r"tune: step 3/3 first boot \(bty\.firstboot\): passed", console), console[-3000:]
    assert "  tuning: passed (" in console
    receipt_path = re.search(r"receipt: (/run/bty/images/receipts/\S+\.json)", console)
    assert receipt_path, f"no receipt path on the console; see {workdir}"
    assert untouched(run.target(2)), "TARGET2 was written to"

    # What the run left on the stick's images partition: receipt, ledger record, CIJOE report.
    with mounted_images_partition(run.stick_copy) as images:
        receipt = json.loads(on_stick(images, receipt_path.group(1)).read_text())
        ledger = [json.loads(line) for line in (images / "ledger.jsonl").read_text().splitlines() if line.strip()]
        tune = receipt["tune"]
        assert tune["status"] == "passed", tune
        assert [(s["name"], s["status"]) for s in tune["steps"]] == [
            ("hostname", "passed"), ("identity", "passed"), ("first boot", "passed")]
        assert tune["root_found_by"] == "type" and tune["root_device"] == "/dev/nvme0n1p2", tune
        identity_log = on_stick(images, tune["report_dir"]) / "002_identity" / "artifacts" / "bty.machine_id.log"
        written = re.search(r"^/etc/machine-id: ([0-9a-f]{32}) ", identity_log.read_text(), re.M)
        assert written, identity_log.read_text()
        machine_id = written.group(1)
    assert len(ledger) == 1, ledger
    record = ledger[0]
    assert record["result"] == "passed" and record["image_name"] == "demo-tunable", record
    assert record["phases"]["tune"]["result"] == "passed", record
    assert record["task"] == "demo-tunable.task.yaml" and record["disk_serial"] == "TARGET1", record
    assert MAC in record["macs"], record

    # The tuned root as flashed, before it ever booted; and what the image itself holds.
    assert root_file(run.target(1), "/etc/hostname").strip() == HOSTNAME
    image = workdir / "demo-tunable.img"
    subprocess.run(["zstd", "-dqf", str(ROOT / "images" / "demo-tunable.img.zst"), "-o", str(image)],
                   check=True)
    image_machine_id = root_file(image, "/etc/machine-id").strip()
    image_hostname = root_file(image, "/etc/hostname").strip()
    image.unlink()
    assert machine_id != image_machine_id and image_hostname != HOSTNAME

    # TARGET1 alone: it boots as the machine the task made (it powers off by itself).
    log = workdir / "target1-console.log"
    booted, boot_seconds = boot_disk(run.target(1), log, "reboot: Power down")
    text = plain(log.read_text(errors="replace"))
    assert booted and "bty-demo: booted" in text, f"TARGET1 did not boot and power off; see {log}"
    line = next(line for line in text.splitlines() if "bty-demo: booted" in line)
    assert f"hostname={HOSTNAME} " in line, line
    assert f"machine-id={machine_id} " in line, line
    assert "(ext4,rw)" in line, line
    assert f"bty-demo-firstboot: ran on {HOSTNAME}" in text, f"the first-boot job did not run; see {log}"
    print(f"\ntuned flash + power-off: {seconds:.0f} s; TARGET1 booted alone: {boot_seconds:.0f} s; "
          f"{HOSTNAME}, machine-id {machine_id} (image: {image_machine_id})")
