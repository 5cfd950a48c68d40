"""The stick's boot menu (scripts/stick.py): one GRUB configuration for UEFI, UEFI with Secure
Boot and legacy BIOS, made from mkosi's type #1 entry, with a screen and a serial-console entry
whose command line can be changed without touching a signed file. Runs on a real GPT disk image
with a real FAT ESP (mtools), as the stick build does."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
STICK = ROOT / "scripts" / "stick.py"
ESP_UUID = "0F1E2D3C-4B5A-4968-8776-A5B4C3D2E1F0"
MKOSI_ENTRY = """title bty-live 6.1.0-57-amd64
version 6.1.0-57-amd64
linux /bty-live/6.1.0-57-amd64/vmlinuz
options ro systemd.firstboot=off quiet
initrd /bty-live/00-bty-init.cpio.zst
initrd /bty-live/6.1.0-57-amd64/kernel-modules.initrd
"""

pytestmark = pytest.mark.skipif(shutil.which("mformat") is None or shutil.which("sfdisk") is None,
                                reason="mtools and sfdisk are needed (make setup)")


def load_stick() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stick", STICK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["stick"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def stick_image(tmp_path: Path) -> Path:
    """A 48 MiB GPT disk image whose ESP (at 1 MiB, 32 MiB) holds what mkosi leaves there:
    its type #1 entry under loader/entries/."""
    image = tmp_path / "stick.img"
    image.write_bytes(b"")
    os.truncate(image, 48 << 20)
    subprocess.run(["sfdisk", "--quiet", str(image)], check=True, text=True,
                   input=f"label: gpt\nstart=2048, size=65536, type=uefi, uuid={ESP_UUID}\n")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    spec = f"{image}@@1048576"
    subprocess.run(["mformat", "-i", spec, "-T", "65536", "-h", "64", "-s", "32", "-v", "ESP", "::"],
                   check=True, env=env, capture_output=True)
    entry = tmp_path / "entry.conf"
    entry.write_text(MKOSI_ENTRY)
    for directory in ("loader", "loader/entries"):
        subprocess.run(["mmd", "-i", spec, f"::/{directory}"], check=True, env=env)
    subprocess.run(["mcopy", "-i", spec, str(entry), "::/loader/entries/bty-live-6.1.0-57-amd64.conf"],
                   check=True, env=env)
    return image


def stick_py(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(STICK), *args], check=True, capture_output=True, text=True)


def menu_entries(cfg: str) -> dict[str, list[str]]:
    """{entry id: [its linux line, its initrd line]}"""
    entries: dict[str, list[str]] = {}
    current = None
    for line in cfg.splitlines():
        if line.startswith("menuentry "):
            current = line.split("--id ")[1].split()[0]
            entries[current] = []
        elif current and line.strip() and line.strip() != "}":
            entries[current].append(line.strip())
    return entries


def test_the_menu_boots_mkosis_kernel_and_initrds_with_the_esp_named(stick_image: Path) -> None:
    stick_py("cmdline", str(stick_image), "--append", "bty.image=demo bty.disk=serial=T1")
    cfg = stick_py("cmdline", str(stick_image), "--show").stdout
    entries = menu_entries(cfg)
    assert sorted(entries) == ["bty-live-screen", "bty-live-serial"]
    linux, initrd = entries["bty-live-serial"]
    assert linux.startswith("linux /bty-live/6.1.0-57-amd64/vmlinuz ro systemd.firstboot=off quiet ")
    # the initrd finds the stick's root next to this ESP (GRUB sets no EFI variable; a BIOS has none)
    assert f"bty-live.esp={ESP_UUID.lower()}" in linux
    assert linux.endswith("console=tty0 console=ttyS0,115200 bty.image=demo bty.disk=serial=T1")
    assert entries["bty-live-screen"][0].endswith("console=tty0 bty.image=demo bty.disk=serial=T1")
    assert initrd == "initrd /bty-live/00-bty-init.cpio.zst /bty-live/6.1.0-57-amd64/kernel-modules.initrd"
    assert "set default=bty-live-screen" in cfg
    # hidden, with a second in which Esc, F4 or Shift shows it
    assert "set timeout_style=hidden" in cfg and "set timeout=1" in cfg


def test_rewriting_the_menu_keeps_the_entry_and_can_show_it(stick_image: Path) -> None:
    # the first rewrite moves mkosi's entry out of loader/entries; later ones read it from bty/
    stick_py("cmdline", str(stick_image), "--append", "one=1")
    stick_py("cmdline", str(stick_image), "--append", "two=2", "--default", "serial", "--timeout", "5")
    cfg = stick_py("cmdline", str(stick_image), "--show").stdout
    linux = menu_entries(cfg)["bty-live-screen"][0]
    assert linux.endswith("console=tty0 two=2") and "one=1" not in linux
    assert "set default=bty-live-serial" in cfg
    assert "set timeout_style=menu" in cfg and "set timeout=5" in cfg
    stick = load_stick()
    esp = stick.Esp(stick_image)
    assert not esp.exists("loader"), "mkosi's loader/ is left behind"
    assert esp.read("bty/entry.conf").decode().startswith("linux /bty-live/6.1.0-57-amd64/vmlinuz\n")


def test_a_grub_title_is_one_quoted_word() -> None:
    stick = load_stick()
    assert stick.grub_quote("bty-live (serial console ttyS0)") == "'bty-live (serial console ttyS0)'"
    assert stick.grub_quote("it's") == "'it'\\''s'"


def test_an_entry_without_a_kernel_is_refused() -> None:
    stick = load_stick()
    with pytest.raises(SystemExit, match="no linux or initrd line"):
        stick.BootEntry.parse("title x\noptions ro\n")
