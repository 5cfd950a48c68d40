"""bty: CIJOE scripts that tune a freshly flashed system, shipped with bty-live.

A CIJOE package is a Python package in the `cijoe` namespace (PEP 420: `cijoe/` has no
`__init__.py`), whose `scripts/`, `tasks/` and `configs/` subpackages CIJOE's resource collector
walks (`cijoe.core.resources.Collector.collect_from_packages`). A script `scripts/hostname.py`
becomes the resource `bty.hostname`, so a task says `uses: bty.hostname`.

Every script works on the target's root filesystem, mounted by bty on the flasher, and reads
where it is from the `[bty.target]` table of the CIJOE config that `bty flash` writes
(see `cijoe.bty.config`). Each one is idempotent: running it twice leaves what running it once
does.

The scripts share four modules, one job each: `config` reads the `[bty]` tables of the config,
`target_root` reads and changes files inside the target without leaving it, `systemd_units`
enables, disables and masks the target's units, and `steps` checks a step's arguments, expands
name templates and runs the step. Only the standard library is used, so the package also works
with a plain `cijoe` install and a hand-written config.
"""
