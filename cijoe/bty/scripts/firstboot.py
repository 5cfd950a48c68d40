"""
bty.firstboot: run something once, on the target's first boot
=============================================================

Some tuning can only happen on the running target (it needs its own network, hardware or
services). This step installs a systemd unit that runs a script once, on the first boot that
finds it, and then disables itself:

    - name: register
      uses: bty.firstboot
      with:
        name: register-inventory        # the unit is register-inventory.service
        commands:
        - curl -fsS https://inventory.example/register -d "host=$(hostname)"

Give exactly one of:

* `commands`: shell lines, run in order by /bin/sh with `set -eu`;
* `script`: a file on the flasher (relative to the task's directory), copied and run as is;
* `cijoe_task`: a CIJOE task (relative to the task's directory), run by the target's own `cijoe`
  (which the image must have) with a config holding this run's [bty.image], [bty.machine] and
  [bty.run] tables and [bty.target] root = "/", running = true, so bty.* steps work there too.

Files land in /var/lib/bty/firstboot/NAME/ and the unit in /etc/systemd/system/NAME.service,
enabled for multi-user.target and ordered after network-online.target (`after_network: false`
drops that). When the script succeeds the unit writes /var/lib/bty/firstboot/NAME/done and
disables itself by removing its own multi-user.target.wants link (what `systemctl disable` does,
without asking a systemd that may already be shutting down); the `done` file keeps it from
running again even if it were re-enabled. When the script fails, the unit is left failed and
enabled, so it runs again on the next boot and shows in `systemctl --failed`; its output goes to
the journal and the console.

Idempotent: the same arguments give the same files and links.
"""

from __future__ import annotations

import re
from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any

from cijoe.bty.config import config_options, table
from cijoe.bty.steps import ActionLog, parse_bool, run_step
from cijoe.bty.systemd_units import enable_unit
from cijoe.bty.target_root import TargetError, TargetRoot

BASE = "/var/lib/bty/firstboot"
CIJOE_PATHS = ("/usr/bin/cijoe", "/usr/local/bin/cijoe")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

UNIT_TEXT = """\
# Installed by bty.firstboot: runs {run} once, on the first boot that finds it, then disables itself.
[Unit]
Description=bty first-boot task {name}
ConditionPathExists=!{base}/{name}/done
{network}
[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=infinity
ExecStart={run}
ExecStartPost=/bin/sh -c 'touch {base}/{name}/done; rm -f /etc/systemd/system/multi-user.target.wants/{name}.service'
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""
NETWORK = "Wants=network-online.target\nAfter=network-online.target\n"


def add_args(parser: ArgumentParser) -> None:
    parser.add_argument("--name", default="bty-firstboot", help="unit and directory name (default bty-firstboot)")
    parser.add_argument("--commands", nargs="+", help="shell lines to run")
    parser.add_argument("--script", help="a script file to copy and run, relative to the task's directory")
    parser.add_argument("--cijoe_task", help="a CIJOE task for the target's own cijoe, relative to the task's "
                        "directory")
    parser.add_argument("--after_network", default="true",
                        help="order after network-online.target (default true)")


def commands_script(name: str, commands: list[str]) -> str:
    lines = [f"#!/bin/sh\n# Installed by bty.firstboot ({name}.service): runs once, on the first boot.\nset -eu\n"]
    lines += [command.rstrip("\n") + "\n" for command in commands]
    return "".join(lines)


def cijoe_run_script(name: str) -> str:
    directory = f"{BASE}/{name}"
    return (f"#!/bin/sh\n# Installed by bty.firstboot ({name}.service): runs a CIJOE task once, on the first "
            f"boot.\nset -eu\nrm -rf /var/log/bty/firstboot-{name}\nmkdir -p /var/log/bty\n"
            f"exec cijoe {directory}/task.yaml -c {directory}/config.toml -o /var/log/bty/firstboot-{name}\n")


def on_target_config(options: Any) -> bytes:
    """The config for a CIJOE task on the running target: this run's facts, root = '/'."""
    import tomli_w  # a dependency of cijoe, so present wherever this script runs

    data: dict[str, Any] = {"cijoe": {"task": {"fail_fast": True}}, "bty": {}}
    for name in ("image", "machine", "run"):
        data["bty"][name] = dict(table(options, name))
    data["bty"]["target"] = {"root": "/", "running": True}
    return tomli_w.dumps(data).encode()


def _beside_task(path: str, task: object) -> Path:
    candidate = Path(path)
    if not candidate.is_absolute() and isinstance(task, Path):
        candidate = task.parent / candidate
    return candidate


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TargetError(f"{what} {path} cannot be read ({exc.strerror}); put it beside the task") from exc


def main(args: Namespace, cijoe: Any) -> int:
    def body() -> None:
        options = config_options(cijoe)
        root = TargetRoot.from_options(options)
        note = ActionLog(cijoe, "bty.firstboot")
        name = args.name
        if not _NAME.match(name):
            raise TargetError(f"name {name!r} must be lower-case letters, digits, '.', '_' or '-' (it names "
                              "the unit)")
        given = [x for x in (args.commands, args.script, args.cijoe_task) if x]
        if len(given) != 1:
            raise TargetError("give exactly one of commands, script or cijoe_task")
        directory = f"{BASE}/{name}"
        task = getattr(args, "task", None)
        root.makedirs(directory, 0o755)
        if args.commands:
            run = commands_script(name, list(args.commands)).encode()
        elif args.script:
            run = _read(_beside_task(args.script, task), "script")
        else:
            if not any(root.resolve(path).is_file() for path in CIJOE_PATHS):
                raise TargetError("cijoe_task needs cijoe in the image (not found at " + ", ".join(CIJOE_PATHS)
                                  + "); install it there, or use commands or script")
            changed = root.write_file(f"{directory}/task.yaml", _read(_beside_task(args.cijoe_task, task),
                                                                      "cijoe_task"))
            changed |= root.write_file(f"{directory}/config.toml", on_target_config(options), 0o600)
            note(f"{directory}/task.yaml and config.toml" + ("" if changed else " (already)"))
            run = cijoe_run_script(name).encode()
        changed = root.write_file(f"{directory}/run", run, 0o755)
        note(f"{directory}/run ({len(run)} bytes)" + ("" if changed else " (already)"))
        unit = UNIT_TEXT.format(name=name, base=BASE, run=f"{directory}/run",
                                network=NETWORK if parse_bool(args.after_network) else "")
        unit_path = f"/etc/systemd/system/{name}.service"
        changed = root.write_file(unit_path, unit.encode())
        note(unit_path + ("" if changed else " (already)"))
        for change in enable_unit(root, f"{name}.service"):
            note(change)

    return run_step("bty.firstboot", body)
