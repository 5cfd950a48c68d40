"""Post-flash tuning on real loop devices: flash a Debian-like image, run real CIJOE tasks on it.

Every test that tunes checks its result on the disk itself (mounting the root read-only
afterwards) and that tuning left nothing mounted.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from bty_live.errors import ImageError, UsageError
from bty_live.events import Event, Kind, Phase
from bty_live.flash import engine
from bty_live.flash.plan import FlashOptions, VerifyMode
from bty_live.flash.prepare import prepare_plan
from bty_live.image.fsprobe import FsInfo
from bty_live.image.manifest import Manifest, TuneSpec
from bty_live.system.machine import MachineIdentity, Nic
from bty_live.tune import TuneError, TuneRequest, TuneResult, choose_task, load_task, run_tuning
from bty_live.tune.config import build_config, write_config
from bty_live.tune.rootfs import DiskLayout, NoRoot, PartitionInfo, RootChoice, choose_root, mounted_devices
from tests.conftest import LoopDevice
from tests.tunedata.targetkit import (
    IMAGE_MACHINE_ID,
    LINUX_DATA,
    MICROSOFT_BASIC_DATA,
    USER_UID,
    MiB,
    build_disk_image,
    build_target_tree,
    build_windows_like_image,
)

IMAGE_SIZE = 64 * MiB
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBtyTest operator@example"
MACHINE = MachineIdentity("QEMU", "Standard PC (Q35 + ICH9, 2009)", "SN-0042", "9a0c3e22-1111-2222-3333-444455556666",
                          None, (Nic("enp1s0", "52:54:00:12:34:56", "virtio_net", True),))
TASK = {
    "doc": "tune a demo target",
    "steps": [
        {"name": "hostname", "uses": "bty.hostname", "with": {"name": "node-{mac_nodelim}"}},
        {"name": "keys", "uses": "bty.authorized_keys", "with": {"user": "debian", "keys": [KEY]}},
        {"name": "identity", "uses": "bty.machine_id"},
        {"name": "firstboot", "uses": "bty.firstboot", "with": {"commands": ["echo hello > /var/tmp/hello"]}},
        {"name": "in-chroot", "run": "chroot {{ config.bty.target.root }} /bin/sh -c 'echo chrooted > /etc/chrooted'"},
    ],
}


# -- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def debian_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mounts and files owned by other users")
    base = tmp_path_factory.mktemp("tune-image")
    return build_disk_image(base / "debian.img", build_target_tree(base / "tree"), IMAGE_SIZE)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    directory = tmp_path / "images"
    directory.mkdir()
    return directory


def write_task(images: Path, task: dict[str, Any], name: str = "demo.task.yaml") -> Path:
    path = images / name
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def dd(image: Path, loop: LoopDevice) -> None:
    """Put the image on the device as a flash would (the engine itself is used where it matters)."""
    with open(image, "rb") as src, open(loop.path, "r+b") as dst:
        shutil.copyfileobj(src, dst, 4 * MiB)
        dst.flush()
        os.fsync(dst.fileno())


def tune(loop: LoopDevice, images: Path, task: Path, events: list[Event] | None = None,
         **request: Any) -> TuneResult:
    sink: Callable[[Event], None] = events.append if events is not None else (lambda _e: None)
    return run_tuning(TuneRequest(task=task, disk=loop.path, image_name="demo", image_blake3="ab" * 32,
                                  images_dir=images, machine=MACHINE, **request), sink)


def partition_device(loop: LoopDevice, number: int) -> str:
    return f"/dev/{loop.name}p{number}"


def mounted_from(loop: LoopDevice) -> list[str]:
    """Mount points of anything on the loop device or its partitions."""
    numbers = set()
    sysfs = Path("/sys/class/block") / loop.name
    for dev in [sysfs / "dev", *sysfs.glob(f"{loop.name}p*/dev")]:
        numbers.add(dev.read_text().strip())
    return [where for devnum, where in mounted_devices().items() if devnum in numbers]


@contextmanager
def target_root(device: str, tmp_path: Path) -> Iterator[Path]:
    """The tuned root, mounted read-only for the test to look at."""
    where = tmp_path / "look"
    where.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "ro", device, str(where)], check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, capture_output=True)


def has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


# -- the whole path --------------------------------------------------------------------------------


def test_tuning_a_flashed_disk_sets_hostname_adds_the_key_renews_machine_id_and_installs_firstboot(
        debian_image: Path, images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    shutil.copy(debian_image, images / "debian.img")
    loop = make_loop(IMAGE_SIZE)
    receipt = engine.flash(prepare_plan(str(images / "debian.img"), loop.path, FlashOptions(verify=VerifyMode.STREAM),
                                        images)).receipt
    task = write_task(images, TASK)
    events: list[Event] = []

    result = run_tuning(TuneRequest(task=task, disk=loop.path, image_name=receipt.image_name,
                                    image_blake3=receipt.image_blake3, images_dir=images, machine=MACHINE),
                        events.append)

    assert result.status == "passed"
    assert [(s.name, s.status) for s in result.steps] == [
        ("hostname", "passed"), ("keys", "passed"), ("identity", "passed"), ("firstboot", "passed"),
        ("in-chroot", "passed")]
    assert result.root_device == partition_device(loop, 2) and result.root_found_by == "type"
    assert mounted_from(loop) == []
    with target_root(partition_device(loop, 2), tmp_path) as root:
        assert (root / "etc/hostname").read_text() == "node-525400123456\n"
        keys = root / "home/debian/.ssh/authorized_keys"
        assert keys.read_text() == KEY + "\n"
        assert (keys.stat().st_uid, stat.S_IMODE(keys.stat().st_mode)) == (USER_UID, 0o600)
        assert stat.S_IMODE((root / "home/debian/.ssh").stat().st_mode) == 0o700
        machine_id = (root / "etc/machine-id").read_text().strip()
        assert len(machine_id) == 32 and machine_id != IMAGE_MACHINE_ID
        assert not list((root / "etc/ssh").glob("ssh_host_*"))
        wants = root / "etc/systemd/system/multi-user.target.wants"
        assert os.readlink(wants / "bty-firstboot.service") == "/etc/systemd/system/bty-firstboot.service"
        assert (root / "etc/systemd/system/bty-firstboot.service").is_file()
        assert (root / "etc/chrooted").read_text() == "chrooted\n"


def test_tuning_reports_its_steps_as_events_and_keeps_cijoes_report_on_the_images_partition(
        debian_image: Path, images: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    dd(debian_image, loop)
    events: list[Event] = []

    result = tune(loop, images, write_task(images, TASK), events)

    assert all(e.phase == Phase.TUNE for e in events)
    assert events[0].kind == Kind.START and events[-1].kind == Kind.END
    step_messages = [e.message for e in events if e.kind == Kind.INFO and e.message.startswith("step ")]
    assert [m.split(": ")[1].split(" ")[0] for m in step_messages] == ["started", "passed"] * 5
    assert step_messages[0] == "step 1/5 hostname (bty.hostname): started"
    report = Path(result.report_dir or "")
    assert report.parent == images / "reports" and report.name.endswith("-demo-" + loop.name)
    for name in ("task.state", "report.html", "bty-cijoe.log", "config.orig", "001_hostname"):
        assert (report / name).exists(), name
    config = tomllib.loads((report / "config.orig").read_text())["bty"]
    assert config["target"]["disk"] == loop.path
    assert config["target"]["root_partition"] == partition_device(loop, 2)
    assert [p["number"] for p in config["target"]["partitions"]] == [1, 2]
    assert config["image"] == {"name": "demo", "file": "", "blake3": "ab" * 32, "os": ""}
    assert config["machine"]["serial"] == "SN-0042" and config["machine"]["macs"] == ["52:54:00:12:34:56"]
    assert not Path(config["target"]["root"]).exists()  # the private mount point is gone again


def test_step_events_arrive_while_the_task_is_still_running(
        debian_image: Path, images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    dd(debian_image, loop)
    marker = tmp_path / "seen-step-2-start"
    # step 2 passes only once the sink has seen it start: so that event came while CIJOE still ran
    task = write_task(images, {"doc": "live", "steps": [
        {"name": "first", "uses": "bty.hostname", "with": {"name": "live"}},
        {"name": "wait", "run": f"sh -c 'for i in $(seq 1200); do test -e {marker} && exit 0; sleep 0.05; done; "
                                "exit 1'"}]})

    def sink(event: Event) -> None:
        if event.message == "step 2/2 wait (core.cmdrunner): started":
            marker.touch()

    result = run_tuning(TuneRequest(task=task, disk=loop.path, image_name="demo", images_dir=images,
                                    machine=MACHINE), sink)

    assert [s.status for s in result.steps] == ["passed", "passed"]


def test_tuning_the_same_disk_twice_changes_nothing_but_the_machine_id(
        debian_image: Path, images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    dd(debian_image, loop)
    task = write_task(images, TASK)
    files = ("etc/hostname", "etc/hosts", "home/debian/.ssh/authorized_keys",
             "etc/systemd/system/bty-firstboot.service", "var/lib/bty/firstboot/bty-firstboot/run")

    tune(loop, images, task)
    with target_root(partition_device(loop, 2), tmp_path) as root:
        first = {f: (root / f).read_bytes() for f in files}
        first_id = (root / "etc/machine-id").read_text()
    tune(loop, images, task)

    with target_root(partition_device(loop, 2), tmp_path) as root:
        assert {f: (root / f).read_bytes() for f in files} == first
        assert (root / "etc/machine-id").read_text() != first_id  # every tuning run is a new machine


# -- failures ---------------------------------------------------------------------------------------


def test_a_failing_step_fails_tuning_naming_the_step_and_its_reason(
        debian_image: Path, images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    dd(debian_image, loop)
    task = write_task(images, {"doc": "fails", "steps": [
        {"name": "hostname", "uses": "bty.hostname", "with": {"name": "first"}},
        {"name": "keys", "uses": "bty.authorized_keys", "with": {"user": "alice", "keys": [KEY]}},
        {"name": "never", "uses": "bty.hostname", "with": {"name": "never"}},
    ]})
    events: list[Event] = []

    with pytest.raises(TuneError) as caught:
        tune(loop, images, task, events)

    error = caught.value
    assert error.kind == "tune" and error.step == "keys" and error.uses == "bty.authorized_keys"
    assert "tuning step 'keys' (bty.authorized_keys) failed: user 'alice' does not exist" in str(error)
    assert error.report is not None and Path(error.report, "task.state").exists()
    messages = [e.message for e in events]
    assert "step 2/3 keys (bty.authorized_keys): failed" in " | ".join(messages)
    assert "step 3/3 never (bty.hostname): not run (an earlier step failed)" in messages
    assert mounted_from(loop) == []
    with target_root(partition_device(loop, 2), tmp_path) as root:
        assert (root / "etc/hostname").read_text() == "first\n"


def test_a_failing_command_is_named_with_its_exit_status_and_output(
        debian_image: Path, images: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    dd(debian_image, loop)
    task = write_task(images, {"doc": "fails", "steps": [
        {"name": "broken", "run": "sh -c 'echo the disk is haunted >&2; exit 3'"}]})

    with pytest.raises(TuneError, match=r"tuning step 'broken' \(core.cmdrunner\) failed: .* exited with 3: "
                                        r"the disk is haunted"):
        tune(loop, images, task)
    assert mounted_from(loop) == []


def test_a_step_whose_arguments_do_not_parse_fails_by_name(
        debian_image: Path, images: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    dd(debian_image, loop)
    task = write_task(images, {"doc": "x", "steps": [{"name": "dash", "uses": "bty.hostname",
                                                       "with": {"name": "-starts-with-a-dash"}}]})

    with pytest.raises(TuneError, match=r"tuning step 'dash' \(bty.hostname\) failed: the step's `with:` "
                                        r"arguments do not parse"):
        tune(loop, images, task)


def test_a_task_naming_an_unknown_script_fails_before_any_step_runs(
        debian_image: Path, images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    dd(debian_image, loop)
    task = write_task(images, {"doc": "x", "steps": [
        {"name": "hostname", "uses": "bty.hostname", "with": {"name": "first"}},
        {"name": "typo", "uses": "bty.hostnmae", "with": {"name": "x"}}]})

    with pytest.raises(TuneError, match=r"could not run .*unknown resource: script\(bty.hostnmae\)"):
        tune(loop, images, task)
    assert mounted_from(loop) == []
    with target_root(partition_device(loop, 2), tmp_path) as root:
        assert (root / "etc/hostname").read_text() == "debian\n"


def test_an_unquoted_mode_is_refused_before_anything_is_mounted(images: Path) -> None:
    task = write_task(images, {"doc": "x", "steps": [
        {"name": "motd", "uses": "bty.write_file", "with": {"path": "/etc/motd", "content": "x", "mode": 0o644}}]})
    with pytest.raises(TuneError, match=r"mode must be quoted"):
        load_task(task)


# -- images without a Linux root ------------------------------------------------------------------


def test_an_image_without_a_linux_root_skips_tuning_with_a_note(
        images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(32 * MiB)
    dd(build_windows_like_image(tmp_path / "windows.img"), loop)
    events: list[Event] = []

    result = tune(loop, images, write_task(images, TASK), events)

    assert result.status == "skipped" and result.steps == () and result.report_dir is None
    assert "no Linux root filesystem" in result.note
    assert "partition 1 (Microsoft basic data): no filesystem" in result.note
    assert "tuning was skipped" in result.note
    assert events[-1].kind == Kind.END and events[-1].message.startswith("tuning skipped:")
    assert not (images / "reports").exists()


def test_a_task_that_handles_rootless_images_runs_without_a_mount(
        images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(32 * MiB)
    dd(build_windows_like_image(tmp_path / "windows.img"), loop)
    marker = tmp_path / "ran"
    task = write_task(images, {"doc": "any image", "config": {"bty": {"needs_linux_root": False}}, "steps": [
        {"name": "check", "run": "test -z '{{ config.bty.target.root }}' && test '{{ config.bty.target.mounted }}'"
                                 f" = False && echo {{{{ config.bty.target.disk }}}} > {marker}"}]})

    result = tune(loop, images, task)

    assert result.status == "passed" and result.root_device is None
    assert marker.read_text() == loop.path + "\n"
    assert any("runs without a mounted root" in note for note in result.notes)


# -- finding the root --------------------------------------------------------------------------------


def test_the_root_of_an_mbr_image_is_found_by_its_filesystem_label(
        images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    image = build_disk_image(tmp_path / "mbr.img", build_target_tree(tmp_path / "tree"), 32 * MiB, mbr=True)
    loop = make_loop(32 * MiB)
    dd(image, loop)
    task = write_task(images, {"doc": "x", "steps": [{"name": "h", "uses": "bty.hostname", "with": {"name": "mbr"}}]})

    result = tune(loop, images, task)

    assert result.root_found_by == "label" and result.root_device == partition_device(loop, 2)
    with target_root(partition_device(loop, 2), tmp_path) as root:
        assert (root / "etc/hostname").read_text() == "mbr\n"


def test_the_manifests_hint_names_the_root_when_types_and_labels_do_not(
        images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    image = build_disk_image(tmp_path / "plain.img", build_target_tree(tmp_path / "tree"), 32 * MiB,
                             root_type=LINUX_DATA, root_name="system", fs_label="system")
    loop = make_loop(32 * MiB)
    dd(image, loop)
    task = write_task(images, {"doc": "x", "steps": [{"name": "h", "uses": "bty.hostname", "with": {"name": "hint"}}]})

    assert tune(loop, images, task, root_hint="system").root_found_by == "hint"
    with pytest.raises(TuneError, match=r"root hint 'data' matches no partition"):
        tune(loop, images, task, root_hint="data")
    with pytest.raises(TuneError, match=r"names partition 7, which .* does not have"):
        tune(loop, images, task, root_hint="7")


def test_stale_kernel_partitions_of_a_reused_device_are_corrected_before_mounting(
        debian_image: Path, images: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    dd(debian_image, loop)
    subprocess.run(["addpart", loop.path, "2", "20480", "2048"], check=True)  # a leftover of another image
    task = write_task(images, {"doc": "x", "steps": [{"name": "h", "uses": "bty.hostname", "with": {"name": "x"}}]})

    assert tune(loop, images, task).status == "passed"
    assert int((Path("/sys/class/block") / loop.name / f"{loop.name}p2" / "start").read_text()) == 10240


# -- bty.grow_rootfs on a disk larger than the image ---------------------------------------------------


def test_grow_rootfs_extends_the_root_partition_to_the_end_of_a_larger_disk(
        debian_image: Path, images: Path, make_loop: Callable[..., LoopDevice]) -> None:
    shutil.copy(debian_image, images / "debian.img")
    loop = make_loop(IMAGE_SIZE + 32 * MiB)
    engine.flash(prepare_plan(str(images / "debian.img"), loop.path, FlashOptions(verify=VerifyMode.STREAM), images))
    task = write_task(images, {"doc": "grow", "steps": [
        {"name": "grow", "uses": "bty.grow_rootfs", "with": {"filesystem": False}}]})
    p2 = Path("/sys/class/block") / loop.name / f"{loop.name}p2"
    disk_sectors = (IMAGE_SIZE + 32 * MiB) // 512

    tune(loop, images, task)
    grown = int((p2 / "size").read_text())
    tune(loop, images, task)

    assert int((p2 / "start").read_text()) + grown > disk_sectors - 2048 - 34  # to the end, but for alignment
    assert int((p2 / "size").read_text()) == grown  # the second run left it as it was
    table = subprocess.run(["sfdisk", "--dump", loop.path], capture_output=True, text=True, check=True).stdout
    assert f"size={grown}," in table.replace(" ", "")


@pytest.mark.skipif(not has_cap_sys_resource(), reason="online ext4 resize needs CAP_SYS_RESOURCE")
def test_grow_rootfs_grows_the_mounted_ext4_root_to_fill_the_grown_partition(
        debian_image: Path, images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE + 32 * MiB)
    dd(debian_image, loop)
    task = write_task(images, {"doc": "grow", "steps": [{"name": "grow", "uses": "bty.grow_rootfs"}]})

    tune(loop, images, task)

    with target_root(partition_device(loop, 2), tmp_path) as root:
        st = os.statvfs(root)
        assert st.f_blocks * st.f_frsize > IMAGE_SIZE


@pytest.mark.skipif(has_cap_sys_resource(), reason="only a flasher without CAP_SYS_RESOURCE is refused")
def test_grow_rootfs_without_cap_sys_resource_fails_saying_what_is_missing(
        debian_image: Path, images: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE + 32 * MiB)
    dd(debian_image, loop)
    task = write_task(images, {"doc": "grow", "steps": [{"name": "grow", "uses": "bty.grow_rootfs"}]})

    with pytest.raises(TuneError, match=r"'grow' \(bty.grow_rootfs\) failed: resize2fs .* needs CAP_SYS_RESOURCE"):
        tune(loop, images, task)
    assert mounted_from(loop) == []


# -- the runner --------------------------------------------------------------------------------------


def test_the_cijoe_runner_finds_the_bty_scripts_whatever_the_working_directory(tmp_path: Path) -> None:
    from bty_live.tune.cijoe_run import RUNNER_MODULE

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-P", "-m", RUNNER_MODULE, str(elsewhere), "--resources"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, check=True).stdout
    assert "ident: bty.hostname" in out and "ident: bty.firstboot" in out


# -- choosing the root, without a disk ----------------------------------------------------------------


ROOT_X86 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
ROOT_ARM64 = "b921b045-1df0-41c3-af44-4c6f280d3fae"
USR_X86 = "8484680c-9521-48c6-9c11-b0720656f69e"
ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"


def layout(*parts: tuple[int, str, str, str | None, str | None]) -> DiskLayout:
    """Partitions as (number, type GUID, GPT name, fstype, label)."""
    from bty_live.image.partitions import PartitionTable, gpt_type_name

    infos = tuple(PartitionInfo(n, n * MiB, MiB, t, gpt_type_name(t), name, f"/dev/sdx{n}",
                                FsInfo(fs, label, usage="crypto" if fs == "crypto_LUKS" else "filesystem"))
                  for n, t, name, fs, label in parts)
    return DiskLayout("/dev/sdx", "/dev/sdx", 100 * MiB, 512, PartitionTable("gpt", 512, ()), infos)


def test_a_discoverable_root_type_wins_over_names_and_labels() -> None:
    choice = choose_root(layout((1, LINUX_DATA.lower(), "root", "ext4", "rootfs"), (2, ROOT_X86, "sys", "xfs", None)),
                         arch="x86_64")
    assert choice == RootChoice(2, "/dev/sdx2", "xfs", "type")


def test_the_root_for_this_machines_architecture_comes_first() -> None:
    disk = layout((1, ROOT_ARM64, "", "ext4", None), (2, ROOT_X86, "", "ext4", None))
    assert isinstance(choice := choose_root(disk, arch="x86_64"), RootChoice) and choice.number == 2
    assert isinstance(choice := choose_root(disk, arch="aarch64"), RootChoice) and choice.number == 1


def test_a_discoverable_usr_partition_is_mounted_with_the_root() -> None:
    choice = choose_root(layout((1, ROOT_X86, "", "ext4", None), (2, USR_X86, "", "erofs", None),
                                (3, USR_X86, "", "ext4", None)), arch="x86_64")
    assert isinstance(choice, RootChoice) and choice.usr_device == "/dev/sdx3"


def test_the_only_linux_filesystem_is_the_root_when_nothing_marks_one() -> None:
    choice = choose_root(layout((1, ESP, "", "vfat", "EFI"), (2, LINUX_DATA.lower(), "", "ext4", None)))
    assert isinstance(choice, RootChoice) and choice.found_by == "only Linux filesystem"


@pytest.mark.parametrize(("parts", "note"), [
    ([(1, ESP, "", "vfat", None), (2, MICROSOFT_BASIC_DATA.lower(), "", "ntfs", None)], "no Linux root filesystem"),
    ([(1, ROOT_X86, "", "crypto_LUKS", None)], "is encrypted (crypto_LUKS)"),
    ([(1, LINUX_DATA.lower(), "", "ext4", None), (2, LINUX_DATA.lower(), "", "ext4", None)],
     "none is marked as root"),
    ([(1, ROOT_X86, "", None, None)], "holds no filesystem"),
], ids=["windows", "encrypted", "two unmarked", "empty root"])
def test_disks_without_a_usable_root_say_why(parts: list[tuple[int, str, str, str | None, str | None]],
                                             note: str) -> None:
    choice = choose_root(layout(*parts))
    assert isinstance(choice, NoRoot) and note in choice.note


def test_an_unpartitioned_disk_holding_ext4_is_its_own_root() -> None:
    disk = DiskLayout("/dev/sdx", "/dev/sdx", MiB, 512, None, (), FsInfo("ext4"))
    assert choose_root(disk) == RootChoice(0, "/dev/sdx", "ext4", "whole disk")


# -- tasks and configs ---------------------------------------------------------------------------------


def test_load_task_reads_the_steps_digest_and_the_linux_root_flag(images: Path) -> None:
    path = write_task(images, {"doc": "d", "config": {"bty": {"needs_linux_root": False}},
                               "steps": [{"name": "a", "uses": "bty.hostname"}, {"name": "b", "run": "true"}]})
    task = load_task(path)
    assert [(s.name, s.uses) for s in task.steps] == [("a", "bty.hostname"), ("b", "core.cmdrunner")]
    assert not task.needs_linux_root and len(task.digest) == 64


@pytest.mark.parametrize(("content", "message"), [
    ("steps: []\n", "has no steps"),
    ("- just a list\n", "top level must be a mapping"),
    ("steps:\n- uses: bty.hostname\n", "step 1 has no name"),
    ("steps: [unclosed\n", "is not valid YAML"),
])
def test_broken_tasks_are_refused_with_the_reason(images: Path, content: str, message: str) -> None:
    path = images / "broken.yaml"
    path.write_text(content)
    with pytest.raises(TuneError, match=message):
        load_task(path)


def test_choose_task_prefers_the_command_line_then_the_manifest(images: Path, tmp_path: Path) -> None:
    write_task(images, TASK, "manifest.yaml")
    write_task(images, TASK, "other.yaml")
    (images / "manifest.config.toml").write_text("[site]\nx = 1\n")
    manifest = Manifest(name="demo", size=1, blake3="ab" * 32,
                        tune=TuneSpec(task="manifest.yaml", config="manifest.config.toml"))

    from_manifest = choose_task(None, manifest, images)
    assert from_manifest is not None and from_manifest.task == images / "manifest.yaml"
    assert from_manifest.config == images / "manifest.config.toml" and from_manifest.source == "manifest"
    override = choose_task("other.yaml", manifest, images)
    assert override is not None and override.task == images / "other.yaml" and override.config is None
    assert choose_task("off", manifest, images) is None
    assert choose_task(None, None, images) is None
    with pytest.raises(UsageError, match="tuning task nope.yaml does not exist"):
        choose_task("nope.yaml", manifest, images)
    with pytest.raises(ImageError, match="names tuning task gone.yaml, which is not in"):
        choose_task(None, Manifest(name="demo", size=1, blake3="ab" * 32, tune=TuneSpec(task="gone.yaml")), images)


def test_the_config_tells_scripts_everything_with_unknowns_as_empty_strings_and_bty_facts_winning(
        tmp_path: Path) -> None:
    request = TuneRequest(task=tmp_path / "t.yaml", disk="/dev/sdx", image_name="demo", disk_serial="D1")
    disk = layout((1, ROOT_X86, "root", "ext4", "rootfs"))
    choice = RootChoice(1, "/dev/sdx1", "ext4", "type")
    unknown = MachineIdentity(None, None, None, None, None)
    facts = build_config(request, unknown, disk, choice, Path("/run/bty-tune/root"), "r1", "2026-01-01T00:00:00+00:00")
    image_config = {"cijoe": {"task": {"fail_fast": False}}, "bty": {"target": {"root": "/"}}, "site": {"ntp": "x"}}

    written = write_config(tmp_path / "c.toml", image_config, facts)

    assert tomllib.loads((tmp_path / "c.toml").read_text()) == written
    assert written["cijoe"]["task"]["fail_fast"] is False  # the image may change CIJOE's settings
    assert written["site"] == {"ntp": "x"}
    target = written["bty"]["target"]
    assert target["root"] == "/run/bty-tune/root"  # ...but not where the target is
    assert (target["disk_serial"], target["disk_model"], target["root_partition"]) == ("D1", "", "/dev/sdx1")
    assert written["bty"]["machine"]["serial"] == "" and written["bty"]["machine"]["model"] == "unknown model"
    assert written["bty"]["image"]["blake3"] == ""
