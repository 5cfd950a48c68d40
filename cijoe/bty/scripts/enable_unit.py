"""
bty.enable_unit: enable (or disable, mask, unmask) a systemd unit in the target
===============================================================================

Makes the links `systemctl --root=TARGET enable UNIT` makes, without systemd running and
without the flasher's systemctl: the unit's [Install] WantedBy=/RequiredBy=/UpheldBy= become
links in /etc/systemd/system/<target>.wants/ (.requires/, .upholds/), Alias= becomes a link in
/etc/systemd/system, Also= units are enabled too. Template instances (getty@tty2.service) link
to their template.

    - name: enable-ssh
      uses: bty.enable_unit
      with:
        unit: ssh.service
        state: enabled       # or disabled, masked, unmasked

Idempotent: links that exist are left as they are.
"""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from typing import Any

from cijoe.bty.config import config_options
from cijoe.bty.steps import ActionLog, one_of, required, run_step
from cijoe.bty.systemd_units import disable_unit, enable_unit, mask_unit, unmask_unit
from cijoe.bty.target_root import TargetRoot

STATES = ("enabled", "disabled", "masked", "unmasked")


def add_args(parser: ArgumentParser) -> None:
    parser.add_argument("--unit", help="unit name, e.g. ssh.service")
    parser.add_argument("--state", default="enabled", help="enabled (default), disabled, masked or unmasked")


def main(args: Namespace, cijoe: Any) -> int:
    def body() -> None:
        root = TargetRoot.from_options(config_options(cijoe))
        note = ActionLog(cijoe, "bty.enable_unit")
        required(args.unit, "unit")
        one_of(args.state, STATES, "state")
        if args.state == "enabled":
            changes = enable_unit(root, args.unit)
        elif args.state == "disabled":
            changes = [f"removed {link}" for link in disable_unit(root, args.unit)]
        elif args.state == "masked":
            changes = [f"/etc/systemd/system/{args.unit} -> /dev/null"] if mask_unit(root, args.unit) else []
        else:
            changes = [f"removed /etc/systemd/system/{args.unit}"] if unmask_unit(root, args.unit) else []
        for change in changes:
            note(change)
        if not changes:
            note(f"{args.unit} was already {args.state}")

    return run_step("bty.enable_unit", body)
