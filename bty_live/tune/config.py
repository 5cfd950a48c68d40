"""The CIJOE config a tuning runs with: where the target is, what was flashed, on what machine.

    [cijoe.task]  fail_fast = true      (a default: a failing step stops the task)
    [bty.run]     id, bty_version, started_at
    [bty.target]  root, running, mounted, disk, disk_model, disk_serial, root_partition,
                  root_partition_number, root_fstype, root_found_by, partition_table, sector_size,
                  disk_size, chroot_ready; [[bty.target.partitions]] number, device, start, size,
                  type, type_name, name, fstype, label, uuid
    [bty.image]   name, file, blake3, os
    [bty.machine] vendor, product, model, serial, uuid, board, mac, macs;
                  [[bty.machine.nics]] name, mac, driver

TOML has no null: a value that is not known is an empty string. The image's own config (the
manifest's `[tune] config`) is merged first, so it may set anything except the `[bty]` facts,
which bty writes last. Tasks read these with Jinja (`{{ config.bty.target.root }}`) or, in
scripts, from `cijoe.config.options`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from bty_live import __version__
from bty_live.errors import TuneError
from bty_live.system.machine import MachineIdentity
from bty_live.tune.model import TuneRequest
from bty_live.tune.rootfs import DiskLayout, RootChoice, describe_partitions


def _text(value: object) -> str:
    return "" if value is None else str(value)


def machine_table(machine: MachineIdentity) -> dict[str, Any]:
    return {
        "vendor": _text(machine.vendor),
        "product": _text(machine.product),
        "model": machine.model,
        "serial": _text(machine.serial),
        "uuid": _text(machine.uuid),
        "board": _text(machine.board),
        "mac": _text(machine.primary_mac),
        "macs": [nic.mac for nic in machine.nics],
        "nics": [{"name": nic.name, "mac": nic.mac, "driver": _text(nic.driver)} for nic in machine.nics],
    }


def build_config(
    request: TuneRequest,
    machine: MachineIdentity,
    layout: DiskLayout,
    choice: RootChoice | None,
    root: Path | None,
    run_id: str,
    started_at: str,
    chroot_ready: bool = False,
) -> dict[str, Any]:
    """The `[bty]` facts (pure: no I/O)."""
    target: dict[str, Any] = {
        "root": str(root) if root is not None else "",
        "running": False,
        "mounted": root is not None,
        "chroot_ready": chroot_ready,
        "disk": request.disk,
        "disk_model": _text(request.disk_model),
        "disk_serial": _text(request.disk_serial),
        "disk_size": layout.size,
        "sector_size": layout.sector_size,
        "partition_table": layout.table.scheme if layout.table else "",
        "root_partition": choice.device if choice else "",
        "root_partition_number": choice.number if choice else 0,
        "root_fstype": choice.fstype if choice else "",
        "root_found_by": choice.found_by if choice else "",
        "partitions": [dict(p) for p in describe_partitions(layout)],
    }
    return {
        "bty": {
            "run": {"id": run_id, "bty_version": __version__, "started_at": started_at},
            "target": target,
            "image": {
                "name": request.image_name,
                "file": request.image_file,
                "blake3": _text(request.image_blake3),
                "os": request.image_os,
            },
            "machine": machine_table(machine),
        },
    }


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merged key by key; anything else in `override` replaces what `base` had."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def load_image_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise TuneError(f"tuning config {path} cannot be read ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TuneError(f"tuning config {path} is not valid TOML ({exc}); fix it") from exc


#: CIJOE settings the image's config may change
DEFAULTS: dict[str, Any] = {"cijoe": {"task": {"fail_fast": True}}}


def write_config(path: Path, image_config: Mapping[str, Any], facts: Mapping[str, Any]) -> dict[str, Any]:
    """Write bty's defaults, the image's config over them, and bty's `[bty]` facts over both."""
    data = merge(merge(DEFAULTS, image_config), facts)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return data
