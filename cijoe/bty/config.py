"""The facts bty hands the scripts: the `[bty]` tables of the CIJOE config bty writes.

`bty_live.tune.config` writes them:

    [bty.target]  root, running, disk, root_partition, root_partition_number, root_fstype, ...
    [bty.image]   name, file, blake3, os
    [bty.machine] vendor, product, model, serial, uuid, board, mac, macs
    [bty.run]     id (random per tuning run), bty_version

Missing values are empty strings: TOML has no null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
