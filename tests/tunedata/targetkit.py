"""Small Debian-like target systems for the tuning tests: a root tree, and a GPT disk image of it.

The tree has what the bty scripts touch on a real systemd Debian root (passwd/group, hostname,
hosts, machine-id, SSH host keys, unit files in /usr/lib/systemd/system, a dbus machine-id link,
the random seed, usr-merged /bin and /lib) plus /bin/sh with its libraries copied from this
host, so `chroot` steps work. The image is made without mounting: `mkfs.ext4 -d TREE -E offset=`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

MiB = 1 << 20
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
MICROSOFT_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
IMAGE_MACHINE_ID = "0123456789abcdef0123456789abcdef"
USER_UID = 1000

SSH_UNIT = """\
[Unit]
Description=OpenBSD Secure Shell server

[Service]
ExecStart=/usr/sbin/sshd -D

[Install]
WantedBy=multi-user.target
Alias=sshd.service
"""
GETTY_UNIT = """\
[Unit]
Description=Getty on %I

[Service]
ExecStart=-/sbin/agetty %I

[Install]
WantedBy=getty.target
DefaultInstance=tty1
"""
STATIC_UNIT = "[Unit]\nDescription=A unit without [Install]\n\n[Service]\nExecStart=/bin/true\n"


def _write(path: Path, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    os.chown(path, uid, gid)


def _copy_shell(tree: Path) -> None:
    """/bin/sh and the libraries ldd says it needs, at the same paths in the tree."""
    shell = Path(os.path.realpath("/bin/sh"))
    files = [shell]
    for line in subprocess.run(["ldd", str(shell)], capture_output=True, text=True, check=True).stdout.splitlines():
        for word in line.split():
            if word.startswith("/"):
                files.append(Path(word))
    for source in files:
        destination = tree / str(source).lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(source), destination)
    (tree / "bin").mkdir(exist_ok=True)
    if not (tree / "bin" / "sh").exists():
        os.symlink(str(shell), tree / "bin" / "sh")


def build_target_tree(tree: Path) -> Path:
    """A Debian-like root filesystem tree owned as on a real system."""
    tree.mkdir(parents=True)
    for name in ("proc", "sys", "dev", "run", "tmp", "var/lib/systemd", "var/lib/dbus", "usr/sbin"):
        (tree / name).mkdir(parents=True, exist_ok=True)
    os.chmod(tree / "tmp", 0o1777)
    _write(tree / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
           "sshd:x:101:65534::/run/sshd:/usr/sbin/nologin\n"
           f"debian:x:{USER_UID}:{USER_UID}:Debian:/home/debian:/bin/sh\n")
    _write(tree / "etc/group", f"root:x:0:\nnogroup:x:65534:\ndebian:x:{USER_UID}:\nadm:x:4:debian\n")
    _write(tree / "etc/hostname", "debian\n")
    _write(tree / "etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n\n::1\tlocalhost ip6-localhost\n")
    _write(tree / "etc/machine-id", IMAGE_MACHINE_ID + "\n", 0o444)
    _write(tree / "etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
    for kind in ("ed25519", "rsa"):
        _write(tree / f"etc/ssh/ssh_host_{kind}_key", f"PRIVATE {kind} KEY OF THE IMAGE\n", 0o600)
        _write(tree / f"etc/ssh/ssh_host_{kind}_key.pub", f"ssh-{kind} AAAAIMAGE image\n")
    _write(tree / "etc/ssh/sshd_config", "PermitRootLogin prohibit-password\n")
    _write(tree / "usr/bin/ssh-keygen", "#!/bin/sh\necho stub\n", 0o755)
    _write(tree / "usr/lib/systemd/systemd", "stub\n", 0o755)
    _write(tree / "usr/lib/systemd/system/ssh.service", SSH_UNIT)
    _write(tree / "usr/lib/systemd/system/getty@.service", GETTY_UNIT)
    _write(tree / "usr/lib/systemd/system/static.service", STATIC_UNIT)
    (tree / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True)
    _write(tree / "var/lib/systemd/random-seed", "seed shared by every clone\n", 0o600)
    os.symlink("/etc/machine-id", tree / "var/lib/dbus/machine-id")
    os.symlink("/run/systemd/resolve/stub-resolv.conf", tree / "etc/resolv.conf")
    (tree / "root").mkdir(mode=0o700)
    home = tree / "home/debian"
    home.mkdir(parents=True)
    os.chown(home, USER_UID, USER_UID)
    _copy_shell(tree)
    return tree


def build_disk_image(path: Path, tree: Path | None, size: int = 64 * MiB, *, root_type: str = ROOT_X86_64,
                     root_name: str = "root", fs_label: str = "rootfs", mbr: bool = False) -> Path:
    """GPT (or MBR): a 4 MiB 'ESP' and a root partition holding an ext4 of `tree` (empty when None)."""
    with open(path, "wb") as f:
        f.truncate(size)
    if mbr:
        table = "label: dos\nstart=2048, size=8192, type=ef\nstart=10240, type=83\n"
    else:
        table = (f"label: gpt\nstart=2048, size=8192, type={ESP_TYPE}, name=esp\n"
                 f"start=10240, type={root_type}, name={root_name}\n")
    subprocess.run(["sfdisk", "-q", str(path)], input=table.encode(), check=True, capture_output=True)
    if tree is not None:
        root_start = 10240 * 512
        root_size = size - root_start - MiB
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", fs_label, "-d", str(tree), "-E", f"offset={root_start}",
                        str(path), f"{root_size // 1024}k"], check=True, capture_output=True)
    return path


def build_windows_like_image(path: Path, size: int = 32 * MiB) -> Path:
    """GPT with one 'Microsoft basic data' partition holding no Linux filesystem (NTFS-like junk)."""
    with open(path, "wb") as f:
        f.truncate(size)
    table = f"label: gpt\nstart=2048, type={MICROSOFT_BASIC_DATA}, name=\"Basic data partition\"\n"
    subprocess.run(["sfdisk", "-q", str(path)], input=table.encode(), check=True, capture_output=True)
    with open(path, "r+b") as f:
        f.seek(2048 * 512 + 3)
        f.write(b"NTFS    ")
    return path
