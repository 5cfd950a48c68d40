"""End-to-end tests: the live stick in QEMU (UEFI, TCG unless KVM really works).

They need root, mkosi, QEMU + OVMF, exfat-fuse and /dev/fuse (`make setup`), and build what is
missing: the demo OS (images/demo.img.zst, and images/demo-tunable.img.zst, its variant that
tuning can change) and a test stick bundling them (build/e2e/bty-live.img, from the same mkosi
output as `make image`). On a machine without root or without those tools they skip with the
reason (with BTY_E2E_REQUIRE=1 they fail instead); a build that fails on a machine that has them
is a test failure. BTY_E2E_STICK=PATH uses a stick built elsewhere. Consoles, logs and disk
images of each test stay in build/e2e/<test>/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.e2e.rig import FIRST_PAINT, ROOT

E2E_DIR = ROOT / "build" / "e2e"
DURATIONS: dict[str, float] = {}


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mkosi, loop devices, QEMU disk images)"
    for tool in ("mkosi", "qemu-system-x86_64", "mount.exfat-fuse", "mkfs.exfat", "sfdisk", "mcopy"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make setup)"
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing (the exFAT images partition is filled through exfat-fuse)"
    return None


def _cannot_run(reason: str) -> NoReturn:
    """The machine lacks what the tests need (not root, tools missing): skip, unless required."""
    if os.environ.get("BTY_E2E_REQUIRE") == "1":
        pytest.fail(f"the live stick cannot be built here: {reason}")
    pytest.skip(f"the live stick cannot be built here: {reason}")


def _cannot_build(reason: str) -> NoReturn:
    """Everything is installed but the build failed: that is a failure, never a skip."""
    pytest.fail(f"the live stick could not be built: {reason}")


def _run_logged(argv: list[str], log: Path, env: dict[str, str] | None = None) -> bool:
    with open(log, "w") as out:
        return subprocess.run(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}).returncode == 0


#: images/ files the test stick bundles: the demo OS, and its tunable variant (ext4 root) with the
#: tuning task its manifest names; scripts/build-demo-image.sh makes all but the task
DEMO_FILES = ("demo.img.zst", "demo.img.zst.toml")
TUNABLE_FILES = ("demo-tunable.img.zst", "demo-tunable.img.zst.toml", "demo-tunable.task.yaml")


def _ensure_demo_images(names: tuple[str, ...]) -> None:
    """Build the demo images (scripts/build-demo-image.sh) unless images/ has all of `names`."""
    if all((ROOT / "images" / name).exists() for name in names):
        return
    E2E_DIR.mkdir(parents=True, exist_ok=True)
    log = E2E_DIR / "build-demo-image.log"
    if not _run_logged([str(ROOT / "scripts" / "build-demo-image.sh")], log):
        _cannot_build(f"scripts/build-demo-image.sh failed; see {log}")


@pytest.fixture(scope="session")
def stick() -> Path:
    """The test stick: build/e2e/bty-live.img, bundling the demo image and its tunable variant."""
    if os.environ.get("BTY_E2E_STICK"):
        return Path(os.environ["BTY_E2E_STICK"]).resolve()
    reason = _unavailable()
    if reason:
        _cannot_run(reason)
    E2E_DIR.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    _ensure_demo_images(DEMO_FILES + TUNABLE_FILES)
    images = E2E_DIR / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    for name in DEMO_FILES + TUNABLE_FILES:
        os.link(ROOT / "images" / name, images / name)
    out = E2E_DIR / "bty-live.img"
    log = E2E_DIR / "build-image.log"
    if not _run_logged([str(ROOT / "scripts" / "build-image.sh")], log,
                       env={"BTY_IMAGES_DIR": str(images), "BTY_STICK_OUT": str(out), "CMDLINE": ""}):
        _cannot_build(f"scripts/build-image.sh failed; see {log}")
    DURATIONS["(build: demo image + test stick)"] = time.monotonic() - start
    return out


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Path:
    """build/e2e/<test name>/, emptied: the stick copy, targets, consoles and logs of one test."""
    path: Path = E2E_DIR / request.node.name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture(autouse=True)
def _timed(request: pytest.FixtureRequest) -> Iterator[None]:
    start = time.monotonic()
    yield
    if request.node.get_closest_marker("e2e"):
        DURATIONS[request.node.name] = time.monotonic() - start


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIRST_PAINT:
        terminalreporter.section("power-on to the TUI's image list")
        for console, seconds in FIRST_PAINT.items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {console}")
    if not DURATIONS:
        return
    terminalreporter.section("e2e durations")
    for name, seconds in DURATIONS.items():
        terminalreporter.write_line(f"{seconds:7.1f} s  {name}")
    total = sum(DURATIONS.values())
    terminalreporter.write_line(f"{total:7.1f} s  total")
    E2E_DIR.mkdir(parents=True, exist_ok=True)
    (E2E_DIR / "durations.txt").write_text(
        "".join(f"{s:.1f} {n}\n" for n, s in DURATIONS.items()) + f"{total:.1f} total\n")


# --------------------------------------------------------------------------- netboot (server mode)


@pytest.fixture(scope="session")
def demo_image() -> Path:
    """images/demo.img.zst with its manifest, built when missing (scripts/build-demo-image.sh)."""
    reason = _unavailable()
    if reason:
        _cannot_run(reason)
    _ensure_demo_images(DEMO_FILES)
    return ROOT / "images" / "demo.img.zst"


@pytest.fixture(scope="session")
def netboot() -> Path:
    """The netboot flavour of the live system: build/e2e/netboot/{vmlinuz,initrd}, made by
    scripts/build-netboot.sh from the same mkosi output as the stick. BTY_E2E_NETBOOT=DIR uses a
    kernel and initrd built elsewhere."""
    if os.environ.get("BTY_E2E_NETBOOT"):
        return Path(os.environ["BTY_E2E_NETBOOT"]).resolve()
    reason = _unavailable()
    for tool in ("unsquashfs", "cpio", "zstd"):
        if reason is None and shutil.which(tool) is None:
            reason = f"{tool} is not installed (make setup)"
    if reason:
        _cannot_run(reason)
    E2E_DIR.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    out = E2E_DIR / "netboot"
    log = E2E_DIR / "build-netboot.log"
    if not _run_logged([str(ROOT / "scripts" / "build-netboot.sh")], log, env={"BTY_NETBOOT_OUT": str(out)}):
        _cannot_build(f"scripts/build-netboot.sh failed; see {log}")
    DURATIONS["(build: netboot kernel + initrd)"] = time.monotonic() - start
    return out
