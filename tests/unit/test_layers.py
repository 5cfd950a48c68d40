"""The package's folders are its layers (docs/architecture.md): each imports only from below.

Read from the source with `ast`: module-level and function-level imports count, imports under
`if TYPE_CHECKING:` (annotations only) do not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bty_live"

#: the bottom: every layer may use these
BASE = {"errors", "events", "units", "signals", "__init__"}
#: layer -> the layers it may import (besides itself and BASE)
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "system": set(),
    "protocol": {"system"},
    "disk": {"system"},
    "image": {"system", "protocol"},
    "tune": {"system", "image"},
    "flash": {"system", "image", "disk", "tune", "protocol"},
    # `bty capture`: a disk read into an image, through the flash's pipeline, target and receipts
    "capture": {"system", "image", "disk", "flash"},
    "render": set(),
    # front-ends: everything below, never one another
    "stick": {"system", "image", "disk", "tune", "flash", "capture", "render", "protocol"},
    "tui": {"system", "image", "disk", "tune", "flash", "capture", "render", "stick"},
    "agent": {"system", "image", "disk", "tune", "flash", "render", "protocol"},
    "server": {"system", "image", "disk", "tune", "flash", "render", "protocol"},
    # the CLI's dispatch reaches every front-end
    "commands": {"system", "image", "disk", "tune", "flash", "capture", "render", "protocol", "stick", "tui",
                 "agent", "server", "cli"},
    "cli": {"render", "commands"},
}
#: the documented front doors from a front-end into the CLI's command module
FRONT_DOORS = {("tui.__main__", "commands.tui")}


def layer_of(module: str) -> str:
    """"flash.engine" -> "flash"; "errors" -> "base"; "cli" -> "cli"."""
    top = module.split(".")[0]
    return "base" if top in BASE else top


def imports(path: Path) -> Iterator[str]:
    """The bty_live modules `path` imports (relative to the package), TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bty_live":
            if node.module == "bty_live":
                yield from (alias.name for alias in node.names)
            else:
                yield node.module.removeprefix("bty_live.")
        elif isinstance(node, ast.Import):
            yield from (a.name.removeprefix("bty_live.") for a in node.names if a.name.startswith("bty_live."))


def modules() -> list[tuple[str, Path]]:
    return sorted((".".join(p.relative_to(PACKAGE).with_suffix("").parts), p) for p in PACKAGE.rglob("*.py"))


def test_every_folder_is_a_known_layer() -> None:
    unknown = {layer_of(name) for name, _ in modules()} - set(ALLOWED)
    assert not unknown, f"add the new folder to ALLOWED (and docs/architecture.md): {unknown}"


@pytest.mark.parametrize(("name", "path"), modules(), ids=[name for name, _ in modules()])
def test_a_module_imports_only_from_its_own_layer_and_the_layers_below(name: str, path: Path) -> None:
    own = layer_of(name)
    wrong = [target for target in imports(path)
             if layer_of(target) not in {own, "base", "__version__", *ALLOWED[own]}
             and (name, target) not in FRONT_DOORS]
    assert not wrong, f"{name} ({own}) imports {wrong}"


def test_the_disk_rules_are_pure_only_discovery_and_hotplug_read_udev() -> None:
    users = sorted(name for name, path in modules() if "import pyudev" in path.read_text())
    assert users == ["disk.discovery", "disk.hotplug"]


def test_only_system_run_starts_subprocesses() -> None:
    starters = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"}
    found = []
    for name, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"
                    and node.func.attr in starters):
                found.append(name)
    assert sorted(set(found)) == ["system.run"]
