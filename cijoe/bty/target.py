"""The target's root filesystem as the bty scripts see it: paths, files, users and units.

The target is another system's root mounted on the flasher (or, for a task that runs on the
target's own first boot, `/`). Three rules keep scripts from touching the flasher itself:

* Every path is resolved *inside* the target (`TargetRoot.resolve`): symlinks are followed the
  way the target would follow them, an absolute link starts again at the target's root and `..`
  stops there. `/etc/resolv.conf -> /run/...` on the target never means the flasher's /run.
* Users and groups come from the target's /etc/passwd and /etc/group, never from the flasher's
  name service: uid 1000 on the target is whoever the target says it is.
* A root of `/` is refused unless the config says the task runs on the target itself
  (`[bty.target] running = true`, which only `bty.firstboot` tasks set).

The facts come from the `[bty]` tables of the CIJOE config bty writes (`bty_live.tune.config`):

    [bty.target]  root, running, disk, root_partition, root_partition_number, root_fstype, ...
    [bty.image]   name, file, blake3, os
    [bty.machine] vendor, product, model, serial, uuid, board, mac, macs
    [bty.run]     id (random per tuning run), bty_version

Missing values are empty strings: TOML has no null.

Only the standard library is used, so the package also works with a plain `cijoe` install and a
hand-written config.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

log = logging.getLogger("cijoe.bty")

MAX_SYMLINKS = 40

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


class TargetError(Exception):
    """A step cannot do what it was asked; the message names the thing and the fix."""


# -- the config -----------------------------------------------------------------------------


def bty_options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    """The `[bty]` table of a CIJOE config's options (empty when there is none)."""
    value = options.get("bty", {})
    return value if isinstance(value, Mapping) else {}


def table(options: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """`[bty.<name>]` of a CIJOE config's options."""
    value = bty_options(options).get(name, {})
    return value if isinstance(value, Mapping) else {}


def text(mapping: Mapping[str, Any], key: str) -> str:
    value = mapping.get(key, "")
    return "" if value is None else str(value)


def config_options(cijoe: Any) -> Mapping[str, Any]:
    """The options of the config a script runs with.

    Read directly rather than with `cijoe.getconf()`, which lets environment variables override
    config keys: `BTY_TARGET_ROOT` in the flasher's environment must not redirect a script.
    """
    options = getattr(getattr(cijoe, "config", None), "options", None)
    return options if isinstance(options, Mapping) else {}


# -- the root -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


class TargetRoot:
    """The target's `/` on the flasher: resolve, read and write paths without leaving it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TargetRoot:
        """The root named by `[bty.target] root`; refuses a missing root and the flasher's `/`."""
        target = table(options, "target")
        root = text(target, "root")
        if not root:
            raise TargetError(
                "[bty.target] root is not set in the CIJOE config, or the image has no Linux root "
                "filesystem: this step edits the target's files, so it needs one (bty sets it when it "
                "mounts the target; for a hand-written config, set root to where the target is mounted)"
            )
        path = Path(root)
        if not path.is_absolute():
            raise TargetError(f"[bty.target] root = {root!r} is not an absolute path")
        if path.is_dir() and os.path.samefile(path, "/") and target.get("running") is not True:
            raise TargetError(
                "[bty.target] root is / (the system running this task) and [bty.target] running is not "
                "true: refusing to change the flasher itself; mount the target somewhere else"
            )
        if not path.is_dir():
            raise TargetError(f"[bty.target] root {root} is not a directory: is the target mounted?")
        return cls(path)

    def __repr__(self) -> str:
        return f"TargetRoot({str(self.root)!r})"

    # -- paths --------------------------------------------------------------------------------

    def resolve(self, path: str | PurePosixPath, *, follow_last: bool = True) -> Path:
        """The flasher's path for the target's `path`, following symlinks inside the target.

        Components that do not exist are kept as they are, so the result may be created.
        With `follow_last=False` a final symlink is not followed (to replace or remove the link).
        """
        pending = [p for p in PurePosixPath("/", path).parts[1:] if p not in ("", ".")]
        done: list[str] = []
        links = 0
        while pending:
            name = pending.pop(0)
            if name == "..":
                if done:
                    done.pop()
                continue
            host = self.root.joinpath(*done, name)
            if not pending and not follow_last:
                done.append(name)
                break
            try:
                st = os.lstat(host)
            except (FileNotFoundError, NotADirectoryError):
                done.append(name)
                continue
            if not stat.S_ISLNK(st.st_mode):
                done.append(name)
                continue
            links += 1
            if links > MAX_SYMLINKS:
                raise TargetError(f"{path} in the target: too many levels of symbolic links")
            link = os.readlink(host)
            if link.startswith("/"):
                done = []
            pending = [p for p in PurePosixPath(link).parts if p not in ("/", "", ".")] + pending
        return self.root.joinpath(*done)

    def show(self, host_path: Path) -> str:
        """A flasher path inside the root, as the target spells it (for messages)."""
        try:
            relative = str(host_path.relative_to(self.root))
        except ValueError:
            return str(host_path)
        return "/" if relative == "." else "/" + relative

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.resolve(path))

    def read_text(self, path: str) -> str | None:
        """The file's text, or None when it does not exist."""
        try:
            return self.resolve(path).read_text(encoding="utf-8", errors="surrogateescape")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError as exc:
            raise TargetError(f"{path} in the target is a directory, not a file") from exc

    # -- changes ------------------------------------------------------------------------------

    def makedirs(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Path:
        """Create `path` and missing parents (each new one with mode/uid/gid); return its host path."""
        host = self.resolve(path)
        missing: list[Path] = []
        probe = host
        while not os.path.lexists(probe) and probe != self.root:
            missing.append(probe)
            probe = probe.parent
        for directory in reversed(missing):
            os.mkdir(directory, mode)
            os.chmod(directory, mode)  # not subject to the umask
            os.chown(directory, uid, gid)
        if not host.is_dir():
            raise TargetError(f"{path} in the target exists and is not a directory")
        return host

    def write_file(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> bool:
        """Write atomically (temp file, fsync, rename); False when it already held exactly this.

        Parent directories are created (0755, root). An existing symlink is followed inside the
        target, so the file it points to is what changes.
        """
        host = self.resolve(path)
        self.makedirs(str(PurePosixPath(self.show(host)).parent))
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise TargetError(f"{self.show(host)} in the target is a directory: cannot write a file there")
            if (stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == mode and st.st_uid == uid
                    and st.st_gid == gid and host.read_bytes() == data):
                return False
        tmp = host.with_name(f".{host.name}.bty-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, host)
        return True

    def remove(self, path: str) -> bool:
        """Remove a file or symlink (not followed); False when there was none."""
        host = self.resolve(path, follow_last=False)
        try:
            os.unlink(host)
        except FileNotFoundError:
            return False
        except IsADirectoryError as exc:
            raise TargetError(f"{path} in the target is a directory: not removing it") from exc
        return True

    def symlink(self, path: str, points_to: str) -> bool:
        """Make `path` a symlink to `points_to` (a path as the target sees it); False when it already is."""
        host = self.resolve(path, follow_last=False)
        try:
            if os.readlink(host) == points_to:
                return False
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: exists, but not a symlink
                raise
            raise TargetError(f"{self.show(host)} in the target exists and is not a symlink: "
                              "not replacing it") from exc
        self.makedirs(str(PurePosixPath(self.show(host)).parent))
        tmp = host.with_name(f".{host.name}.bty-tmp")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(points_to, tmp)
        os.replace(tmp, host)
        return True

    # -- users --------------------------------------------------------------------------------

    def user(self, name: str) -> PasswdEntry:
        """The target's /etc/passwd entry for `name` (or a numeric uid)."""
        content = self.read_text("/etc/passwd") or ""
        for line in content.splitlines():
            fields = line.split(":")
            if len(fields) < 7 or line.startswith("#"):
                continue
            if name in (fields[0], fields[2]):
                try:
                    return PasswdEntry(fields[0], int(fields[2]), int(fields[3]), fields[5] or "/")
                except ValueError as exc:
                    raise TargetError(f"the target's /etc/passwd has a broken line for {name}: {line!r}") from exc
        raise TargetError(f"user {name!r} does not exist in the target's /etc/passwd; create it first "
                          "(e.g. a step `run: chroot {{{{ config.bty.target.root }}}} useradd -m NAME`) or use root")

    def group_id(self, name: str) -> int:
        """The target's gid for group `name` (or a number)."""
        if name.isdigit():
            return int(name)
        for line in (self.read_text("/etc/group") or "").splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
                return int(fields[2])
        raise TargetError(f"group {name!r} does not exist in the target's /etc/group")

    def owner_ids(self, owner: str) -> tuple[int, int]:
        """'user', 'user:group' or 'uid:gid' -> (uid, gid) in the target's own databases."""
        user_name, _, group_name = owner.partition(":")
        if user_name.isdigit():
            uid, gid = int(user_name), int(user_name)
        else:
            entry = self.user(user_name)
            uid, gid = entry.uid, entry.gid
        if group_name:
            gid = self.group_id(group_name)
        return uid, gid


# -- arguments --------------------------------------------------------------------------------


# CIJOE parses a step's `with:` arguments with the script's argparse parser *outside* its error
# handling: a bad value caught by argparse (type=, choices=, required=) ends the whole run with a
# usage message instead of failing the step. So scripts take strings and check them here, where
# run_step turns a ValueError into a failed step with a clear reason.


def required(value: str | None, name: str) -> str:
    if value is None or value == "":
        raise ValueError(f"missing argument: with: {name}: ...")
    return value


def one_of(value: str, allowed: Sequence[str], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


def parse_bool(value: str | bool) -> bool:
    """CIJOE passes YAML booleans as 'true'/'false'."""
    lowered = str(value).strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true or false)")


def parse_mode(value: str) -> int:
    """'0644', '644' or '0o644' -> 0o644. An unquoted YAML 0644 arrives as '420': quote modes."""
    raw = str(value).strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{3,4}", raw):
        raise ValueError(f"mode {value!r} is not an octal file mode such as '0644'; quote it in YAML "
                         "(an unquoted 0644 is read as the number 420)")
    return int(raw, 8)


# -- templates --------------------------------------------------------------------------------


def _slug(value: str) -> str:
    """Lower case, anything but letters and digits turned into single dashes: hostname-safe."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", value.lower())).strip("-")


def template_values(options: Mapping[str, Any]) -> dict[str, str]:
    """The `{name}` fields a template may use, from the config's machine and image facts."""
    machine = table(options, "machine")
    image = table(options, "image")
    mac = text(machine, "mac").lower()
    return {
        "mac": mac.replace(":", "-"),
        "mac_nodelim": mac.replace(":", "").replace("-", ""),
        "serial": _slug(text(machine, "serial")),
        "product": _slug(text(machine, "product")),
        "vendor": _slug(text(machine, "vendor")),
        "uuid": text(machine, "uuid").lower(),
        "board": _slug(text(machine, "board")),
        "image": _slug(text(image, "name")),
    }


_FIELD = re.compile(r"\{([^{}]*)\}")


def expand_template(template: str, values: Mapping[str, str]) -> str:
    """Replace `{field}`s; unknown or empty fields are errors that say which field and why.

    Deliberately not str.format: a template must not reach attributes (`{mac.__class__}`).
    """

    def one(match: re.Match[str]) -> str:
        field = match.group(1)
        if field not in values:
            raise TargetError(f"unknown template field {{{field}}}; known: "
                              + ", ".join(f"{{{k}}}" for k in values))
        value = values[field]
        if not value:
            raise TargetError(f"template field {{{field}}} is empty on this machine (no such DMI value, "
                              "or a placeholder such as 'To be filled by O.E.M.'); use another field, "
                              "e.g. {mac}")
        return value

    return _FIELD.sub(one, template)


# -- systemd units ----------------------------------------------------------------------------


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


# -- running a step -----------------------------------------------------------------------------


class ActionLog:
    """What a step changed: logged, and kept as an artifact of the step in the CIJOE report."""

    def __init__(self, cijoe: Any, script: str) -> None:
        self.script = script
        self.lines: list[str] = []
        self.path: Path | None = None
        output_path, ident = getattr(cijoe, "output_path", None), getattr(cijoe, "output_ident", None)
        if output_path and ident:
            self.path = Path(output_path) / str(ident) / "artifacts" / f"{script}.log"

    def __call__(self, line: str) -> None:
        log.info(f"{self.script}: {line}")
        self.lines.append(line)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")


def run_step(script: str, body: Callable[[], None]) -> int:
    """Run a script's body; a TargetError (or bad argument) becomes one ERROR line and EINVAL.

    CIJOE marks the step failed on a non-zero return; bty shows the ERROR line as the reason.
    """
    try:
        body()
    except (TargetError, ValueError) as exc:
        log.error(f"{script}: {exc}")
        return errno.EINVAL
    except OSError as exc:
        log.error(f"{script}: {exc.strerror or exc} ({exc.filename or 'no file'})")
        return exc.errno or errno.EIO
    return 0


def shell_join(argv: Sequence[str]) -> str:
    """CIJOE runs commands through a shell: quote every argument."""
    import shlex

    return shlex.join(list(argv))
