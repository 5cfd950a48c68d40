"""After a flash the kernel knows the new partitions on every kind of disk, loop devices
included: BLKRRPART adds no /dev/loopNpM nodes on a loop device attached without partscan,
so BlockTarget.reread_partitions also updates them one by one (partx -u, BLKPG ioctls)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bty_live import cli
from bty_live.flash.target import BlockTarget
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image, run

SIZE = 64 * MiB


def partition_nodes(loop: LoopDevice) -> list[str]:
    return sorted(p.name for p in Path("/dev").glob(f"{loop.name}p*"))


def test_after_flashing_a_gpt_image_onto_a_loop_device_its_partition_nodes_exist(
        tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    image = build_gpt_image(images / "gpt.img", SIZE)
    loop = make_loop(SIZE)
    assert partition_nodes(loop) == []
    assert cli.main(["flash", str(image), loop.path, "--yes", "--images", str(images)]) == 0
    assert Path(f"{loop.path}p1").is_block_device() and Path(f"{loop.path}p2").is_block_device()


def test_rereading_a_wiped_loop_device_drops_its_stale_partition_nodes(
        tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(SIZE)
    run("sfdisk", "-q", loop.path, input=b"label: gpt\n,16M\n,\n")
    run("partx", "-u", loop.path)
    assert partition_nodes(loop) == [f"{loop.name}p1", f"{loop.name}p2"]
    target = BlockTarget.open(loop.path)
    try:
        target.wipe_signatures()
        assert target.reread_partitions()
    finally:
        target.close()
    assert partition_nodes(loop) == []
