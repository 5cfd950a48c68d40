"""The target's root filesystem as the bty scripts see it: paths, files and users.

The target is another system's root mounted on the flasher (or, for a task that runs on the
target's own first boot, `/`). Three rules keep scripts from touching the flasher itself:

* Every path is resolved *inside* the target (`TargetRoot.resolve`): symlinks are followed the
  way the target would follow them, an absolute link starts again at the target's root and `..`
  stops there. `/etc/resolv.conf -> /run/...` on the target never means the flasher's /run.
* Users and groups come from the target's /etc/passwd and /etc/group, never from the flasher's
  name service: uid 1000 on the target is whoever the target says it is.
* A root of `/` is refused unless the config says the task runs on the target itself
  (`[bty.target] running = true`, which only `bty.firstboot` tasks set).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cijoe.bty.config import table, text

MAX_SYMLINKS = 40


class TargetError(Exception):
    """A step cannot do what it was asked; the message names the thing and the fix."""


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
