"""Server mode end to end, in QEMU: a VM with a blank NVMe disk boots from the network through
QEMU's iPXE ROM and user-mode network (TFTP boot.ipxe), chains to `bty serve` on this host's
loopback (10.0.2.2 in the guest), boots the netboot live system (scripts/build-netboot.sh), whose
real `bty agent` registers and waits; an operator in a real browser (headless Chromium) assigns
the image on the web UI and watches the flash; the agent flashes the disk, reports, and reboots;
then the disk boots alone.

The agent's resumed downloads and refused tokens are covered on loopback by tests/integration/test_agent.py.
"""

from __future__ import annotations

import re
import threading
import tomllib
from pathlib import Path

import pytest

from bty_live.server.ui.rows import row_id
from tests.e2e.rig import BOOT_TIMEOUT, NET_MAC, SHELL_PROMPT, NetbootRun, boot_disk, has_gpt, untouched

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1800)]

DEMO_BOOTED = "bty-demo: booted"

#: what the console shows, in order, from power-on to the reboot after the flash
MILESTONES = {
    "iPXE started": "iPXE ",
    "kernel started (initrd fetched)": "Linux version",
    "root mounted from the initrd": "bty-initrd: root file system",
    "agent started": "bty agent: sending the inventory",
    "agent waiting for a plan": "bty agent: waiting",
    "flash started (assigned in the browser)": "bty: write: writing",
    "flash done, verified": "bty agent: flashed",
    "rebooting": "reboot: Restarting system",
}


def test_an_operator_flashes_a_netbooted_machine_from_the_browser_and_the_disk_boots_alone(
        netboot: Path, demo_image: Path, workdir: Path) -> None:
    browserkit = pytest.importorskip("tests.browserkit")
    if browserkit.MISSING:
        pytest.skip(browserkit.MISSING)
    from selenium.webdriver.common.by import By

    manifest = tomllib.loads(demo_image.with_name(demo_image.name + ".toml").read_text())
    run = NetbootRun(netboot, workdir, image=demo_image, action="none", serials="BTYDISK",
                     fail_on="FAILED\nbty-initrd: rescue shell")  # grep -F: one pattern per line
    ended: list[tuple[int, str, float, dict[str, float]]] = []
    rig = threading.Thread(target=lambda: ended.append(
        run.run_to_end(workdir / "console.log", milestones=list(MILESTONES.values()))), daemon=True)
    rig.start()

    def vm_running() -> None:
        if not rig.is_alive():
            raise AssertionError(f"the VM stopped before the operator was done; see {workdir}/console.log")

    url = run.server_url()
    with browserkit.chromium() as browser:
        browserkit.log_in(browser, url, run.admin_token)
        # The machine boots from the network, its agent registers and waits: its row appears live.
        browserkit.wait_until(browser, f"{NET_MAC} registering",
                              lambda d: vm_running() or d.find_elements(By.ID, row_id(NET_MAC)), timeout=BOOT_TIMEOUT)
        browserkit.wait_until(browser, f"{NET_MAC} waiting for a plan",
                              lambda d: vm_running() or browserkit.status_of(d, NET_MAC) == "waiting",
                              timeout=120)
        browserkit.screenshots(browser, "netboot-waiting", workdir)
        browserkit.tick(browser, NET_MAC)
        browserkit.assign(browser, demo_image.name, "serial=BTYDISK", machines=1)
        bar = browserkit.watch_until(browser, NET_MAC, {"done", "failed"}, timeout=BOOT_TIMEOUT)
        assert browserkit.status_of(browser, NET_MAC) == "done", browserkit.row_text(browser, NET_MAC)
        assert any(0 < value < 100 for value in bar), f"the bar never showed the flash on its way: {bar}"
        browserkit.screenshots(browser, "netboot-done", workdir)
        browser.find_element(By.LINK_TEXT, NET_MAC).click()
        browserkit.wait_until(browser, "the machine page", lambda d: d.title.startswith(NET_MAC))
        receipt = browser.find_element(By.CSS_SELECTOR, "table.receipts tbody tr").text
        assert "ok" in receipt and "match / match" in receipt and "/dev/nvme0n1 BTYDISK" in receipt, receipt
        browserkit.screenshots(browser, "netboot-machine", workdir)
    rig.join(timeout=BOOT_TIMEOUT)
    assert ended, f"the netboot run did not end; see {workdir}"
    code, console, seconds, seen = ended[0]
    timings = "\n".join(f"{seen[text]:6.1f} s  {name}" if text in seen else f"     -    {name}"
                        for name, text in MILESTONES.items())
    (workdir / "timings.txt").write_text(timings + "\n")
    assert code == 0, f"the netboot run did not end by the guest's reboot (exit {code}); see {workdir}"
    assert "FAILED" not in console
    assert "no plan yet: registering" in console, "iPXE did not get the agent script from bty serve"
    assert "bty-initrd: root file system: /root.squashfs" in console
    assert "bty agent: flashed demo onto /dev/nvme0n1; rebooting" in console
    assert "reboot: Restarting system" in console

    [machine] = run.machines()
    assert machine["mac"] == NET_MAC and machine["status"] == "done", machine
    plan = machine["plan"]
    assert isinstance(plan, dict) and plan["state"] == "done" and plan["disk"] == "serial=BTYDISK", plan
    # The inventory: the blank disk is offered; the RAM root (a loop device over the squashfs the
    # initrd carried) is the boot medium and refused.
    inventory = machine["inventory"]
    assert isinstance(inventory, dict)
    disks = {d["name"]: d for d in inventory["disks"]}
    assert disks["nvme0n1"]["serial"] == "BTYDISK" and disks["nvme0n1"]["eligible"], disks["nvme0n1"]
    for name, disk in disks.items():
        if name != "nvme0n1":
            assert not disk["eligible"] and any("boot medium" in r for r in disk["reasons"]), disk

    receipt = machine["receipt"]
    assert isinstance(receipt, dict) and receipt["result"] == "ok", receipt
    assert receipt["image_blake3"] == manifest["blake3"]
    body = receipt["receipt"]
    assert body["target_path"] == "/dev/nvme0n1" and body["target_serial"] == "BTYDISK", body
    assert body["stream_check"] == "match" and body["readback_check"] == "match", body
    assert body["download"]["url"].startswith("http://10.0.2.2:"), body["download"]

    from bty_live.flash.ledger import read_ledger

    records = read_ledger(run.images / "ledger.jsonl").records
    assert [r.result for r in records] == ["passed"], records
    assert records[0].image_blake3 == manifest["blake3"] and records[0].disk_serial == "BTYDISK"
    assert NET_MAC in records[0].macs

    primary, backup = has_gpt(run.target(1))
    assert primary and backup, "the flashed disk lacks a GPT (or its backup at the end)"
    booted, boot_seconds = boot_disk(run.target(1), workdir / "disk-console.log", DEMO_BOOTED, serial="BTYDISK")
    assert booted, f"the flashed disk did not print '{DEMO_BOOTED}' when booted alone; see {workdir}"
    print(f"\nnetboot, power-on to (TCG):\n{timings}\nnetboot run {seconds:.0f} s (with bty serve's start and the "
          f"operator's assignment in the browser); "
          f"the disk booted alone in {boot_seconds:.0f} s")


def test_netbooted_agent_hands_over_to_the_session_and_disks_are_offered(netboot: Path, workdir: Path) -> None:
    # Plan "tui": the agent exits without rebooting and the bty session takes the console, as on
    # the stick (bty-live.session=shell: a root shell instead of the TUI, to look around).
    run = NetbootRun(netboot, workdir, action="tui", serials="BTYDISK",
                     kernel_args="console=ttyS0,115200 bty-live.session=shell")
    console = run.spawn(workdir / "console.log")
    try:
        console.expect("bty agent: the server says: hand over to the TUI")
        console.expect("bty-live: session on ttyS0")
        console.expect("bty-live: ready")
        console.expect(SHELL_PROMPT)
        out = console.shell("systemctl is-active bty-agent.service systemd-networkd.service; "
                            "systemctl show -p Result --value bty-agent.service")
        assert out.split() == ["active", "active", "success"], out
        out = console.shell("findmnt -no SOURCE,FSTYPE,OPTIONS /; cat /run/bty-live/netboot")
        assert re.search(r"/dev/loop0\s+squashfs\s+ro", out), out
        assert "root=/root.squashfs" in out, out
        out = console.shell("grep nameserver /etc/resolv.conf")
        assert "nameserver 10.0.2.3" in out, out  # QEMU's user-mode DNS, from DHCP
        disks = console.shell("bty disks; echo rc=$?")
        assert "rc=0" in disks, disks
        nvme = next(line for line in disks.splitlines() if line.startswith("nvme0n1"))
        assert "BTYDISK" in nvme and "yes" in nvme, disks
        assert not re.search(r"^(sd|vd)", disks, re.M), disks  # no stick, nothing else
        out = console.shell("head -c 1048576 /dev/zero >/tmp/blank.img; bty flash /tmp/blank.img /dev/loop0 --yes; "
                            "echo rc=$?")
        assert "rc=7" in out and "boot medium" in out, out  # the RAM root is never a target
        console.send("poweroff\n")
        console.wait_exit(timeout=180)
    finally:
        console.close()
    assert untouched(run.target(1)), "the disk was written to, though the plan was tui"
    [machine] = run.machines()
    assert machine["status"] == "tui", machine
