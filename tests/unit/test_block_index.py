"""The block index: a blake3 per 8 MiB block of the decompressed image, carried by the manifest,
and which images can be flashed differentially with it (the plan's reason when not)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import blake3
import pytest

from bty_live import cli
from bty_live.errors import ImageError, SourceCorruptError
from bty_live.flash.differential import PIECE, _differing_runs, blocks_holding
from bty_live.flash.plan import FlashOptions, why_not_differential
from bty_live.image.block_index import BLOCK_SIZE, BlockIndex, BlockIndexer
from bty_live.image.catalog import describe_image
from bty_live.image.manifest import load_manifest, parse_manifest, write_manifest
from bty_live.image.seek_table import FOOTER_SIZE, SeekTableError, parse_seek_table, table_size
from bty_live.image.source import load_image_source
from bty_live.image.zstd_frames import scan_content_size

MiB = 1 << 20
BLOCK = BLOCK_SIZE


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2.5 blocks: a data block, an all-zero block, and a short last block with data at its end."""
    path = tmp_path_factory.mktemp("raw") / "disk.img"
    data = bytearray(2 * BLOCK + BLOCK // 2)
    data[: BLOCK] = os.urandom(BLOCK)
    data[-4096:] = os.urandom(4096)
    path.write_bytes(data)
    return path


def test_the_index_is_a_digest_per_block_and_none_for_zero_blocks_however_the_stream_is_cut(raw: Path) -> None:
    data = raw.read_bytes()
    expected = (blake3.blake3(data[:BLOCK]).hexdigest(16), None, blake3.blake3(data[2 * BLOCK :]).hexdigest(16))
    for step in (BLOCK, MiB + 17, len(data)):
        indexer = BlockIndexer()
        for at in range(0, len(data), step):
            indexer.feed(data[at : at + step])
        assert indexer.finish() == BlockIndex(BLOCK, expected)


def test_images_add_and_pack_write_the_index_and_the_manifest_keeps_it(raw: Path, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(raw.read_bytes())
    assert cli.main(["images", "add", str(image)]) == 0
    assert cli.main(["images", "pack", str(image), "-o", str(tmp_path / "packed.img.zst")]) == 0
    added, packed = load_manifest(image), load_manifest(tmp_path / "packed.img.zst")
    assert added is not None and packed is not None and added.index is not None
    assert added.index == packed.index and added.index.digests[1] is None and len(added.index) == 3
    assert '"zero"' in (tmp_path / "packed.img.zst.toml").read_text()
    assert parse_manifest(added.to_toml(), "again.toml") == added


@pytest.mark.parametrize(("index", "why"), [
    ("block_size = 1000\nblocks = [\"zero\"]", "block_size must be a positive multiple of 4096"),
    ("block_size = 8388608\nblocks = [\"nope\"]", "block 0 is neither"),
])
def test_a_broken_index_names_the_manifest_the_key_and_the_fix(index: str, why: str) -> None:
    text = f'name = "x"\nsize = 4096\nblake3 = "{"0" * 64}"\n[index]\n{index}\n'
    with pytest.raises(ImageError, match=rf"manifest x.toml: index .*{why}.*rerun `bty images add`"):
        parse_manifest(text, "x.toml")


def test_only_packed_zstd_and_raw_images_with_an_index_are_flashed_differentially(raw: Path, tmp_path: Path) -> None:
    def reason(path: Path, options: FlashOptions | None = None) -> str | None:
        return why_not_differential(load_image_source(describe_image(path)), options or FlashOptions())

    plain = tmp_path / "plain.img"
    plain.write_bytes(raw.read_bytes())
    assert reason(plain) == "no manifest"
    assert cli.main(["images", "add", str(plain)]) == 0
    assert reason(plain) is None
    assert reason(plain, FlashOptions(differential=False)) == "--full"
    subprocess.run(["zstd", "-q", "-3", str(plain), "-o", str(tmp_path / "one.img.zst")], check=True)
    subprocess.run(["xz", "-0", "-k", str(plain)], check=True)
    for compressed in (tmp_path / "one.img.zst", tmp_path / "plain.img.xz"):
        assert cli.main(["images", "add", str(compressed)]) == 0
        assert "`bty images pack`" in (reason(compressed) or "")
    manifest = load_manifest(plain)
    assert manifest is not None
    write_manifest(plain, replace(manifest, index=None))
    assert "`bty images add` writes one" in (reason(plain) or "")


def test_only_the_pieces_that_differ_are_written_and_the_held_ranges_always() -> None:
    image = bytearray(4 * PIECE)
    disk = bytearray(image)
    disk[PIECE + 5] = 1  # piece 1
    disk[2 * PIECE] = 1  # piece 2: merged with 1
    base = 10 * PIECE
    assert _differing_runs(memoryview(image), memoryview(disk), base, ()) == [(base + PIECE, base + 3 * PIECE)]
    held = ((base + 3 * PIECE, base + 3 * PIECE + 512),)  # a held range inside piece 3
    assert _differing_runs(memoryview(image), memoryview(disk), base, held) == [(base + PIECE, base + 4 * PIECE)]
    assert blocks_holding([(0, MiB), (20 * MiB - MiB, 20 * MiB)], 8 * MiB) == {0, 2}
    assert blocks_holding([(BLOCK - 512, BLOCK + 512)], BLOCK) == {0, 1}


def test_a_packed_image_ends_with_a_seek_table_that_zstd_passes_over(raw: Path, tmp_path: Path) -> None:
    packed = tmp_path / "packed.img.zst"
    assert cli.main(["images", "pack", str(raw), "-o", str(packed)]) == 0
    data = packed.read_bytes()
    count, size = table_size(data[-FOOTER_SIZE:])
    with open(packed, "rb") as f:
        scanned = scan_content_size(f, record=True)
    assert count == 3 and parse_seek_table(data[-size:]) == scanned.index and scanned.complete
    assert subprocess.run(["zstd", "-dc", str(packed)], capture_output=True, check=True).stdout == raw.read_bytes()
    with pytest.raises(SeekTableError, match="does not end with a zstd seek table"):
        table_size(raw.read_bytes()[-FOOTER_SIZE:])


def test_a_packed_image_is_planned_from_its_seek_table_and_a_cut_or_forged_one_from_a_walk(
        raw: Path, tmp_path: Path) -> None:
    packed = tmp_path / "packed.img.zst"
    assert cli.main(["images", "pack", str(raw), "-o", str(packed)]) == 0
    (tmp_path / "packed.img.zst.toml").unlink()  # the size must come from the file itself
    with open(packed, "rb") as f:
        walked = scan_content_size(f, record=True).index

    image = load_image_source(describe_image(packed))
    assert image.size_source == "zstd seek table"
    assert list(image.frames or ()) == walked and image.size == raw.stat().st_size

    data = packed.read_bytes()
    _, table = table_size(data[-FOOTER_SIZE:])
    forged = bytearray(data)
    forged[-table + 8: -table + 12] = (1).to_bytes(4, "little")  # "frame 0 is 1 byte": they no longer fill the file
    packed.write_bytes(bytes(forged))
    image = load_image_source(describe_image(packed))
    assert image.size_source == "zstd frame headers" and list(image.frames or ()) == walked

    packed.write_bytes(data[: len(data) - table - 1000])  # cut inside the last frame
    with pytest.raises(SourceCorruptError, match="packed.img.zst is truncated: its last zstd frame is cut short"):
        load_image_source(describe_image(packed))
