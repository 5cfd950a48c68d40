"""
bty.hostname: set the target's hostname
=======================================

Writes /etc/hostname and the 127.0.1.1 line of /etc/hosts (Debian's convention for the
machine's own name) in the target. The name may be a template with fields from the machine
being flashed, so one task names every machine differently:

    - name: hostname
      uses: bty.hostname
      with:
        name: "node-{mac_nodelim}"      # node-525400123456

Fields: {mac} (52-54-00-12-34-56), {mac_nodelim} (525400123456), {serial}, {product},
{vendor}, {board}, {uuid} (from DMI, lower case, hostname-safe) and {image}. A field the
machine does not have (a DMI serial that is a placeholder) is an error, not an empty name.
The result must be a valid hostname: labels of letters, digits and dashes, at most 64 characters.

Idempotent: the same name gives the same files.
"""

from __future__ import annotations

import re
from argparse import ArgumentParser, Namespace
from typing import Any

from cijoe.bty.config import config_options
from cijoe.bty.steps import ActionLog, expand_template, parse_bool, required, run_step, template_values
from cijoe.bty.target_root import TargetError, TargetRoot

HOSTS_ADDRESS = "127.0.1.1"
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
DEFAULT_HOSTS = "127.0.0.1\tlocalhost\n{line}\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def add_args(parser: ArgumentParser) -> None:
    parser.add_argument("--name", help="hostname, or a template such as node-{mac_nodelim}")
    parser.add_argument("--hosts", default="true",
                        help="also set the 127.0.1.1 line of /etc/hosts (default: true)")


def valid_hostname(name: str) -> str:
    if len(name) > 64:
        raise TargetError(f"hostname {name!r} is {len(name)} characters long; the kernel allows 64")
    for label in name.split("."):
        if not _LABEL.match(label):
            raise TargetError(f"hostname {name!r} is not valid: each dot-separated part must be 1-63 letters, "
                              "digits or dashes, not starting or ending with a dash")
    return name


def hosts_with_name(content: str | None, name: str) -> str:
    """/etc/hosts with the 127.0.1.1 line naming `name` (and its short form for an FQDN)."""
    short = name.split(".")[0]
    line = f"{HOSTS_ADDRESS}\t{name}" + (f"\t{short}" if short != name else "")
    if content is None:
        return DEFAULT_HOSTS.format(line=line)
    lines = content.splitlines()
    for i, existing in enumerate(lines):
        fields = existing.split("#")[0].split()
        if fields and fields[0] == HOSTS_ADDRESS:
            lines[i] = line
            return "\n".join(lines) + "\n"
    insert_at = len(lines)
    for i, existing in enumerate(lines):
        fields = existing.split()
        if fields and fields[0] == "127.0.0.1":
            insert_at = i + 1
    lines.insert(insert_at, line)
    return "\n".join(lines) + "\n"


def main(args: Namespace, cijoe: Any) -> int:
    def body() -> None:
        options = config_options(cijoe)
        root = TargetRoot.from_options(options)
        note = ActionLog(cijoe, "bty.hostname")
        name = valid_hostname(expand_template(required(args.name, "name"), template_values(options)))
        changed = root.write_file("/etc/hostname", f"{name}\n".encode())
        note(f"/etc/hostname: {name}" + ("" if changed else " (already)"))
        if parse_bool(args.hosts):
            hosts = hosts_with_name(root.read_text("/etc/hosts"), name)
            changed = root.write_file("/etc/hosts", hosts.encode())
            note(f"/etc/hosts: {HOSTS_ADDRESS} {name}" + ("" if changed else " (already)"))

    return run_step("bty.hostname", body)
