"""
bty.machine_id: make this clone a machine of its own
====================================================

Every machine flashed from one image starts with the image's /etc/machine-id, SSH host keys
and random seed. This step gives the target its own:

* /etc/machine-id (mode: fresh, the default) gets a new id, derived from the tuning run's random
  id, so every flash differs but a rerun within one tuning run writes the same id (idempotent).
  It is written now rather than left for systemd because an *empty* or *missing* file has other
  effects: "uninitialized"/missing starts systemd's first-boot logic (systemd-firstboot may stop
  at a prompt on the console, and `preset-all` may change which units the image enabled), and
  the id only exists once the machine has booted. A fresh id is in the tuning report at once.
  mode: empty writes an empty file instead: systemd then makes an id at every boot until it can
  save one (no first-boot logic), for images that want systemd to derive it (e.g. in a VM).
  /var/lib/dbus/machine-id, when it is a file of its own rather than a link, follows.
* SSH host keys (ssh_host_keys: regenerate, the default) are removed, and a unit,
  bty-ssh-host-keys.service, is installed and enabled that runs `ssh-keygen -A` on the target's
  first boot, before sshd (and its socket). They are made on the target rather than here so that the private keys
  come from the target's own entropy and never exist on the flasher or in its reports. The unit
  runs only while no host key exists. ssh_host_keys: keep leaves them.
* /var/lib/systemd/random-seed and /var/lib/systemd/credential.secret are removed: a seed shared
  by clones is no seed, and the credential secret is per machine. systemd makes new ones.

    - name: identity
      uses: bty.machine_id
"""

from __future__ import annotations

import hashlib
import secrets
from argparse import ArgumentParser, Namespace
from typing import Any

from cijoe.bty.config import config_options, table, text
from cijoe.bty.steps import ActionLog, one_of, run_step
from cijoe.bty.systemd_units import enable_unit
from cijoe.bty.target_root import TargetError, TargetRoot

KEYGEN_UNIT = "bty-ssh-host-keys.service"
KEYGEN_UNIT_TEXT = """\
# Installed by bty.machine_id: bty removed the image's SSH host keys so that every machine
# flashed from it has keys of its own. This makes them on the first boot, before sshd starts.
[Unit]
Description=Generate SSH host keys of this machine
DefaultDependencies=no
After=local-fs.target
Before=ssh.service sshd.service ssh.socket sshd.socket shutdown.target
Conflicts=shutdown.target
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart={keygen} -A

[Install]
WantedBy=multi-user.target
"""
KEYGEN_PATHS = ("/usr/bin/ssh-keygen", "/bin/ssh-keygen")
SYSTEMD_PATHS = ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")
HOST_KEY_SUFFIXES = ("_key", "_key.pub", "_key-cert.pub")
PER_MACHINE_FILES = ("/var/lib/systemd/random-seed", "/var/lib/systemd/credential.secret")


def add_args(parser: ArgumentParser) -> None:
    parser.add_argument("--mode", default="fresh",
                        help="fresh: write a new id now (default); empty: let systemd make one at boot")
    parser.add_argument("--ssh_host_keys", default="regenerate",
                        help="regenerate: remove them and make new ones on first boot (default); keep")


def derived_machine_id(run_id: str) -> str:
    """A random-looking v4 id (as systemd makes them) that is the same for the same run id."""
    raw = bytearray(hashlib.sha256(f"{run_id}\0bty.machine_id".encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def new_machine_id(options: Any) -> tuple[str, str]:
    run_id = text(table(options, "run"), "id")
    if run_id:
        return derived_machine_id(run_id), "derived from this tuning run"
    return derived_machine_id(secrets.token_hex(16)), "random: the config has no [bty.run] id"


def regenerate_host_keys(root: TargetRoot, note: ActionLog) -> None:
    ssh_dir = root.resolve("/etc/ssh")
    if not ssh_dir.is_dir():
        note("no /etc/ssh in the target: no SSH host keys to replace")
        return
    keys = sorted(p for p in ssh_dir.iterdir()
                  if p.name.startswith("ssh_host_") and p.name.endswith(HOST_KEY_SUFFIXES))
    keygen = next((path for path in KEYGEN_PATHS if root.resolve(path).is_file()), None)
    if keygen is None:
        if keys:
            raise TargetError("the target has SSH host keys but no ssh-keygen to make new ones at boot; "
                              "install openssh-client in the image, or use ssh_host_keys: keep")
        note("no SSH host keys and no ssh-keygen in the target: nothing to do for SSH")
        return
    if not any(root.resolve(path).exists() for path in SYSTEMD_PATHS):
        raise TargetError("the target does not boot with systemd, so no unit can make new SSH host keys at "
                          "boot; use ssh_host_keys: keep, or make them with a step of your own")
    for key in keys:
        key.unlink()
        note(f"removed {root.show(key)}")
    unit_path = f"/etc/systemd/system/{KEYGEN_UNIT}"
    if root.write_file(unit_path, KEYGEN_UNIT_TEXT.format(keygen=keygen).encode()):
        note(f"installed {unit_path}")
    for change in enable_unit(root, KEYGEN_UNIT):
        note(change)
    if not keys:
        note("SSH host keys: none left in the image; they are made on first boot")


def main(args: Namespace, cijoe: Any) -> int:
    def body() -> None:
        options = config_options(cijoe)
        root = TargetRoot.from_options(options)
        note = ActionLog(cijoe, "bty.machine_id")
        one_of(args.mode, ("fresh", "empty"), "mode")
        one_of(args.ssh_host_keys, ("regenerate", "keep"), "ssh_host_keys")
        if args.mode == "fresh":
            machine_id, how = new_machine_id(options)
            changed = root.write_file("/etc/machine-id", f"{machine_id}\n".encode(), 0o444)
            note(f"/etc/machine-id: {machine_id} ({how})" + ("" if changed else " (already)"))
        else:
            machine_id = ""
            changed = root.write_file("/etc/machine-id", b"", 0o444)
            note("/etc/machine-id: empty, systemd makes an id at boot" + ("" if changed else " (already)"))
        dbus = root.resolve("/var/lib/dbus/machine-id", follow_last=False)
        if dbus.is_file() and not dbus.is_symlink():
            if machine_id:
                root.write_file("/var/lib/dbus/machine-id", f"{machine_id}\n".encode(), 0o444)
                note("/var/lib/dbus/machine-id: same id")
            else:
                root.remove("/var/lib/dbus/machine-id")
                note("removed /var/lib/dbus/machine-id (D-Bus reads /etc/machine-id)")
        for path in PER_MACHINE_FILES:
            if root.remove(path):
                note(f"removed {path}")
        if args.ssh_host_keys == "regenerate":
            regenerate_host_keys(root, note)

    return run_step("bty.machine_id", body)
