"""Unattended mode: the kernel command line picks the image and the disk; anything unclear
refuses without writing, and a flashed machine is not flashed again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.errors import SelectorError, UsageError
from bty_live.flash.plan import VerifyMode
from bty_live.stick.unattended import After, Consoles, UnattendedRequest, parse_cmdline, run_unattended
from bty_live.system.actions import SystemActions
from bty_live.system.machine import MachineIdentity
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image, device_equals_file, images_dir_with, read_device

IMAGE_SIZE = 32 * MiB


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "demo.img", IMAGE_SIZE, files_bytes=2 * MiB)


@pytest.fixture
def images(tmp_path: Path, raw_image: Path) -> Path:
    return images_dir_with(tmp_path, raw_image, "demo.img", manifest=True)


def test_a_command_line_without_bty_image_asks_for_nothing() -> None:
    assert parse_cmdline("BOOT_IMAGE=/vmlinuz root=LABEL=x console=ttyS0 quiet") is None


def test_the_command_line_keys_are_parsed_with_their_defaults() -> None:
    request = parse_cmdline("quiet bty.image=demo bty.disk=serial=TARGET1 console=ttyS0")
    assert isinstance(request, UnattendedRequest)
    assert (request.image, request.disk) == ("demo", "serial=TARGET1")
    assert (request.verify, request.after, request.dry_run, request.tune) == (VerifyMode.READBACK, After.POWEROFF,
                                                                              False, None)
    assert not request.full
    request = parse_cmdline("bty.image=demo bty.disk=tran=nvme,size>=100G bty.verify=stream bty.after=reboot "
                            "bty.tune=off bty.dry_run=1 bty.full=1")
    assert isinstance(request, UnattendedRequest) and request.disk == "tran=nvme,size>=100G"
    assert (request.verify, request.after, request.tune, request.dry_run) == (VerifyMode.STREAM, After.REBOOT,
                                                                              "off", True)
    assert request.full and request.key() != replace(request, full=False).key()


@pytest.mark.parametrize("cmdline,problem", [
    ("bty.image=demo bty.dsik=serial=X", "unknown kernel command-line key bty.dsik="),
    ("bty.image=demo", "bty.disk= is not"),
    ("bty.image=demo bty.disk=serial=X bty.after=explode", "bad value"),
    ("bty.image=demo bty.disk", "needs a value"),
])
def test_a_mistyped_or_incomplete_command_line_refuses(cmdline: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        parse_cmdline(cmdline)


def test_the_pxe_agent_keys_are_left_to_the_agent() -> None:
    assert parse_cmdline("bty.server=http://10.0.2.2:8080 bty.token=t") is None


def _machine() -> MachineIdentity:
    return MachineIdentity(vendor="QEMU", product="Standard PC", serial="SN1", uuid="uuid-1", board=None)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def actions(self) -> SystemActions:
        return SystemActions(reboot=lambda: self.calls.append("reboot"),
                             poweroff=lambda: self.calls.append("poweroff"))


def test_unattended_flash_lands_saves_the_receipt_and_powers_off(images: Path, raw_image: Path,
                                                                 make_loop: Callable[..., LoopDevice],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(IMAGE_SIZE)
    recorder = Recorder()
    request = parse_cmdline(f"bty.image=demo bty.disk=name={loop.name}")
    assert isinstance(request, UnattendedRequest)
    consoles = Consoles(devices=[], log=images / "logs" / "run.log")
    code = run_unattended(request, images_dir=images, consoles=consoles, actions=recorder.actions(),
                          machine=_machine())
    consoles.close()
    assert code == 0 and recorder.calls == ["poweroff"]
    assert device_equals_file(loop.path, raw_image)
    assert len(list((images / "receipts").glob("*.json"))) == 1
    log = (images / "logs" / "run.log").read_text()
    assert "write: 100%" in log or "write: done" in log
    assert "read-back" in log or "verify: done" in log


def test_a_machine_already_flashed_by_the_same_request_is_not_flashed_again(
        images: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    request = parse_cmdline(f"bty.image=demo bty.disk=name={loop.name} bty.after=reboot")
    assert isinstance(request, UnattendedRequest)
    first = Recorder()
    run_unattended(request, images_dir=images, consoles=Consoles(devices=[]), actions=first.actions(),
                   machine=_machine())
    assert first.calls == ["reboot"]
    with open(loop.path, "r+b", buffering=0) as dev:  # the flashed system changed itself on first boot
        dev.seek(IMAGE_SIZE // 2)
        dev.write(b"first boot wrote this")
    second = Recorder()
    code = run_unattended(request, images_dir=images, consoles=Consoles(devices=[]), actions=second.actions(),
                          machine=_machine())
    assert code == 0 and second.calls == []  # no second flash, and no reboot: no loop
    assert read_device(loop.path, IMAGE_SIZE // 2, 21) == b"first boot wrote this"


def test_an_ambiguous_selector_writes_nothing_and_does_not_reboot(images: Path,
                                                                   make_loop: Callable[..., LoopDevice]) -> None:
    size = IMAGE_SIZE + 5 * MiB
    first, second = make_loop(size), make_loop(size)
    before = read_device(first.path, 0, MiB), read_device(second.path, 0, MiB)
    recorder = Recorder()
    request = parse_cmdline(f"bty.image=demo bty.disk=tran=loop,size>={size},size<={size} bty.after=reboot")
    assert isinstance(request, UnattendedRequest)
    with pytest.raises(SelectorError):
        run_unattended(request, images_dir=images, consoles=Consoles(devices=[]), actions=recorder.actions(),
                       machine=_machine())
    assert recorder.calls == []
    assert (read_device(first.path, 0, MiB), read_device(second.path, 0, MiB)) == before


def test_dry_run_shows_the_plan_and_writes_nothing(images: Path, make_loop: Callable[..., LoopDevice],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(IMAGE_SIZE, fill=b"\x77")
    code = cli.main(["unattended", "--no-consoles", "--images", str(images), "--cmdline",
                     f"bty.image=demo bty.disk=name={loop.name} bty.dry_run=1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "dry run" in out and loop.path in out
    assert read_device(loop.path, 0, MiB) == b"\x77" * MiB


def test_the_cli_maps_a_bad_command_line_to_the_usage_exit_code(images: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["unattended", "--no-consoles", "--images", str(images), "--cmdline", "bty.image=demo"])
    assert code == 2
    assert "bty.disk= is not" in capsys.readouterr().err
