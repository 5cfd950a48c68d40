"""
bty.write_file: write a file into the target
============================================

    - name: motd
      uses: bty.write_file
      with:
        path: /etc/motd
        content: "Deployed by bty\n"
        mode: "0644"                  # quote it: YAML reads an unquoted 0644 as the number 420
        owner: root:root              # the target's user and group (default root:root)

`content` passes through CIJOE's Jinja rendering like every `with:` value, so
`{{ config.bty.machine.serial }}` works in it; Jinja also drops the last newline of a string,
which `newline: true` (the default) puts back on a non-empty content.

Instead of `content`, `source` names a file on the flasher, relative to the task file's
directory (the images directory for manifest tasks), copied byte for byte. Missing parent
directories are created (0755, root). The file is replaced atomically; one that already holds
exactly this content, mode and owner is left alone, so the step is idempotent.
"""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any

from cijoe.bty.config import config_options
from cijoe.bty.steps import ActionLog, parse_bool, parse_mode, required, run_step
from cijoe.bty.target_root import TargetError, TargetRoot


def add_args(parser: ArgumentParser) -> None:
    parser.add_argument("--path", help="absolute path in the target")
    parser.add_argument("--content", help="the file's text")
    parser.add_argument("--source", help="a file on the flasher to copy, relative to the task's directory")
    parser.add_argument("--mode", default="0644", help="octal mode, quoted (default '0644')")
    parser.add_argument("--owner", default="root:root", help="user[:group] in the target (default root:root)")
    parser.add_argument("--newline", default="true",
                        help="end the content with a newline (default true: CIJOE drops a string's last one)")


def source_path(source: str, task: object) -> Path:
    path = Path(source)
    if not path.is_absolute() and isinstance(task, Path):
        path = task.parent / path
    return path


def main(args: Namespace, cijoe: Any) -> int:
    def body() -> None:
        root = TargetRoot.from_options(config_options(cijoe))
        note = ActionLog(cijoe, "bty.write_file")
        mode = parse_mode(args.mode)
        if not required(args.path, "path").startswith("/"):
            raise TargetError(f"path {args.path!r} must be absolute (a path in the target, e.g. /etc/motd)")
        if (args.content is None) == (args.source is None):
            raise TargetError("give exactly one of content (the text) or source (a file to copy)")
        if args.content is not None:
            text = args.content
            if parse_bool(args.newline) and text and not text.endswith("\n"):
                text += "\n"
            data = text.encode()
        else:
            path = source_path(args.source, getattr(args, "task", None))
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise TargetError(f"source {path} cannot be read ({exc.strerror}); put it beside the task") from exc
        uid, gid = root.owner_ids(args.owner)
        changed = root.write_file(args.path, data, mode, uid, gid)
        note(f"{args.path}: {len(data)} bytes, mode {mode:04o}, owner {uid}:{gid}"
             + ("" if changed else " (already)"))

    return run_step("bty.write_file", body)
