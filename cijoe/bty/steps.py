"""What every bty script does around its own work: check its arguments, expand name templates,
log what it changed and run as a CIJOE step that fails with one clear line.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cijoe.bty.config import table, text
from cijoe.bty.target_root import TargetError

log = logging.getLogger("cijoe.bty")


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
