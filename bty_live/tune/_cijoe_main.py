"""`python -m bty_live.tune._cijoe_main WORKDIR CIJOE-ARGS...`: the cijoe CLI, run for bty.

Two things differ from running `cijoe` directly:

* the working directory is WORKDIR (a private temp dir): CIJOE collects scripts from the current
  directory and its subdirectories, which must not be whatever directory bty was started in;
* the `cijoe.bty` package is made discoverable. CIJOE finds packages by walking the directories
  of the `cijoe` namespace package with pkgutil. A wheel install puts cijoe/bty/ into
  site-packages beside cijoe's own packages, and it is found as is. A source checkout or an
  editable install (setuptools' import hook, which pkgutil cannot list) is not on that path,
  so the directory holding cijoe/bty/ is appended to sys.path, making it a portion of the
  namespace like site-packages.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def cijoe_bty_base() -> Path | None:
    """The directory that holds cijoe/bty/, or None when it cannot be found."""
    try:
        spec = importlib.util.find_spec("cijoe.bty")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve().parent.parent
    source_tree = Path(__file__).resolve().parents[2]  # bty_live/tune/_cijoe_main.py -> the checkout
    return source_tree if (source_tree / "cijoe" / "bty" / "__init__.py").is_file() else None


def make_discoverable() -> None:
    base = cijoe_bty_base()
    if base is not None and str(base) not in sys.path and not any(
        Path(p or ".").resolve() == base for p in sys.path
    ):
        sys.path.append(str(base))


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m bty_live.tune._cijoe_main WORKDIR CIJOE-ARGS...", file=sys.stderr)
        return 2
    os.chdir(argv[0])
    make_discoverable()
    from cijoe.cli import cli  # after chdir: cijoe reads the working directory when imported

    sys.argv = ["cijoe", *argv[1:]]
    code = cli.main()
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
