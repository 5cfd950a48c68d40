"""`bty capture DISK -o OUT.img.zst` on real loop devices: the reference image of a disk is a
packed image whose manifest says what the disk holds, `bty flash` puts it back byte for byte,
--trim keeps a valid GPT, and a disk that could change while it is read is refused.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from bty_live.image.manifest import load_manifest
from bty_live.image.zstd_frames import PACKED_FRAME_SIZE, scan_content_size
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image, device_equals_file, read_device

IMAGE_SIZE = 64 * MiB
BTY = [sys.executable, "-m", "bty_live.cli"]


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "disk.img", IMAGE_SIZE)


def bty(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BTY, *args], capture_output=True, text=True, timeout=300)


def capture(disk: LoopDevice, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return bty("capture", disk.path, "-o", str(out), "--yes", *extra)


def disk_holding(make_loop: Callable[..., LoopDevice], image: Path, size: int | None = None) -> LoopDevice:
    """A loop device of `size` bytes (the image's by default) with the image written at its start."""
    loop = make_loop(size or image.stat().st_size)
    subprocess.run(["dd", f"if={image}", f"of={loop.path}", "bs=4M", "oflag=direct", "status=none"], check=True)
    return loop


def device_blake3(path: str, size: int) -> str:
    return blake3.blake3(read_device(path, 0, size)).hexdigest()


def decompress(image: Path, out: Path) -> Path:
    subprocess.run(["zstd", "-q", "-d", "-f", str(image), "-o", str(out)], check=True)
    return out


def gpt_verify(path: str | Path) -> tuple[str, str]:
    """sgdisk -v and sfdisk --verify output; each tool's own verdict is checked by the caller."""
    sgdisk = subprocess.run(["sgdisk", "-v", str(path)], capture_output=True, text=True)
    sfdisk = subprocess.run(["sfdisk", "--verify", str(path)], capture_output=True, text=True)
    assert sgdisk.returncode == 0 and sfdisk.returncode == 0, sgdisk.stdout + sfdisk.stdout + sfdisk.stderr
    return sgdisk.stdout, sfdisk.stdout


def last_json(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    last: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return last


# -- what a capture is ----------------------------------------------------------------------------


def test_a_capture_flashed_onto_another_disk_gives_the_disk_back_byte_for_byte(
        tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    source = disk_holding(make_loop, raw_image)
    out = tmp_path / "reference.img.zst"

    done = capture(source, out)

    assert done.returncode == 0, done.stderr
    manifest = load_manifest(out)
    assert manifest is not None
    assert manifest.size == IMAGE_SIZE
    assert manifest.blake3 == device_blake3(source.path, IMAGE_SIZE)  # every byte of the disk, as it reads
    assert manifest.name == "reference" and manifest.arch == "x86_64" and manifest.os == "linux"
    captured = manifest.extra["captured"]
    assert captured["disk"] == source.path and captured["partition_table"] == "gpt"
    assert [(p["name"], p.get("fstype")) for p in captured["partitions"]] == [("esp", None), ("root", "ext4")]

    target = make_loop(IMAGE_SIZE)  # same size: no GPT fix-up changes the bytes
    flashed = bty("flash", str(out), target.path, "--yes")
    assert flashed.returncode == 0, flashed.stderr
    assert "stream digest: match; read-back: match" in flashed.stdout
    assert device_equals_file(target.path, raw_image)


def test_the_capture_is_packed_sized_frames_that_zstd_accepts(
        tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    size = 101 * MiB  # not a multiple of the frame size
    source = disk_holding(make_loop, raw_image, size)
    out = tmp_path / "packed.img.zst"

    assert capture(source, out).returncode == 0

    with open(out, "rb") as f:
        summary = scan_content_size(f, record=True)
    assert summary.complete and summary.index is not None
    sizes = [frame.content_size for frame in summary.index]
    assert sizes == [PACKED_FRAME_SIZE] * (size // PACKED_FRAME_SIZE) + [size % PACKED_FRAME_SIZE]
    assert subprocess.run(["zstd", "-t", "-q", str(out)], capture_output=True).returncode == 0
    assert decompress(out, tmp_path / "raw.img").read_bytes()[:IMAGE_SIZE] == raw_image.read_bytes()


def test_a_disk_of_zeros_captures_to_a_tiny_file(tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    blank = make_loop(1024 * MiB)
    out = tmp_path / "blank.img.zst"

    done = capture(blank, out, "--json")

    assert done.returncode == 0, done.stderr
    receipt = last_json(done)["receipt"]
    assert isinstance(receipt, dict)
    assert receipt["result"] == "ok" and receipt["image_size"] == 1024 * MiB
    assert receipt["zero_bytes"] == 1024 * MiB and receipt["frames"] == 1024 * MiB // PACKED_FRAME_SIZE
    assert out.stat().st_size < 64 * 1024  # frames of zeros, tens of bytes each, and their seek table
    assert receipt["blake3"] == blake3.blake3(bytes(1024 * MiB)).hexdigest()
    assert json.loads(Path(str(receipt["saved_to"])).read_text())["output"] == str(out)


def test_the_manifest_names_the_os_its_root_filesystem_says(tmp_path: Path,
                                                             make_loop: Callable[..., LoopDevice]) -> None:
    tree = tmp_path / "tree"
    (tree / "usr" / "lib").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "usr" / "lib" / "os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\nVERSION_ID="12"\n')
    (tree / "etc" / "os-release").symlink_to("../usr/lib/os-release")
    disk = make_loop(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), disk.path], check=True)
    out = tmp_path / "debian.img.zst"

    assert capture(disk, out, "--description", "a Debian disk").returncode == 0

    manifest = load_manifest(out)
    assert manifest is not None and manifest.os == "debian-12" and manifest.description == "a Debian disk"


def test_a_disk_is_chosen_by_selector_as_for_a_flash(tmp_path: Path, raw_image: Path,
                                                      make_loop: Callable[..., LoopDevice]) -> None:
    source = disk_holding(make_loop, raw_image)
    out = tmp_path / "selected.img.zst"

    done = bty("capture", f"path={source.path},tran=loop", "-o", str(out), "--yes")

    assert done.returncode == 0, done.stderr
    manifest = load_manifest(out)
    assert manifest is not None and manifest.extra["captured"]["disk"] == source.path


def test_progress_is_reported_in_a_capture_phase_with_rate(tmp_path: Path, raw_image: Path,
                                                           make_loop: Callable[..., LoopDevice]) -> None:
    source = disk_holding(make_loop, raw_image)

    done = capture(source, tmp_path / "events.img.zst", "--json")

    events = [json.loads(line) for line in done.stdout.splitlines()[:-1]]
    phases = [(e["phase"], e["kind"]) for e in events]
    assert ("capture", "start") in phases and ("capture", "end") in phases and phases[-1] == ("done", "end")
    end = next(e for e in events if e["phase"] == "capture" and e["kind"] == "end")
    assert end["bytes_out"] == end["total"] == IMAGE_SIZE and end["rate"] > 0 and end["digest"]


# -- --trim ---------------------------------------------------------------------------------------


def test_trim_stops_after_the_last_partition_and_keeps_a_valid_gpt_that_a_flash_then_grows(
        tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    source = disk_holding(make_loop, raw_image, 256 * MiB)  # partitions end at 63 MiB of 256
    subprocess.run(["sgdisk", "-e", source.path], check=True, capture_output=True)  # backup GPT to the disk's end
    subprocess.run(["dd", "if=/dev/zero", f"of={source.path}", "bs=1M", "count=1", f"seek={IMAGE_SIZE // MiB - 1}",
                    "oflag=direct", "status=none"], check=True)  # and no trace of the old one
    assert read_device(source.path, 256 * MiB - 512, 8) == b"EFI PART"
    assert read_device(source.path, IMAGE_SIZE - 512, 8) != b"EFI PART"
    out = tmp_path / "trimmed.img.zst"

    done = capture(source, out, "--trim")

    assert done.returncode == 0, done.stderr
    manifest = load_manifest(out)
    assert manifest is not None and manifest.size == IMAGE_SIZE  # 63 MiB + backup GPT, to a whole MiB
    raw = decompress(out, tmp_path / "trimmed.img")
    assert raw.stat().st_size == IMAGE_SIZE
    sgdisk, _ = gpt_verify(raw)
    assert "No problems found" in sgdisk
    assert raw.read_bytes()[MiB : 63 * MiB] == read_device(source.path, MiB, 62 * MiB)  # the partitions

    target = make_loop(128 * MiB)
    flashed = bty("flash", str(out), target.path, "--yes")
    assert flashed.returncode == 0, flashed.stderr
    sgdisk, _ = gpt_verify(target.path)
    assert "No problems found" in sgdisk
    assert read_device(target.path, MiB, 62 * MiB) == read_device(source.path, MiB, 62 * MiB)


def test_trim_of_a_4096_byte_sector_gpt_disk_puts_the_backup_in_4096_byte_sectors(
        tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    source = make_loop(128 * MiB, sector_size=4096)
    subprocess.run(["sfdisk", "-q", source.path], input=b"label: gpt\nstart=256, size=5120, type=linux\n",
                   check=True, capture_output=True)  # 1 MiB .. 21 MiB
    out = tmp_path / "4k.img.zst"

    assert capture(source, out, "--trim").returncode == 0

    raw = decompress(out, tmp_path / "4k.img")
    assert raw.stat().st_size == 22 * MiB  # 21 MiB + 4 entry sectors + the header, to a whole MiB
    attached = subprocess.run(["losetup", "-f", "--show", "-r", "--sector-size", "4096", str(raw)],
                              check=True, capture_output=True, text=True).stdout.strip()
    try:
        sgdisk, _ = gpt_verify(attached)
    finally:
        subprocess.run(["losetup", "-d", attached], check=False)
    assert "No problems found" in sgdisk


def test_trim_of_an_mbr_disk_ends_with_its_extended_partition(
        tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    source = make_loop(128 * MiB)
    table = ("label: dos\nstart=2048, size=8192, type=83\nstart=20480, size=61440, type=5\n"
             "start=22528, size=8192, type=83\nstart=32768, size=8192, type=83\n")  # extended: 10..40 MiB
    subprocess.run(["sfdisk", "-q", source.path], input=table.encode(), check=True, capture_output=True)
    out = tmp_path / "mbr.img.zst"

    assert capture(source, out, "--trim").returncode == 0

    raw = decompress(out, tmp_path / "mbr.img")
    assert raw.stat().st_size == 40 * MiB
    listed = json.loads(subprocess.run(["sfdisk", "-J", str(raw)], check=True, capture_output=True,
                                       text=True).stdout)["partitiontable"]["partitions"]
    assert [p["node"][-1] for p in listed] == ["1", "2", "5", "6"]


def test_trim_is_refused_without_a_partition_table(tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    blank = make_loop(64 * MiB)
    out = tmp_path / "t.img.zst"

    done = capture(blank, out, "--trim")

    assert done.returncode == 2
    assert f"--trim needs a partition table to know where the data ends, and {blank.path} has none" in done.stderr
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


# -- refusals --------------------------------------------------------------------------------------


@pytest.fixture
def mounted_ext4(tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> tuple[LoopDevice, Path]:
    loop = make_loop(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", loop.path], check=True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(["mount", loop.path, str(mountpoint)], check=True)
    return loop, mountpoint  # make_loop unmounts it at the end


def test_a_mounted_disk_is_refused_naming_its_mount_point_and_nothing_is_written(
        tmp_path: Path, mounted_ext4: tuple[LoopDevice, Path]) -> None:
    loop, mountpoint = mounted_ext4
    out = tmp_path / "m.img.zst"

    done = capture(loop, out, "--json")

    assert done.returncode == 7
    line = done.stderr.strip().splitlines()[-1]
    assert line == (f"bty: refusing to capture {loop.path}: has {mountpoint} mounted (from {loop.name}); unmount "
                    "it first, a mounted filesystem changes while it is read")
    error = last_json(done)["error"]
    assert isinstance(error, dict) and error["kind"] == "refused" and error["exit_code"] == 7
    assert list(tmp_path.glob("m.img.zst*")) == []


def test_an_output_on_the_captured_disk_is_refused(mounted_ext4: tuple[LoopDevice, Path]) -> None:
    loop, mountpoint = mounted_ext4
    out = mountpoint / "self.img.zst"

    done = capture(loop, out)

    assert done.returncode == 7
    assert f"holds the output file {out} (its filesystem is on this disk): write the capture to another disk" \
        in done.stderr
    assert list(mountpoint.glob("self.img.zst*")) == []


def test_a_loop_device_is_not_captured_into_its_own_backing_file(
        tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE, name="own.img.zst")
    before = blake3.blake3(loop.backing_file.read_bytes()).hexdigest()

    done = capture(loop, loop.backing_file, "--force")

    assert done.returncode == 7
    assert f"holds the output file {loop.backing_file} (its backing file {loop.backing_file} is it)" in done.stderr
    assert blake3.blake3(loop.backing_file.read_bytes()).hexdigest() == before


def test_an_existing_output_is_kept_unless_forced(tmp_path: Path, raw_image: Path,
                                                  make_loop: Callable[..., LoopDevice]) -> None:
    source = disk_holding(make_loop, raw_image)
    out = tmp_path / "exists.img.zst"
    out.write_bytes(b"an older capture")

    done = capture(source, out)

    assert done.returncode == 2
    assert f"{out} exists; pass --force to replace it" in done.stderr
    assert out.read_bytes() == b"an older capture"
    assert capture(source, out, "--force").returncode == 0
    manifest = load_manifest(out)
    assert manifest is not None and manifest.blake3 == device_blake3(source.path, IMAGE_SIZE)


# -- stops and the exclusive hold ---------------------------------------------------------------------


def start_slow_capture(source: LoopDevice, out: Path) -> subprocess.Popen[str]:
    """A capture at --level 19 of random data (seconds a frame), returned once it writes frames."""
    proc = subprocess.Popen([*BTY, "capture", source.path, "-o", str(out), "--yes", "--json", "--level", "19"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("phase") == "capture" and event.get("kind") == "progress" and event["bytes_out"] > 0:
            return proc
    raise AssertionError(f"the capture ended before it was writing: {proc.communicate()[1]}")


def test_nobody_can_mount_the_disk_while_it_is_captured(tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    source = make_loop(256 * MiB)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "random.bin").write_bytes(random_bytes(32 * MiB))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), source.path], check=True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    proc = start_slow_capture(source, tmp_path / "held.img.zst")
    try:
        mounted = subprocess.run(["mount", "-o", "ro", source.path, str(mountpoint)], capture_output=True, text=True)
        assert mounted.returncode != 0 and "busy" in mounted.stderr + mounted.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert subprocess.run(["mount", "-o", "ro", source.path, str(mountpoint)]).returncode == 0  # released
    subprocess.run(["umount", str(mountpoint)], check=True)


def random_bytes(size: int) -> bytes:
    return random.Random(12).randbytes(size)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_mid_capture_leaves_neither_the_image_nor_the_partial_file(
        sig: signal.Signals, tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    source = disk_holding(make_loop, raw_image, 256 * MiB)
    subprocess.run(["dd", "if=/dev/urandom", f"of={source.path}", "bs=4M", "count=8", "seek=32", "oflag=direct",
                    "status=none"], check=True)  # 32 MiB of random data: seconds at --level 19
    out = tmp_path / "stopped.img.zst"
    proc = start_slow_capture(source, out)
    assert out.with_name(out.name + ".partial").exists()  # frames are being written to it

    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=60)

    assert proc.returncode == 128 + sig, err
    line = err.strip().splitlines()[-1]
    assert sig.name in line or "Ctrl-C" in line
    assert "removed stopped.img.zst.partial" in line and "Traceback" not in err
    assert list(tmp_path.glob("stopped.img.zst*")) == []
    receipt = json.loads(rest.splitlines()[-1])["receipt"]
    assert receipt["result"] == "failed" and receipt["error"]
