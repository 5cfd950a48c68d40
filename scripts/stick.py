#!/usr/bin/env python3
"""Finish and adjust bty-live stick images, outside mkosi's sandbox (stdlib only, run as root).

  stick.py assemble BASE OUT --images DIR [--cmdline KEYS] [--free MIB] [--bty BTY]
      Copy mkosi's BASE image (ESP + root) to OUT, append the exFAT BTY_IMAGES partition holding
      every image of DIR (writing missing manifests with `bty images add`), and write the boot
      menu: a "bty-live" entry (screen) and a "bty-live (serial console)" entry, both with the
      kernel's command line (mkosi.conf's KernelCommandLine=) plus KEYS.
  stick.py cmdline IMAGE [--append KEYS] [--no-build-keys] [--default screen|serial] [--show]
      Rewrite the boot menu of a stick image (e.g. a test copy): both entries get the kernel's
      command line, the keys given at build time (unless --no-build-keys), then KEYS.

Why outside mkosi: systemd-repart 254 cannot format exFAT and mkosi's sandbox sees no loop
devices, while filling an exFAT file system here needs exfat-fuse on a loop device (the host
kernel has no exfat driver). The boot menu lives in the ESP, which mtools edits without mounting.

Boot menu: one GRUB configuration (grub/grub.cfg on the ESP) serves the three ways the stick
starts: UEFI and UEFI with Secure Boot (shim -> Debian's signed GRUB, whose early config mkosi
points there) and legacy BIOS (GRUB's core image, whose prefix is /grub). The kernel and initrd
paths come from mkosi's type #1 entry, kept as bty/entry.conf; the command line is plain text
in the menu, so keys can be changed here, or at the boot menu ("e"), without rebuilding anything
and without touching a signed file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LABEL = "BTY_IMAGES"
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"  # Windows and macOS mount these
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MIB = 1 << 20
#: how long the hidden menu waits for Esc, F4 or Shift: a key pressed earlier reaches the
#: firmware instead (Esc opens the setup of many, OVMF's among them)
HIDDEN_MENU_SECONDS = 1
GRUB_CFG = "grub/grub.cfg"  # where mkosi's early configs point GRUB (EFI/debian/grub.cfg, core.img)
ENTRY_PATH = "bty/entry.conf"
KEYS_PATH = "bty/keys.txt"
ENTRIES = {
    "screen": ("bty-live", "console=tty0"),
    "serial": ("bty-live (serial console ttyS0)", "console=tty0 console=ttyS0,115200"),
}
IMAGE_SUFFIXES = (".img", ".raw", ".iso", ".zst", ".xz", ".gz")
SKIP_NAMES = {"README.md", ".gitignore", ".gitkeep", "ledger.jsonl"}  # + bty's run state below
SKIP_SUFFIXES = (".partial", ".tmp", ".log")


def log(msg: str) -> None:
    print(f"stick: {msg}", file=sys.stderr, flush=True)


def run(*argv: str, capture: bool = False, input: str | None = None) -> str:
    proc = subprocess.run(argv, text=True, input=input, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"stick: {shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout if capture else ""


# --------------------------------------------------------------------------- partitions


def partitions(image: Path) -> list[dict[str, Any]]:
    table = json.loads(run("sfdisk", "--json", str(image), capture=True))["partitiontable"]
    return sorted(table.get("partitions", []), key=lambda p: int(p["start"]))


def partition_of_type(image: Path, type_guid: str) -> dict[str, Any]:
    """The one partition of this GPT type in `image`; more or fewer is an error."""
    found = [p for p in partitions(image) if str(p["type"]).upper() == type_guid.upper()]
    if len(found) != 1:
        raise SystemExit(f"stick: expected one partition of type {type_guid} in {image}, found {len(found)}")
    return found[0]


def esp_partition(image: Path) -> dict[str, Any]:
    for part in partitions(image):
        if str(part["type"]).upper() == ESP_TYPE:
            return part
    raise SystemExit(f"stick: {image} has no EFI system partition")


def esp_offset(image: Path) -> int:
    return int(esp_partition(image)["start"]) * 512


# --------------------------------------------------------------------------- ESP via mtools


class Esp:
    def __init__(self, image: Path) -> None:
        self.spec = f"{image}@@{esp_offset(image)}"
        self.env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}

    def _m(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([tool, "-i", self.spec, *args], text=True, capture_output=True, env=self.env)
        if check and proc.returncode != 0:
            raise SystemExit(f"stick: {tool} {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def exists(self, path: str) -> bool:
        return self._m("mdir", "-b", f"::/{path}", check=False).returncode == 0

    def listdir(self, path: str) -> list[str]:
        proc = self._m("mdir", "-b", f"::/{path}", check=False)
        if proc.returncode != 0:
            return []
        return [line.rstrip("/").rsplit("/", 1)[-1] for line in proc.stdout.split() if line]

    def read(self, path: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "f"
            self._m("mcopy", "-n", f"::/{path}", str(out))
            return out.read_bytes()

    def write(self, path: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "f"
            src.write_bytes(data)
            self.mkdirs(str(Path(path).parent))
            self._m("mcopy", "-o", "-n", str(src), f"::/{path}")

    def mkdirs(self, path: str) -> None:
        parts = [p for p in path.split("/") if p and p != "."]
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if not self.exists(sub):
                self._m("mmd", f"::/{sub}")

    def move(self, src: str, dst: str) -> None:
        self.mkdirs(str(Path(dst).parent))
        self._m("mmove", f"::/{src}", f"::/{dst}")

    def delete(self, path: str) -> None:
        self._m("mdel", f"::/{path}", check=False)

    def delete_tree(self, path: str) -> None:
        self._m("mdeltree", f"::/{path}", check=False)


# --------------------------------------------------------------------------- boot menu (GRUB)


@dataclass(frozen=True)
class BootEntry:
    """What boots the live system: the kernel and initrds on the ESP and their command line, as
    mkosi's type #1 entry gives them (mkosi writes loader/entries/bty-live-KVER.conf)."""

    linux: str
    initrds: tuple[str, ...]
    options: str

    @classmethod
    def parse(cls, text: str) -> BootEntry:
        linux, initrds, options = "", [], ""
        for line in text.splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "linux":
                linux = value.strip()
            elif key == "initrd":
                initrds += value.split()
            elif key == "options":
                options = value.strip()
        if not linux or not initrds:
            raise SystemExit(f"stick: the boot entry has no linux or initrd line:\n{text}")
        return cls(linux, tuple(initrds), options)

    def render(self) -> str:
        return (f"linux {self.linux}\n" + "".join(f"initrd {i}\n" for i in self.initrds)
                + f"options {self.options}\n")


def grub_quote(text: str) -> str:
    """A GRUB word: single quotes keep $, spaces and ; as they are."""
    return "'" + text.replace("'", "'\\''") + "'"


def render_grub_cfg(entry: BootEntry, esp_uuid: str, keys: str, default: str, timeout: int = 0) -> str:
    """The boot menu GRUB reads on every firmware: UEFI (Debian's signed GRUB, reached through
    shim) and legacy BIOS (GRUB's core image in the BIOS boot partition). Two entries, a screen
    and a serial console one, each with the kernel's command line plus the keys given.

    bty-live.esp= names the ESP the stick boots from: the initrd finds the stick's root next to
    it (systemd-boot used to say so in the LoaderDevicePartUUID EFI variable; GRUB does not, and
    a BIOS has no EFI variables at all)."""
    lines = [
        "# bty-live boot menu, written by scripts/stick.py (`stick.py cmdline` rewrites it).",
        "# Hidden (timeout 0): for one second after the firmware hands over, Esc or F4 (or holding",
        "# Shift) shows it; then e on an entry edits its kernel command line, Ctrl-x boots it.",
        f"set timeout_style={'hidden' if timeout == 0 else 'menu'}",
        f"set timeout={HIDDEN_MENU_SECONDS if timeout == 0 else timeout}",
        f"set default=bty-live-{default}",
    ]
    for name, (title, consoles) in ENTRIES.items():
        options = " ".join(x for x in (entry.options, f"bty-live.esp={esp_uuid.lower()}", consoles, keys.strip()) if x)
        lines += [
            f"menuentry {grub_quote(title)} --id bty-live-{name} {{",
            f"    linux {entry.linux} {options}",
            f"    initrd {' '.join(entry.initrds)}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def boot_entry(esp: Esp) -> BootEntry:
    """The boot entry: the saved one (bty/entry.conf), else mkosi's type #1 entry, moved to
    bty/entry.conf (out of loader/entries/, where no boot loader of ours looks)."""
    if esp.exists(ENTRY_PATH):
        return BootEntry.parse(esp.read(ENTRY_PATH).decode())
    names = [n for n in esp.listdir("loader/entries") if n.endswith(".conf")]
    if len(names) != 1:
        raise SystemExit(f"stick: expected one boot entry in loader/entries of the ESP (mkosi's), found {names}")
    entry = BootEntry.parse(esp.read(f"loader/entries/{names[0]}").decode())
    esp.write(ENTRY_PATH, entry.render().encode())
    esp.delete_tree("loader")
    log(f"boot entry: kernel {entry.linux}, initrds {' '.join(entry.initrds)}")
    return entry


def fix_shim_names(esp: Esp) -> None:
    """mkosi 24.3 copies Debian's MokManager as EFI/BOOT/mmx64.efi.signed; shim starts
    mmx64.efi (to enrol a key or hash when a boot loader fails its check), so give it that name."""
    if esp.exists("EFI/BOOT/mmx64.efi.signed") and not esp.exists("EFI/BOOT/mmx64.efi"):
        esp.move("EFI/BOOT/mmx64.efi.signed", "EFI/BOOT/mmx64.efi")
    for name in ("BOOTX64.EFI", "grubx64.efi", "mmx64.efi"):
        if not esp.exists(f"EFI/BOOT/{name}"):
            raise SystemExit(f"stick: EFI/BOOT/{name} is missing from the ESP (mkosi.conf: ShimBootloader=signed)")


def build_keys(esp: Esp) -> str:
    """The keys `make image CMDLINE=...` added (kept in the ESP next to the boot entry)."""
    return esp.read(KEYS_PATH).decode().strip() if esp.exists(KEYS_PATH) else ""


def write_menu(esp: Esp, esp_uuid: str, keys: str, default: str, timeout: int = 0) -> list[str]:
    text = render_grub_cfg(boot_entry(esp), esp_uuid, keys, default, timeout)
    esp.write(GRUB_CFG, text.encode())
    return [line.strip() for line in text.splitlines() if line.strip().startswith("linux ")]


# --------------------------------------------------------------------------- exFAT partition


def image_files(images: Path) -> list[Path]:
    """The files to bundle: images and their sidecars (manifest, bmap, tuning task). Not
    sub-directories (demo-os/ is the demo's source; receipts/, logs/ are a host's run state)."""
    return sorted(p for p in images.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name not in SKIP_NAMES
                  and not p.name.endswith(SKIP_SUFFIXES))


def ensure_manifests(images: Path, bty: str) -> None:
    for path in image_files(images):
        if not path.name.lower().endswith(IMAGE_SUFFIXES) or path.name.endswith(".toml"):
            continue
        if (path.parent / (path.name + ".toml")).exists():
            continue
        log(f"writing the missing manifest of {path.name} (bty images add)")
        run(bty, "images", "add", str(path))


@contextlib.contextmanager
def loop_device(path: Path) -> Iterator[str]:
    dev = run("losetup", "--find", "--show", str(path), capture=True).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@contextlib.contextmanager
def fuse_mount(dev: str, mountpoint: Path) -> Iterator[Path]:
    run("mount.exfat-fuse", dev, str(mountpoint))
    try:
        yield mountpoint
    finally:
        for _ in range(10):
            if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def build_exfat(fs_file: Path, size: int, files: list[Path], readme: Path | None) -> None:
    with open(fs_file, "wb") as f:
        f.truncate(size)
    run("mkfs.exfat", "-L", LABEL, str(fs_file))
    with tempfile.TemporaryDirectory(prefix="bty-exfat-") as tmp, loop_device(fs_file) as dev, \
            fuse_mount(dev, Path(tmp)) as mnt:
        for path in files:
            shutil.copyfile(path, mnt / path.name)
            log(f"  {path.name} ({path.stat().st_size / MIB:.1f} MiB)")
        if readme is not None:
            shutil.copyfile(readme, mnt / "README.md")
        for sub in ("receipts", "logs"):
            (mnt / sub).mkdir(exist_ok=True)
        os.sync()
    proc = subprocess.run(["fsck.exfat", "-n", str(fs_file)], text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"stick: fsck.exfat found problems in the new file system: {proc.stdout}{proc.stderr}")


def append_images_partition(out: Path, images: Path, free_mib: int) -> int:
    files = [p for p in image_files(images)]
    payload = sum(p.stat().st_size for p in files)
    # room for the files (cluster slack, metadata) plus free space for receipts, logs and markers
    size = (payload + payload // 50 + len(files) * MIB + free_mib * MIB + MIB - 1) // MIB * MIB
    parts = partitions(out)
    end = max(p["start"] + p["size"] for p in parts) * 512
    start = (end + MIB - 1) // MIB * MIB
    total = start + size + MIB  # + the backup GPT
    with open(out, "r+b") as f:
        f.truncate(total)
    run("sfdisk", "--quiet", "--relocate", "gpt-bak-std", str(out))
    run("sfdisk", "--quiet", "--append", "--no-reread", str(out),
        input=f"start={start // 512}, size={size // 512}, type={BASIC_DATA}, name=\"{LABEL}\"\n")
    log(f"{LABEL}: {len(files)} files, {payload / MIB:.1f} MiB, partition {size / MIB:.0f} MiB (exFAT)")
    readme = images / "README.md"
    with tempfile.TemporaryDirectory(prefix="bty-stick-", dir=out.parent) as tmp:
        fs_file = Path(tmp) / "images.exfat"
        build_exfat(fs_file, size, files, readme if readme.is_file() else None)
        run("dd", f"if={fs_file}", f"of={out}", "bs=4M", f"seek={start}", "oflag=seek_bytes",
            "conv=notrunc,sparse", "status=none")
    return size


# --------------------------------------------------------------------------- commands


def cmd_assemble(args: argparse.Namespace) -> int:
    base, out, images = Path(args.base), Path(args.out), Path(args.images)
    if os.geteuid() != 0:
        raise SystemExit("stick: assemble needs root (loop device + FUSE mount for the exFAT partition)")
    if any(p["name"] == LABEL for p in partitions(base)):
        raise SystemExit(f"stick: {base} already has a {LABEL} partition")
    tmp = out.with_name(out.name + ".tmp")
    log(f"copying {base} -> {out}")
    run("cp", "--sparse=always", str(base), str(tmp))
    try:
        esp = Esp(tmp)
        fix_shim_names(esp)
        esp.write(KEYS_PATH, args.cmdline.strip().encode() + b"\n")
        for line in write_menu(esp, esp_partition(tmp)["uuid"], args.cmdline, args.default):
            log(f"boot entry {line}")
        ensure_manifests(images, args.bty)
        append_images_partition(tmp, images, args.free)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"{out}: {out.stat().st_size / MIB:.0f} MiB")
    return 0


def cmd_cmdline(args: argparse.Namespace) -> int:
    image = Path(args.image)
    esp = Esp(image)
    if args.show:
        print(esp.read(GRUB_CFG).decode(), end="")
        return 0
    keys = " ".join(k for k in ("" if args.no_build_keys else build_keys(esp), args.append.strip()) if k)
    for line in write_menu(esp, esp_partition(image)["uuid"], keys, args.default, args.timeout):
        log(f"boot entry {line}")
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    part = partition_of_type(Path(args.image), args.type)
    print(part["start"], part["size"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("assemble", help="add the images partition and the boot menu to mkosi's image")
    p.add_argument("base")
    p.add_argument("out")
    p.add_argument("--images", default="images")
    p.add_argument("--cmdline", default="", help="kernel command-line keys for both boot entries")
    p.add_argument("--default", choices=sorted(ENTRIES), default="screen")
    p.add_argument("--free", type=int, default=64, metavar="MIB", help="free space on BTY_IMAGES (default 64)")
    p.add_argument("--bty", default=".venv/bin/bty")
    p.set_defaults(func=cmd_assemble)
    p = sub.add_parser("cmdline", help="rewrite the boot menu of a stick image")
    p.add_argument("image")
    p.add_argument("--append", default="", help="kernel command-line keys for both boot entries")
    p.add_argument("--no-build-keys", action="store_true",
                   help="leave out the keys given when the stick was built (make image CMDLINE=...)")
    p.add_argument("--default", choices=sorted(ENTRIES), default="screen")
    p.add_argument("--timeout", type=int, default=0,
                   help="show the boot menu for this many seconds (default 0: hidden; Esc, F4 or Shift "
                        "in the second after the firmware shows it)")
    p.add_argument("--show", action="store_true", help="print the menu and change nothing")
    p.set_defaults(func=cmd_cmdline)
    p = sub.add_parser("partition", help="print START SIZE (512-byte sectors) of the one partition of a type")
    p.add_argument("image")
    p.add_argument("type", help="GPT partition type GUID")
    p.set_defaults(func=cmd_partition)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
