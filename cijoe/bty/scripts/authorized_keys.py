"""
bty.authorized_keys: let SSH keys log in to a user of the target
=================================================================

Adds public keys to ~USER/.ssh/authorized_keys in the target, creating ~/.ssh (0700) and the
file (0600) owned by the user as the *target's* /etc/passwd defines it:

    - name: keys
      uses: bty.authorized_keys
      with:
        user: root
        keys:
        - ssh-ed25519 AAAAC3Nza... admin@example
        - ssh-rsa AAAAB3Nza... backup

A key already present (same type and key data, whatever its comment or options) is not added
again, so the step is idempotent. With `exclusive: true` the file holds exactly these keys.
"""

from __future__ import annotations

import os
from argparse import ArgumentParser, Namespace
from typing import Any

from cijoe.bty.config import config_options
from cijoe.bty.steps import ActionLog, parse_bool, run_step
from cijoe.bty.target_root import TargetError, TargetRoot

KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ssh-dss",
    "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})


def add_args(parser: ArgumentParser) -> None:
    parser.add_argument("--user", default="root", help="the target's user (default: root)")
    parser.add_argument("--keys", nargs="+", help="public keys, one OpenSSH line each")
    parser.add_argument("--exclusive", default="false",
                        help="replace the file's keys with these (default: false, add to them)")


def key_identity(line: str) -> tuple[str, str] | None:
    """(type, base64 data) of an authorized_keys line, skipping any options before the type."""
    fields = line.strip().split()
    for i, field in enumerate(fields[:-1]):
        if field in KEY_TYPES:
            return field, fields[i + 1]
    return None


def merged_keys(existing: str | None, keys: list[str], exclusive: bool) -> tuple[str, list[str]]:
    """The new file content and the keys that were added."""
    lines = [] if exclusive or existing is None else existing.splitlines()
    present = {key_identity(line) for line in lines}
    added = []
    for key in keys:
        key = key.strip()
        identity = key_identity(key)
        if "\n" in key or identity is None:
            raise TargetError(f"not an SSH public key: {key[:40]!r}...; expected a line such as "
                              "'ssh-ed25519 AAAAC3Nza... comment'")
        if identity not in present:
            lines.append(key)
            present.add(identity)
            added.append(key)
    return "".join(line + "\n" for line in lines), added


def main(args: Namespace, cijoe: Any) -> int:
    def body() -> None:
        root = TargetRoot.from_options(config_options(cijoe))
        note = ActionLog(cijoe, "bty.authorized_keys")
        user = root.user(args.user)
        ssh_dir = f"{user.home.rstrip('/')}/.ssh"
        if not root.resolve(user.home).is_dir():
            raise TargetError(f"home directory {user.home} of {user.name} does not exist in the target")
        host_dir = root.makedirs(ssh_dir, 0o700, user.uid, user.gid)
        os.chown(host_dir, user.uid, user.gid)
        os.chmod(host_dir, 0o700)
        path = f"{ssh_dir}/authorized_keys"
        if not args.keys:
            raise ValueError("missing argument: with: keys: [...]")
        content, added = merged_keys(root.read_text(path), list(args.keys), parse_bool(args.exclusive))
        root.write_file(path, content.encode(), 0o600, user.uid, user.gid)
        note(f"{path}: {len(added)} key(s) added, {len(args.keys) - len(added)} already there "
             f"(owner {user.uid}:{user.gid}, mode 0600)")

    return run_step("bty.authorized_keys", body)
