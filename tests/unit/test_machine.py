"""Machine identity: DMI fields and NICs from sysfs, placeholders ignored, the boot MAC found."""

from __future__ import annotations

from pathlib import Path

from bty_live.system.machine import boot_mac_from_cmdline, read_machine_identity


def fake_sysfs(tmp_path: Path) -> tuple[Path, Path]:
    dmi = tmp_path / "dmi"
    dmi.mkdir()
    (dmi / "sys_vendor").write_text("Supermicro\n")
    (dmi / "product_name").write_text("SYS-5019C-M\n")
    (dmi / "product_serial").write_text("To Be Filled By O.E.M.\n")  # a placeholder: no serial
    (dmi / "product_uuid").write_text("00000000-0000-0000-0000-0cc47a000001\n")
    net = tmp_path / "net"
    for name, mac, physical in (("eno1", "0C:C4:7A:00:00:01", True), ("lo", "00:00:00:00:00:00", False),
                                ("br0", "0c:c4:7a:00:00:09", False), ("eno2", "0c:c4:7a:00:00:02", True)):
        iface = net / name
        iface.mkdir(parents=True)
        (iface / "address").write_text(mac + "\n")
        if physical:
            (iface / "device").mkdir()
            (iface / "carrier").write_text("1\n")
    return dmi, net


def test_dmi_and_physical_nics_are_read_and_placeholders_dropped(tmp_path: Path) -> None:
    dmi, net = fake_sysfs(tmp_path)
    machine = read_machine_identity(dmi, net, cmdline="quiet")
    assert machine.model == "Supermicro SYS-5019C-M"
    assert machine.serial is None
    assert [(n.name, n.mac) for n in machine.nics] == [("eno1", "0c:c4:7a:00:00:01"), ("eno2", "0c:c4:7a:00:00:02")]
    assert machine.primary_mac == "0c:c4:7a:00:00:01"


def test_the_boot_nic_from_the_command_line_wins(tmp_path: Path) -> None:
    dmi, net = fake_sysfs(tmp_path)
    machine = read_machine_identity(dmi, net, cmdline="BOOTIF=01-0c-c4-7a-00-00-02 bty.server=http://x")
    assert machine.boot_mac == "0c:c4:7a:00:00:02" and machine.primary_mac == "0c:c4:7a:00:00:02"


def test_boot_mac_forms() -> None:
    assert boot_mac_from_cmdline("BOOTIF=01-AA-BB-CC-DD-EE-FF") == "aa:bb:cc:dd:ee:ff"
    assert boot_mac_from_cmdline("bty.mac=aa:bb:cc:dd:ee:01") == "aa:bb:cc:dd:ee:01"
    assert boot_mac_from_cmdline("root=/dev/sda1") is None


def test_a_machine_without_dmi_is_an_unknown_model(tmp_path: Path) -> None:
    machine = read_machine_identity(tmp_path / "none", tmp_path / "none", cmdline="")
    assert machine.model == "unknown model" and machine.nics == () and machine.primary_mac is None
