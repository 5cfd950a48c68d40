"""Image formats: compression is told by magic bytes, streams end where they must, and a
truncated or damaged stream is an error rather than a short image."""

from __future__ import annotations

import gzip
import io
import lzma
import subprocess
from pathlib import Path

import pytest
import zstandard

from bty_live import zstd_frames
from bty_live.errors import ImageError, SourceCorruptError
from bty_live.formats import Compression, ImageReader, detect_compression, probe_decompressed_size
from bty_live.pack import pack_image

DATA = b"".join(i.to_bytes(4, "little") * 1024 for i in range(3000)) + bytes(5 << 20)  # ~17 MiB


def read_all(path: Path, expected_size: int | None = None) -> bytes:
    out = bytearray()
    view = memoryview(bytearray(1 << 20))
    with ImageReader(path, expected_size=expected_size) as reader:
        while n := reader.readinto(view):
            out += view[:n]
    return bytes(out)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    raw = tmp_path / "d.img"
    raw.write_bytes(DATA)
    made = {"raw": raw}
    made["zst"] = tmp_path / "d.img.zst"
    made["zst"].write_bytes(zstandard.ZstdCompressor(level=1).compress(DATA))
    made["xz"] = tmp_path / "d.img.xz"
    made["xz"].write_bytes(lzma.compress(DATA, preset=0))
    made["gz"] = tmp_path / "d.img.gz"
    made["gz"].write_bytes(gzip.compress(DATA, compresslevel=1))
    return made


@pytest.mark.parametrize("kind,expected", [("raw", Compression.RAW), ("zst", Compression.ZSTD),
                                           ("xz", Compression.XZ), ("gz", Compression.GZIP)])
def test_each_format_is_detected_and_streams_back_the_same_bytes(files: dict[str, Path], kind: str,
                                                                 expected: Compression) -> None:
    assert detect_compression(files[kind]) == expected
    assert read_all(files[kind]) == DATA


def test_magic_bytes_win_over_a_neutral_name(files: dict[str, Path], tmp_path: Path) -> None:
    renamed = tmp_path / "disk.img"  # .img claims raw; the bytes say zstd
    renamed.write_bytes(files["zst"].read_bytes())
    assert detect_compression(renamed) == Compression.ZSTD
    assert read_all(renamed) == DATA


def test_a_name_that_lies_about_compression_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    fake = tmp_path / "fake.img.zst"
    fake.write_bytes(DATA[:4096])
    with pytest.raises(ImageError, match="named like zstd but does not start like one"):
        detect_compression(fake)


def test_virtual_disk_containers_are_refused_with_the_conversion_command(tmp_path: Path) -> None:
    qcow = tmp_path / "vm.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "16M"], check=True)
    with pytest.raises(ImageError, match="qcow2 .*qemu-img convert -O raw"):
        detect_compression(qcow)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.img"
    empty.touch()
    with pytest.raises(ImageError, match="empty"):
        detect_compression(empty)


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_zstd_is_an_error_not_a_short_image(files: dict[str, Path], tmp_path: Path, cut: float) -> None:
    data = files["zst"].read_bytes()
    truncated = tmp_path / "t.img.zst"
    truncated.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(SourceCorruptError, match="truncated"):
        read_all(truncated)


@pytest.mark.parametrize("kind", ["xz", "gz"])
def test_truncated_xz_and_gzip_are_errors(files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    data = files[kind].read_bytes()
    truncated = tmp_path / f"t.img.{kind}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceCorruptError, match="truncated|corrupt"):
        read_all(truncated)


def test_corrupt_zstd_names_the_image_and_the_fix(files: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(files["zst"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.img.zst"
    bad.write_bytes(bytes(data))
    with pytest.raises(SourceCorruptError, match=r"image bad.img.zst is (corrupt|truncated).*re-copy it"):
        read_all(bad)


def test_multi_frame_zstd_reads_across_frames_and_sums_declared_sizes(tmp_path: Path) -> None:
    cctx = zstandard.ZstdCompressor(write_content_size=True)
    path = tmp_path / "multi.img.zst"
    path.write_bytes(cctx.compress(DATA[: 1 << 20]) + cctx.compress(DATA[1 << 20 :]))
    assert read_all(path) == DATA
    assert probe_decompressed_size(path, Compression.ZSTD) == len(DATA)
    with open(path, "rb") as f:
        summary = zstd_frames.scan_content_size(f, record=True)
    assert summary.frames == 2 and summary.complete
    assert summary.index is not None and [f.content_size for f in summary.index] == [1 << 20, len(DATA) - (1 << 20)]


def test_frame_walker_skips_skippable_frames_and_finds_streamed_frames_without_size(tmp_path: Path) -> None:
    skippable = (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    streamed = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(streamed, closefd=False) as writer:
        writer.write(DATA[:100000])
    path = tmp_path / "s.img.zst"
    path.write_bytes(skippable + streamed.getvalue())
    with open(path, "rb") as f:
        summary = zstd_frames.scan_content_size(f)
    assert summary.complete and summary.frames == 1
    assert summary.content_size is None  # a streamed frame does not declare its size
    assert read_all(path) == DATA[:100000]


def test_trailing_garbage_after_the_last_frame_is_corruption(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "g.img.zst"
    path.write_bytes(files["zst"].read_bytes() + b"garbage!")
    with pytest.raises(SourceCorruptError):
        read_all(path)


def test_pack_writes_independent_sized_frames_that_any_zstd_reads(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "packed.img.zst"
    result = pack_image(files["xz"], out)
    assert result.size == len(DATA) and result.frames == 3  # 8 MiB frames
    with open(out, "rb") as f:
        summary = zstd_frames.scan_content_size(f, record=True)
    assert summary.index is not None
    assert all(frame.content_size for frame in summary.index)
    unpacked = subprocess.run(["zstd", "-dc", str(out)], check=True, capture_output=True).stdout
    assert unpacked == DATA
