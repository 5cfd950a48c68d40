"""bmap parsing and range verification against real `bmaptool create` output (bmap-tools 3.6),
plus hand-made files in the older 1.x formats bmaptool still reads."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from bty_live.errors import DigestMismatchError, ImageError
from bty_live.image.bmap import Bmap, BmapRangeVerifier, find_bmap_sidecar, load_bmap
from bty_live.image.formats import Compression, ImageReader

BLOCK = 4096
#: image size deliberately not a multiple of the block size: the last range is cut at the end
IMAGE_SIZE = 8 * (1 << 20) + 1000
#: (offset, bytes) written into the otherwise sparse image
DATA = [
    (100_000, b"hello"),
    (3_000_000, bytes(range(256)) * 280),  # 71,680 bytes across blocks 732-750
    (IMAGE_SIZE - 700, b"tail" * 100),  # in the last, partial block
]


def expected_blocks() -> list[tuple[int, int]]:
    """(first, last) block of each written stretch; the stretches are far apart."""
    return [(offset // BLOCK, (offset + len(data) - 1) // BLOCK) for offset, data in DATA]


@pytest.fixture
def sparse_image(tmp_path: Path) -> Path:
    image = tmp_path / "demo.img"
    with open(image, "wb") as f:
        f.truncate(IMAGE_SIZE)
        for offset, data in DATA:
            f.seek(offset)
            f.write(data)
    return image


def bmaptool_create(image: Path, *options: str) -> Path:
    bmap = image.with_name(image.name + ".bmap")
    subprocess.run(["bmaptool", "create", *options, "-o", str(bmap), str(image)], check=True,
                   capture_output=True)
    return bmap


@pytest.fixture
def real_bmap(sparse_image: Path) -> Path:
    return bmaptool_create(sparse_image)


def feed_file(verifier: BmapRangeVerifier, image: Path, chunk: int = 65_537) -> None:
    """Feed in odd-sized chunks so ranges start and end inside chunks."""
    data = memoryview(image.read_bytes())
    for offset in range(0, len(data), chunk):
        verifier.feed(offset, data[offset : offset + chunk])
    verifier.finish()


# --- parsing real bmaptool output ---------------------------------------------------------


def test_real_bmaptool_output_parses_into_its_header_fields(real_bmap: Path) -> None:
    bmap = load_bmap(real_bmap)
    assert bmap.version.startswith("2.")
    assert bmap.image_size == IMAGE_SIZE
    assert bmap.block_size == BLOCK
    assert bmap.blocks_count == -(-IMAGE_SIZE // BLOCK)
    assert bmap.checksum_type == "sha256"
    assert bmap.source == "demo.img.bmap"


def test_real_bmaptool_ranges_are_the_blocks_that_hold_data(real_bmap: Path) -> None:
    bmap = load_bmap(real_bmap)
    assert [(r.first_block, r.last_block) for r in bmap.ranges] == expected_blocks()
    assert bmap.mapped_blocks_count == sum(last - first + 1 for first, last in expected_blocks())
    assert all(r.checksum is not None and len(r.checksum) == 64 for r in bmap.ranges)


def test_byte_ranges_are_block_aligned_and_the_last_is_cut_at_the_image_end(real_bmap: Path) -> None:
    bmap = load_bmap(real_bmap)
    ranges = bmap.byte_ranges()
    assert ranges[0] == (24 * BLOCK, 25 * BLOCK)
    assert ranges[-1] == ((IMAGE_SIZE // BLOCK) * BLOCK, IMAGE_SIZE)
    assert bmap.mapped_bytes == sum(end - start for start, end in ranges)
    assert bmap.mapped_bytes == bmap.mapped_blocks_count * BLOCK - (BLOCK - IMAGE_SIZE % BLOCK)


def test_is_mapped_is_true_when_any_byte_of_the_span_is_mapped(real_bmap: Path) -> None:
    bmap = load_bmap(real_bmap)
    first_start = 24 * BLOCK
    assert bmap.is_mapped(100_000, 5)
    assert bmap.is_mapped(first_start - 10, 11)  # last byte of the span is the range's first
    assert not bmap.is_mapped(first_start - 10, 10)
    assert not bmap.is_mapped(25 * BLOCK, BLOCK)  # right after the range
    assert not bmap.is_mapped(0, 0)
    assert bmap.is_mapped(0, IMAGE_SIZE)


def test_no_checksum_bmap_has_no_checksum_type_and_its_verifier_checks_nothing(sparse_image: Path) -> None:
    bmap = load_bmap(bmaptool_create(sparse_image, "--no-checksum"))
    assert bmap.checksum_type is None
    assert all(r.checksum is None for r in bmap.ranges)
    verifier = BmapRangeVerifier(bmap)
    feed_file(verifier, sparse_image)
    assert verifier.verified == 0


# --- verifying ----------------------------------------------------------------------------


def test_verifier_passes_on_the_data_bmaptool_hashed(sparse_image: Path, real_bmap: Path) -> None:
    verifier = BmapRangeVerifier(load_bmap(real_bmap), sparse_image.name)
    feed_file(verifier, sparse_image)
    assert verifier.verified == len(DATA)


def test_verifier_passes_when_only_the_mapped_ranges_are_fed(sparse_image: Path, real_bmap: Path) -> None:
    bmap = load_bmap(real_bmap)
    data = sparse_image.read_bytes()
    verifier = BmapRangeVerifier(bmap)
    for start, end in bmap.byte_ranges():
        verifier.feed(start, data[start:end])
    verifier.finish()
    assert verifier.verified == len(DATA)


def test_verifier_checks_a_compressed_image_streamed_through_image_reader(
    sparse_image: Path, real_bmap: Path
) -> None:
    subprocess.run(["zstd", "-q", "-1", str(sparse_image)], check=True)
    verifier = BmapRangeVerifier(load_bmap(real_bmap))
    buffer = memoryview(bytearray(1 << 20))
    with ImageReader(sparse_image.with_name("demo.img.zst"), Compression.ZSTD) as reader:
        offset = 0
        while n := reader.readinto(buffer):
            verifier.feed(offset, buffer[:n])
            offset += n
    verifier.finish()
    assert verifier.verified == len(DATA)


def test_a_flipped_byte_in_a_mapped_range_raises_digest_mismatch_naming_the_range(
    sparse_image: Path, real_bmap: Path
) -> None:
    with open(sparse_image, "r+b") as f:
        f.seek(3_000_000 + 5000)
        f.write(b"\xff")
    verifier = BmapRangeVerifier(load_bmap(real_bmap), sparse_image.name)
    with pytest.raises(DigestMismatchError, match=r"demo.img: blocks 732-749 .* bmap demo.img.bmap says"):
        feed_file(verifier, sparse_image)
    assert verifier.verified == 1  # the first range was fine


def test_a_flipped_byte_in_the_partial_last_block_is_caught(sparse_image: Path, real_bmap: Path) -> None:
    with open(sparse_image, "r+b") as f:
        f.seek(IMAGE_SIZE - 1)
        f.write(b"\x01")
    with pytest.raises(DigestMismatchError, match=r"blocks 2048-2048"):
        feed_file(BmapRangeVerifier(load_bmap(real_bmap)), sparse_image)


def test_finish_raises_when_the_stream_ends_before_the_last_range(
    sparse_image: Path, real_bmap: Path
) -> None:
    data = sparse_image.read_bytes()
    verifier = BmapRangeVerifier(load_bmap(real_bmap), "demo.img")
    verifier.feed(0, data[: 4 << 20])
    with pytest.raises(ImageError, match=r"demo.img ended at byte 4194304, before .* bmap range 2048"):
        verifier.finish()


def test_feeding_backwards_or_skipping_part_of_a_range_is_a_programming_error(
    sparse_image: Path, real_bmap: Path
) -> None:
    data = sparse_image.read_bytes()
    verifier = BmapRangeVerifier(load_bmap(real_bmap))
    verifier.feed(0, data[:200_000])
    with pytest.raises(ValueError, match="feed in order"):
        verifier.feed(100, data[100:200])
    skipping = BmapRangeVerifier(load_bmap(real_bmap))
    with pytest.raises(ValueError, match="were never fed"):
        skipping.feed(24 * BLOCK + 10, data[24 * BLOCK + 10 : 26 * BLOCK])


# --- older formats ------------------------------------------------------------------------


def v1_bmap(image: Path, version: str, *, file_sha1: bool, mapped_count: bool = True,
            single_block_ranges: bool = True) -> str:
    """A 1.x bmap as bmaptool 2.x wrote them: SHA1 in `sha1` attributes, no <ChecksumType>."""
    data = image.read_bytes()
    rows = []
    for first, last in expected_blocks():
        sha1 = hashlib.sha1(data[first * BLOCK : (last + 1) * BLOCK]).hexdigest()
        text = f"{first}" if first == last and single_block_ranges else f"{first}-{last}"
        rows.append(f'        <Range sha1="{sha1}"> {text} </Range>')
    mapped = sum(last - first + 1 for first, last in expected_blocks())
    lines = [
        '<?xml version="1.0" ?>',
        f'<bmap version="{version}">',
        f"    <ImageSize> {IMAGE_SIZE} </ImageSize>",
        f"    <BlockSize> {BLOCK} </BlockSize>",
        f"    <BlocksCount> {-(-IMAGE_SIZE // BLOCK)} </BlocksCount>",
        f"    <MappedBlocksCount> {mapped} </MappedBlocksCount>" if mapped_count else "",
        f"    <BmapFileSHA1> {'0' * 40} </BmapFileSHA1>" if file_sha1 else "",
        "    <BlockMap>",
        *rows,
        "    </BlockMap>",
        "</bmap>",
        "",
    ]
    text = "\n".join(lines)
    if file_sha1:  # bmaptool's rule: the SHA1 of the file with this very value zeroed
        text = text.replace("0" * 40, hashlib.sha1(text.encode()).hexdigest())
    return text


def test_hand_made_1_3_bmap_with_sha1_attributes_and_file_sha1_is_read_and_verifies(
    sparse_image: Path, tmp_path: Path
) -> None:
    path = tmp_path / "old.bmap"
    path.write_text(v1_bmap(sparse_image, "1.3", file_sha1=True))
    bmap = load_bmap(path)
    assert bmap.version == "1.3"
    assert bmap.checksum_type == "sha1"
    assert [(r.first_block, r.last_block) for r in bmap.ranges] == expected_blocks()
    verifier = BmapRangeVerifier(bmap)
    feed_file(verifier, sparse_image)
    assert verifier.verified == len(DATA)


def test_hand_made_1_3_bmap_catches_a_flipped_byte_with_sha1(sparse_image: Path, tmp_path: Path) -> None:
    path = tmp_path / "old.bmap"
    path.write_text(v1_bmap(sparse_image, "1.3", file_sha1=True))
    bmap = load_bmap(path)
    with open(sparse_image, "r+b") as f:
        f.seek(100_001)
        f.write(b"E")
    with pytest.raises(DigestMismatchError, match=r"blocks 24-24 .* sha1"):
        feed_file(BmapRangeVerifier(bmap), sparse_image)


def test_1_x_bmap_without_file_checksum_or_mapped_count_is_accepted(
    sparse_image: Path, tmp_path: Path
) -> None:
    path = tmp_path / "older.bmap"
    path.write_text(v1_bmap(sparse_image, "1.2", file_sha1=False, mapped_count=False))
    bmap = load_bmap(path)
    assert bmap.mapped_blocks_count == sum(last - first + 1 for first, last in expected_blocks())


def test_a_bmap_edited_after_creation_fails_its_own_checksum(real_bmap: Path) -> None:
    text = real_bmap.read_text()
    real_bmap.write_text(re.sub(r"> 24 </Range>", "> 23-24 </Range>", text))
    with pytest.raises(ImageError, match=r"demo.img.bmap fails its own <BmapFileChecksum> check"):
        load_bmap(real_bmap)


def test_a_1_3_bmap_edited_after_creation_fails_its_own_sha1(sparse_image: Path, tmp_path: Path) -> None:
    path = tmp_path / "old.bmap"
    path.write_text(v1_bmap(sparse_image, "1.3", file_sha1=True).replace("> 24 <", "> 25 <"))
    with pytest.raises(ImageError, match=r"fails its own <BmapFileSHA1> check"):
        load_bmap(path)


# --- malformed input ----------------------------------------------------------------------

GOOD_HEAD = "<ImageSize>8192</ImageSize><BlockSize>4096</BlockSize><BlocksCount>2</BlocksCount>"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("this is not xml", r"is not well-formed XML"),
        ('<bmap version="2.0"><ImageSize>1', r"is not well-formed XML"),
        ("<foo/>", r"is not a bmap file \(root element <foo>\)"),
        ('<?xml version="1.0"?><!DOCTYPE bmap [<!ENTITY a "aaaa">]><bmap version="2.0">&a;</bmap>',
         r"contains a DTD"),
        (f"<bmap>{GOOD_HEAD}<BlockMap/></bmap>", r"has no version attribute"),
        (f'<bmap version="two">{GOOD_HEAD}<BlockMap/></bmap>', r"has version 'two', not MAJOR.MINOR"),
        (f'<bmap version="3.0">{GOOD_HEAD}<BlockMap/></bmap>', r"format version 3.0, newer than"),
        ('<bmap version="2.0"><ImageSize>8192</ImageSize><BlocksCount>2</BlocksCount><BlockMap/></bmap>',
         r"has no <BlockSize>"),
        ('<bmap version="2.0"><ImageSize>lots</ImageSize><BlockSize>4096</BlockSize>'
         "<BlocksCount>2</BlocksCount><BlockMap/></bmap>", r"has <ImageSize> 'lots', not a number"),
        ('<bmap version="2.0"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize>'
         "<BlocksCount>5</BlocksCount><BlockMap/></bmap>", r"5 blocks of 4096 bytes do not make 8192"),
        (f'<bmap version="2.0">{GOOD_HEAD}</bmap>', r"has no <BlockMap>"),
        (f'<bmap version="2.0">{GOOD_HEAD}<BlockMap><Range>0-7</Range></BlockMap></bmap>',
         r"maps block 7, beyond its 2 blocks"),
        (f'<bmap version="2.0">{GOOD_HEAD}<BlockMap><Range>1</Range><Range>0</Range></BlockMap></bmap>',
         r"out of order or overlapping at block 0"),
        (f'<bmap version="2.0">{GOOD_HEAD}<BlockMap><Range>1-0</Range></BlockMap></bmap>',
         r"range '1-0' that ends before it starts"),
        (f'<bmap version="2.0">{GOOD_HEAD}<BlockMap><Range>a-b</Range></BlockMap></bmap>',
         r"range 'a-b' that is not FIRST-LAST"),
        (f'<bmap version="2.0">{GOOD_HEAD}<MappedBlocksCount>2</MappedBlocksCount>'
         "<BlockMap><Range>0</Range></BlockMap></bmap>",
         r"<MappedBlocksCount> says 2 but its ranges cover 1"),
        (f'<bmap version="2.0">{GOOD_HEAD}<ChecksumType>crc7</ChecksumType><BlockMap/></bmap>',
         r"checksum type 'crc7'"),
        (f'<bmap version="2.0">{GOOD_HEAD}<ChecksumType>sha256</ChecksumType>'
         '<BlockMap><Range chksum="abc">0</Range></BlockMap></bmap>', r"checksum that is not sha256 hex"),
    ],
)
def test_malformed_bmap_raises_image_error_naming_the_file_the_fault_and_the_fix(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "demo.img.bmap"
    path.write_text(content)
    fix = "; regenerate it with bmaptool create"
    with pytest.raises(ImageError, match=rf"^bmap demo.img.bmap .*{reason}.*{fix}$"):
        load_bmap(path)


def test_missing_bmap_file_raises_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        load_bmap(tmp_path / "nope.bmap")


def test_a_minimal_hand_written_2_0_bmap_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "min.bmap"
    path.write_text(f'<bmap version="2.0">{GOOD_HEAD}<BlockMap><Range> 1 </Range></BlockMap></bmap>')
    bmap = load_bmap(path)
    assert bmap == Bmap("2.0", 8192, 4096, 2, 1, None, bmap.ranges, "min.bmap")
    assert bmap.byte_ranges() == [(4096, 8192)]


# --- sidecar lookup -----------------------------------------------------------------------


def test_sidecar_is_image_name_plus_bmap_first(tmp_path: Path) -> None:
    image = tmp_path / "demo.img.zst"
    image.touch()
    (tmp_path / "demo.img.bmap").touch()
    (tmp_path / "demo.img.zst.bmap").touch()
    assert find_bmap_sidecar(image) == tmp_path / "demo.img.zst.bmap"


@pytest.mark.parametrize("suffix", [".zst", ".xz", ".gz"])
def test_sidecar_of_a_compressed_image_may_drop_the_compression_suffix(tmp_path: Path, suffix: str) -> None:
    image = tmp_path / f"demo.img{suffix}"
    image.touch()
    (tmp_path / "demo.img.bmap").touch()
    assert find_bmap_sidecar(image) == tmp_path / "demo.img.bmap"


def test_a_raw_image_does_not_look_for_a_sidecar_without_its_suffix(tmp_path: Path) -> None:
    image = tmp_path / "demo.img"
    image.touch()
    (tmp_path / "demo.bmap").touch()
    assert find_bmap_sidecar(image) is None
    (tmp_path / "demo.img.bmap").touch()
    assert find_bmap_sidecar(image) == tmp_path / "demo.img.bmap"


def test_no_sidecar_gives_none(tmp_path: Path) -> None:
    image = tmp_path / "demo.img.xz"
    image.touch()
    assert find_bmap_sidecar(image) is None
    os.mkdir(tmp_path / "demo.img.bmap")  # a directory is not a sidecar
    assert find_bmap_sidecar(image) is None
