"""The target's systemd units, changed the way `systemctl --root=ROOT` changes them.

No systemctl runs: the unit files are found in the target's unit directories and the links that
enable or mask them are made inside the target with `TargetRoot`, so the flasher's own systemd
is never asked or touched.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

from cijoe.bty.target_root import MAX_SYMLINKS, TargetError, TargetRoot

#: where systemd looks for system units, in its order of precedence (runtime dirs left out:
#: they are empty on a system that is not running)
UNIT_DIRS = (
    "/etc/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
ADMIN_UNIT_DIR = "/etc/systemd/system"
#: [Install] keys that make a link in a `<target>.<suffix>/` directory
_INSTALL_DEPENDENCY_DIRS = {"WantedBy": "wants", "RequiredBy": "requires", "UpheldBy": "upholds"}


@dataclass(frozen=True)
class UnitFile:
    name: str  # as asked for: foo.service, getty@tty1.service
    file_name: str  # the file that defines it: foo.service, getty@.service
    path: str  # where the file is, as the target sees it
    install: dict[str, list[str]]


def parse_install_section(content: str) -> dict[str, list[str]]:
    """The [Install] section's keys -> values (whitespace-separated lists, repeated keys joined)."""
    section = ""
    found: dict[str, list[str]] = {}
    logical: list[str] = []
    lines: list[str] = []
    for raw in content.splitlines():  # join continuation lines first
        if raw.rstrip().endswith("\\"):
            logical.append(raw.rstrip()[:-1])
            continue
        logical.append(raw)
        lines.append(" ".join(logical))
        logical = []
    if logical:
        lines.append(" ".join(logical))
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
            continue
        if section != "Install" or "=" not in stripped:
            continue
        key, _, value = stripped.partition("=")
        key, value = key.strip(), value.strip()
        if not value:  # an empty assignment resets the list
            found[key] = []
            continue
        found.setdefault(key, []).extend(value.split())
    return found


_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|timer|target|path|mount|automount|swap|slice)$")


def check_unit_name(name: str) -> str:
    if not _UNIT_NAME.match(name):
        raise TargetError(f"{name!r} is not a systemd unit name (e.g. ssh.service, fstrim.timer)")
    return name


def _template_of(name: str) -> str | None:
    """getty@tty1.service -> getty@.service; None for non-instances."""
    prefix, at, rest = name.partition("@")
    if not at:
        return None
    _, dot, suffix = rest.rpartition(".")
    return f"{prefix}@.{suffix}" if dot else None


def find_unit(root: TargetRoot, name: str, _depth: int = 0) -> UnitFile:
    """The unit file that defines `name` in the target (an instance falls back to its template,
    an alias link to the unit it names)."""
    check_unit_name(name)
    if _depth > MAX_SYMLINKS:
        raise TargetError(f"unit {name}: its aliases link to each other in a loop")
    candidates = [name]
    template = _template_of(name)
    if template and template != name:
        candidates.append(template)
    for file_name in candidates:
        for directory in UNIT_DIRS:
            path = f"{directory}/{file_name}"
            link = root.resolve(path, follow_last=False)
            if link.is_symlink() and os.readlink(link) == "/dev/null":
                raise TargetError(f"unit {name} is masked in the target ({path} -> /dev/null); unmask it first "
                                  "(bty.enable_unit with state: unmasked)")
            host = root.resolve(path)
            if not host.is_file():
                continue
            real = root.show(host)
            if link.is_symlink() and file_name == name and "@" not in name and real != path:
                return find_unit(root, os.path.basename(real), _depth + 1)  # an alias: what it names
            content = host.read_text(encoding="utf-8", errors="replace")
            return UnitFile(name, file_name, path, parse_install_section(content))
    raise TargetError(f"unit {name} not found in the target (looked in {', '.join(UNIT_DIRS)}); install it "
                      "first, e.g. with bty.write_file")


def enable_unit(root: TargetRoot, name: str, _seen: set[str] | None = None) -> list[str]:
    """Make the links `systemctl --root=ROOT enable NAME` makes; return what changed.

    WantedBy=/RequiredBy=/UpheldBy= become links in /etc/systemd/system/<target>.wants|requires|
    upholds/, Alias= links in /etc/systemd/system, and Also= units are enabled as well. Each link
    points to the unit file where the target has it, as systemctl's do.
    """
    seen = _seen if _seen is not None else set()
    if name in seen:
        return []
    seen.add(name)
    unit = find_unit(root, name)
    install = unit.install
    instance_name = unit.name  # the unit an alias named, or the instance asked for
    if _template_of(name) == name:  # a template named without an instance: getty@.service
        defaults = install.get("DefaultInstance", [])
        if not defaults:
            raise TargetError(f"unit {name} is a template without DefaultInstance=: name an instance, "
                              f"e.g. {name.replace('@.', '@example.')}")
        instance_name = name.replace("@.", f"@{defaults[0]}.")
    if not any(install.get(key) for key in (*_INSTALL_DEPENDENCY_DIRS, "Alias", "Also")):
        raise TargetError(f"unit {name} has no [Install] section with WantedBy=, RequiredBy=, Alias= or Also=, "
                          "so it cannot be enabled; enable a unit that wants it, or give it an [Install] "
                          "section (e.g. WantedBy=multi-user.target)")
    changed: list[str] = []
    for key, suffix in _INSTALL_DEPENDENCY_DIRS.items():
        for wanted_by in install.get(key, []):
            link = f"{ADMIN_UNIT_DIR}/{check_unit_name(wanted_by)}.{suffix}/{instance_name}"
            if root.symlink(link, unit.path):
                changed.append(f"{link} -> {unit.path}")
    for alias in install.get("Alias", []):
        link = f"{ADMIN_UNIT_DIR}/{check_unit_name(alias)}"
        if link != unit.path and root.symlink(link, unit.path):
            changed.append(f"{link} -> {unit.path}")
    for also in install.get("Also", []):
        changed += enable_unit(root, also, seen)
    return changed


def disable_unit(root: TargetRoot, name: str) -> list[str]:
    """Remove the links enabling `name`: in every *.wants/.requires/.upholds dir, and its aliases."""
    check_unit_name(name)
    unit_dir = root.resolve(ADMIN_UNIT_DIR)
    removed: list[str] = []
    if not unit_dir.is_dir():
        return removed
    aliases: set[str] = set()
    with contextlib.suppress(TargetError):  # a unit that is gone may still have links
        aliases = set(find_unit(root, name).install.get("Alias", []))
    for entry in sorted(unit_dir.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and entry.suffix in (".wants", ".requires", ".upholds"):
            link = entry / name
            if link.is_symlink():
                link.unlink()
                removed.append(root.show(link))
        elif entry.name in aliases and entry.is_symlink():
            entry.unlink()
            removed.append(root.show(entry))
    return removed


def mask_unit(root: TargetRoot, name: str) -> bool:
    """Link /etc/systemd/system/NAME to /dev/null, as `systemctl mask` does."""
    check_unit_name(name)
    return root.symlink(f"{ADMIN_UNIT_DIR}/{name}", "/dev/null")


def unmask_unit(root: TargetRoot, name: str) -> bool:
    check_unit_name(name)
    path = f"{ADMIN_UNIT_DIR}/{name}"
    host = root.resolve(path, follow_last=False)
    if host.is_symlink() and os.readlink(host) == "/dev/null":
        host.unlink()
        return True
    return False
