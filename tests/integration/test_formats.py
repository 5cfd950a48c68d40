"""Image formats: compression is told by magic bytes, streams end where they must, and a
truncated or damaged stream is an error rather than a short image."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from bty_live.errors import DigestMismatchError, ImageError, SourceCorruptError
from bty_live.image import zstd_frames
from bty_live.image.formats import Compression, ImageReader, detect_compression, probe_decompressed_size
from bty_live.image.pack import pack_image
from tests.imagekit import WINDOWS_ISO, iso_head, set_declared_size

DATA = b"".join(i.to_bytes(4, "little") * 1024 for i in range(3000)) + bytes(5 << 20)  # ~17 MiB


def read_all(path: Path, expected_size: int | None = None) -> bytes:
    out = bytearray()
    view = memoryview(bytearray(1 << 20))
    with ImageReader(path, expected_size=expected_size) as reader:
        while n := reader.readinto(view):
            out += view[:n]
    return bytes(out)


@pytest.fixture(scope="module")
def made_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """DATA as every format, made once per module (the tools take seconds)."""
    tmp_path = tmp_path_factory.mktemp("formats")
    raw = tmp_path / "d.img"
    raw.write_bytes(DATA)
    made = {"raw": raw}
    made["zst"] = tmp_path / "d.img.zst"
    made["zst"].write_bytes(zstandard.ZstdCompressor(level=1).compress(DATA))
    made["xz"] = tmp_path / "d.img.xz"
    made["xz"].write_bytes(lzma.compress(DATA, preset=0))
    made["gz"] = tmp_path / "d.img.gz"
    made["gz"].write_bytes(gzip.compress(DATA, compresslevel=1))
    made["bz2"] = tool(tmp_path / "d.img.bz2", "bzip2", "-1", "-c", str(raw))
    made["lz4"] = tool(tmp_path / "d.img.lz4", "lz4", "-c", str(raw))
    made["zip"] = zip_of(tmp_path / "d.zip", raw)
    return made


@pytest.fixture
def files(made_files: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """This test's own copies of `made_files`, in its tmp_path."""
    return {kind: Path(shutil.copy(path, tmp_path / path.name)) for kind, path in made_files.items()}


def tool(out: Path, *argv: str) -> Path:
    """`out` holds what the command writes to stdout."""
    with open(out, "wb") as f:
        subprocess.run(argv, stdout=f, check=True)
    return out


def zip_of(out: Path, *members: Path, options: tuple[str, ...] = ()) -> Path:
    """A zip made by Info-ZIP's `zip`, members stored under their file names."""
    out.unlink(missing_ok=True)
    subprocess.run(["zip", "-q", "-j", *options, str(out), *map(str, members)], check=True)
    return out


@pytest.mark.parametrize("kind,expected", [("raw", Compression.RAW), ("zst", Compression.ZSTD),
                                           ("xz", Compression.XZ), ("gz", Compression.GZIP),
                                           ("bz2", Compression.BZIP2), ("lz4", Compression.LZ4),
                                           ("zip", Compression.ZIP)])
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


def test_a_vmdk_descriptor_and_a_7z_archive_are_refused_with_the_conversion_command(tmp_path: Path) -> None:
    descriptor = tmp_path / "split.vmdk"
    descriptor.write_text("# Disk DescriptorFile\nversion=1\nRW 32768 FLAT \"split-flat.vmdk\" 0\n")
    with pytest.raises(ImageError, match="VMDK descriptor .*qemu-img convert -O vmdk"):
        detect_compression(descriptor)
    archive = tmp_path / "disk.7z"
    archive.write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(1000))
    with pytest.raises(ImageError, match="7-zip archive, not a disk image; extract it"):
        detect_compression(archive)


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


@pytest.mark.parametrize("kind", ["xz", "gz", "bz2", "lz4"])
def test_truncated_xz_gzip_bzip2_and_lz4_are_errors(files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    data = files[kind].read_bytes()
    truncated = tmp_path / f"t.img.{kind}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceCorruptError, match="truncated|corrupt"):
        read_all(truncated)


def with_middle_byte_flipped(source: Path, out: Path) -> Path:
    """A copy of `source` at `out` with the byte in its middle inverted."""
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


def test_corrupt_zstd_names_the_image_and_the_fix(files: dict[str, Path], tmp_path: Path) -> None:
    bad = with_middle_byte_flipped(files["zst"], tmp_path / "bad.img.zst")
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
    assert result.size == len(DATA) and result.frames == -(-len(DATA) // zstd_frames.PACKED_FRAME_SIZE)
    with open(out, "rb") as f:
        summary = zstd_frames.scan_content_size(f, record=True)
    assert summary.index is not None
    assert all(frame.content_size for frame in summary.index)
    unpacked = subprocess.run(["zstd", "-dc", str(out)], check=True, capture_output=True).stdout
    assert unpacked == DATA


# -- the xz index: an xz image's size is known before it is decompressed -----------------------------

XZ_SIZE = 16 << 20


@pytest.fixture
def xz_images(tmp_path: Path) -> Path:
    """An images directory with a 16 MiB GPT image as a two-stream xz file (as `cat a.xz b.xz` makes)."""
    from tests.imagekit import build_gpt_image

    directory = tmp_path / "images"
    directory.mkdir()
    raw = build_gpt_image(tmp_path / "gpt.img", XZ_SIZE, files_bytes=1 << 20).read_bytes()
    half = len(raw) // 2
    (directory / "gpt.img.xz").write_bytes(lzma.compress(raw[:half], preset=0) + lzma.compress(raw[half:], preset=0))
    return directory


def test_an_xz_image_without_a_manifest_gets_its_size_from_the_index_of_every_stream(xz_images: Path) -> None:
    from bty_live.image.catalog import describe_image
    from bty_live.image.source import load_image_source

    image = load_image_source(describe_image(xz_images / "gpt.img.xz"))
    assert (image.size, image.size_source) == (XZ_SIZE, "xz index")


@pytest.mark.parametrize("delta", [1, -512, 4 << 20])
def test_an_xz_image_whose_manifest_size_is_wrong_is_refused_at_planning_with_nothing_written(
        xz_images: Path, delta: int, make_loop: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from bty_live import cli
    from bty_live.image.manifest import load_manifest, write_manifest

    image = xz_images / "gpt.img.xz"
    assert cli.main(["images", "add", str(image)]) == 0
    manifest = load_manifest(image)
    assert manifest is not None and manifest.size == XZ_SIZE
    write_manifest(image, replace(manifest, size=XZ_SIZE + delta))
    loop = make_loop(32 << 20, fill=b"\x33")
    capsys.readouterr()
    assert cli.main(["flash", "gpt", loop.path, "--images", str(xz_images), "--yes"]) == 5
    err = capsys.readouterr().err
    assert "xz index" in err and "manifest" in err and "bty images add" in err, err
    assert loop.read(0, 1 << 20) == b"\x33" * (1 << 20) and loop.read(31 << 20, 1 << 20) == b"\x33" * (1 << 20)
    if abs(delta) < 1 << 20:  # the rounded sizes are equal: the exact bytes tell them apart
        assert f"{XZ_SIZE:,} bytes" in err and f"{XZ_SIZE + delta:,} bytes" in err, err


def test_sizes_that_round_alike_are_shown_in_exact_bytes() -> None:
    from bty_live.units import format_sizes

    assert format_sizes(16 << 20, (16 << 20) + 1) == ("16 MiB (16,777,216 bytes)", "16 MiB (16,777,217 bytes)")
    assert format_sizes(16 << 20, 20 << 20) == ("16 MiB", "20 MiB")
    assert format_sizes(16 << 20, 16 << 20) == ("16 MiB", "16 MiB")


# -- bzip2 and lz4 ----------------------------------------------------------------------------------


def test_a_multi_stream_bzip2_file_reads_every_stream(tmp_path: Path) -> None:
    """pbzip2 and lbzip2 write one bzip2 stream per block; `cat a.bz2 b.bz2` makes the same."""
    halves = [tmp_path / "a.img", tmp_path / "b.img"]
    halves[0].write_bytes(DATA[: len(DATA) // 2])
    halves[1].write_bytes(DATA[len(DATA) // 2 :])
    streams = [tool(h.with_name(h.name + ".bz2"), "bzip2", "-1", "-c", str(h)) for h in halves]
    joined = tmp_path / "joined.img.bz2"
    joined.write_bytes(b"".join(s.read_bytes() for s in streams))
    assert read_all(joined) == DATA


def test_concatenated_lz4_frames_read_as_one_image(tmp_path: Path) -> None:
    halves = [tmp_path / "a.img", tmp_path / "b.img"]
    halves[0].write_bytes(DATA[: len(DATA) // 3])
    halves[1].write_bytes(DATA[len(DATA) // 3 :])
    frames = [tool(h.with_name(h.name + ".lz4"), "lz4", "-c", str(h)) for h in halves]
    joined = tmp_path / "joined.img.lz4"
    joined.write_bytes(b"".join(f.read_bytes() for f in frames))
    assert read_all(joined) == DATA


@pytest.mark.parametrize("kind", ["bz2", "lz4"])
def test_a_flipped_byte_in_bzip2_or_lz4_is_corruption_naming_the_image(files: dict[str, Path], tmp_path: Path,
                                                                        kind: str) -> None:
    data = bytearray(files[kind].read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / f"bad.img.{kind}"
    bad.write_bytes(bytes(data))
    with pytest.raises(SourceCorruptError, match=rf"image bad.img.{kind} is corrupt .*re-copy it"):
        read_all(bad)


def test_legacy_lz4_is_refused_with_the_command_that_converts_it(files: dict[str, Path], tmp_path: Path) -> None:
    legacy = tool(tmp_path / "old.img.lz4", "lz4", "-l", "-c", str(files["raw"]))
    assert legacy.read_bytes()[:4] == b"\x02\x21\x4c\x18"
    with pytest.raises(ImageError, match=r"legacy-format lz4 .*lz4 -dc IN \| zstd -o OUT.img.zst"):
        detect_compression(legacy)


# -- zip: exactly one disk image, held to what its directory declares --------------------------------


def test_a_zip_gives_the_image_size_from_its_directory_and_is_hashed_as_shipped(files: dict[str, Path]) -> None:
    from bty_live.image.catalog import compute_digests

    assert probe_decompressed_size(files["zip"], Compression.ZIP) == len(DATA)
    digests = compute_digests(files["zip"])
    assert digests.size == len(DATA)
    assert digests.sha256 == hashlib.sha256(files["zip"].read_bytes()).hexdigest()  # every byte of the archive


def test_a_zip_with_two_images_is_refused_naming_both(files: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "b.img"
    other.write_bytes(DATA[:4096])
    two = zip_of(tmp_path / "two.zip", files["raw"], other)
    with pytest.raises(ImageError, match=r"image two.zip holds 2 files \(d.img, b.img\); a zip must hold exactly one "
                                         "disk image: extract the one you want"):
        read_all(two)


def test_macos_and_explorer_junk_beside_the_image_is_ignored(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "mac.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("disk/", b"")
        zf.writestr("__MACOSX/disk/._d.img", b"\x00\x05\x16\x07resource fork")
        zf.writestr("disk/.DS_Store", b"Bud1")
        zf.write(files["raw"], "disk/d.img", compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
        zf.writestr("Thumbs.db", b"x")
    assert read_all(path) == DATA


def test_zip64_archives_are_read(files: dict[str, Path], tmp_path: Path) -> None:
    z64 = zip_of(tmp_path / "z64.zip", files["raw"], options=("-fz",))  # Info-ZIP: force zip64 records
    assert b"PK\x06\x06" in z64.read_bytes()[-200:], "no zip64 end of central directory record"
    assert read_all(z64) == DATA
    assert probe_decompressed_size(z64, Compression.ZIP) == len(DATA)


class _Unseekable(io.RawIOBase):
    """A pipe-like output: zipfile then writes each member's sizes after its data (flag bit 3)."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f = f

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self.f.write(data)


def test_a_zip_written_as_a_stream_with_its_sizes_after_the_data_is_read(tmp_path: Path) -> None:
    path = tmp_path / "streamed.zip"
    with (open(path, "wb") as f, zipfile.ZipFile(_Unseekable(f), "w", compression=zipfile.ZIP_DEFLATED) as zf,
          zf.open("d.img", "w", force_zip64=True) as member):
        member.write(DATA)
    assert zipfile.ZipFile(path).infolist()[0].flag_bits & 0x08, "no data descriptor"
    assert read_all(path) == DATA


def test_a_stored_member_and_a_bzip2_member_are_read(files: dict[str, Path], tmp_path: Path) -> None:
    stored = zip_of(tmp_path / "stored.zip", files["raw"], options=("-0",))
    assert read_all(stored) == DATA
    bzipped = zip_of(tmp_path / "bzip2.zip", files["raw"], options=("-Z", "bzip2"))
    assert zipfile.ZipFile(bzipped).infolist()[0].compress_type == zipfile.ZIP_BZIP2
    assert read_all(bzipped) == DATA


def test_a_compressed_image_inside_a_zip_is_read_through_both(files: dict[str, Path], tmp_path: Path) -> None:
    nested = zip_of(tmp_path / "nested.zip", files["xz"], options=("-0",))
    assert read_all(nested) == DATA
    assert probe_decompressed_size(nested, Compression.ZIP) is None  # the member's size is the xz file's


def test_a_zip_inside_a_zip_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    outer = zip_of(tmp_path / "outer.zip", files["zip"])
    with pytest.raises(ImageError, match=r"image outer.zip holds another zip \(d.zip\); unzip it"):
        read_all(outer)


def test_an_encrypted_zip_is_refused_clearly(files: dict[str, Path], tmp_path: Path) -> None:
    locked = zip_of(tmp_path / "locked.zip", files["raw"], options=("-P", "secret"))
    with pytest.raises(ImageError, match=r"image locked.zip: its member d.img is encrypted; unzip it with its "
                                         "password"):
        read_all(locked)


def test_a_method_bty_cannot_stream_is_refused_with_the_fix(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "lzma.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as zf:
        zf.writestr("d.img", DATA[:65536])
    with pytest.raises(ImageError, match=r"compressed with lzma \(zip method 14\).*unzip it"):
        read_all(path)


def test_a_truncated_zip_is_refused_as_truncated(files: dict[str, Path], tmp_path: Path) -> None:
    cut = tmp_path / "cut.zip"
    cut.write_bytes(files["zip"].read_bytes()[: files["zip"].stat().st_size // 2])
    with pytest.raises(SourceCorruptError, match=r"image cut.zip is truncated: the zip directory at its end is "
                                                 "missing; re-copy it"):
        read_all(cut)


def test_a_damaged_stored_member_fails_its_crc_check_at_the_end(files: dict[str, Path], tmp_path: Path) -> None:
    stored = zip_of(tmp_path / "stored.zip", files["raw"], options=("-0",))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # in the member's data: stored bytes decompress to anything
    stored.write_bytes(bytes(data))
    with pytest.raises(SourceCorruptError, match=r"image stored.zip is corrupt .*CRC-32"):
        read_all(stored)


def test_a_member_that_yields_more_than_it_declares_is_cut_off_at_its_declared_size(
        files: dict[str, Path], tmp_path: Path) -> None:
    """A forged size smaller than the stream (a zip bomb's trick): the reader never hands out a
    byte beyond the declared size, and then fails."""
    bomb = zip_of(tmp_path / "bomb.zip", files["raw"])
    declared = len(DATA) // 2
    set_declared_size(bomb, declared)
    assert probe_decompressed_size(bomb, Compression.ZIP) == declared
    view = memoryview(bytearray(1 << 20))
    with ImageReader(bomb) as reader:
        with pytest.raises(SourceCorruptError, match=r"is corrupt .*yields more than the 8.* its zip directory "
                                                     "declares"):
            while reader.readinto(view):
                pass
        assert reader.position == declared


def test_a_declared_size_deflate_cannot_reach_is_refused_before_reading(tmp_path: Path) -> None:
    """Deflate yields at most 1032 bytes per byte: a zip of zeros (~1000:1) passes, a size beyond
    that is a forgery."""
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(64 << 20))
    packed = zip_of(tmp_path / "zeros.zip", zeros, options=("-9",))
    compressed = zipfile.ZipFile(packed).infolist()[0].compress_size
    assert (64 << 20) / compressed > 1000
    assert read_all(packed) == bytes(64 << 20)
    set_declared_size(packed, compressed * 1033)
    with pytest.raises(SourceCorruptError, match=r"declares .* from .* of deflate data, more than that can hold"):
        read_all(packed)


def test_a_zip_streamed_from_a_server_is_refused(files: dict[str, Path]) -> None:
    class Streamed:
        name, size, path = "d.zip", files["zip"].stat().st_size, None

        def open(self) -> Any:
            return open(files["zip"], "rb")

    with pytest.raises(ImageError, match=r"image d.zip is a zip archive, which bty reads from a local file only.*"
                                         "download it first"):
        ImageReader(Streamed(), Compression.ZIP)


def test_the_server_does_not_offer_a_zip(files: dict[str, Path]) -> None:
    from bty_live.image.catalog import describe_image
    from bty_live.server.images import served

    with pytest.raises(ImageError, match="d.zip is a zip archive, which a machine cannot stream"):
        served(describe_image(files["zip"]))


def test_the_catalog_lists_a_zip_of_two_images_with_its_problem(files: dict[str, Path], tmp_path: Path) -> None:
    from bty_live.image.catalog import list_images

    other = tmp_path / "b.img"
    other.write_bytes(b"x" * 4096)
    zip_of(tmp_path / "two.zip", files["raw"], other)
    entries = {e.path.name: e for e in list_images(tmp_path)}
    assert {"d.img.bz2", "d.img.lz4", "d.zip", "two.zip"} <= set(entries)
    assert entries["d.zip"].problem is None and entries["d.zip"].size == len(DATA)
    assert entries["two.zip"].problem is not None and "holds 2 files" in entries["two.zip"].problem


def test_a_zip_whose_manifest_gives_another_size_is_refused_at_planning(files: dict[str, Path]) -> None:
    from bty_live.image.catalog import describe_image
    from bty_live.image.manifest import Manifest, write_manifest
    from bty_live.image.source import load_image_source

    write_manifest(files["zip"], Manifest(name="d", size=len(DATA) + 4096, blake3="0" * 64))
    with pytest.raises(DigestMismatchError, match=r"decompresses to .* \(its zip directory\) but its manifest"):
        load_image_source(describe_image(files["zip"]))


# -- ISO 9660 images that boot from an optical drive only -------------------------------------------


@pytest.mark.parametrize("fields", [WINDOWS_ISO, {"volume": "CPBA_X64FRE_EN-US_DV5"},
                                    {"volume": "WIN11", "publisher": "MICROSOFT CORPORATION"}])
def test_a_windows_install_iso_is_warned_about_with_what_to_do_instead(fields: dict[str, str]) -> None:
    from bty_live.image.optical import optical_only_warning

    warning = optical_only_warning(iso_head(**fields), "win.iso")
    assert warning is not None
    assert warning.startswith(f"image win.iso is a Windows install ISO (volume {fields['volume']}), not a disk image: "
                              "it does not boot when written to a disk;")
    assert "Media Creation Tool" in warning and "woeusb" in warning


def test_a_hybrid_iso_is_not_warned_about() -> None:
    from bty_live.image.optical import optical_only_warning

    assert optical_only_warning(iso_head(volume="Debian 12.5.0 amd64 n", hybrid=True), "debian.iso") is None
    assert optical_only_warning(iso_head(**WINDOWS_ISO, hybrid=True), "rufus-made.iso") is None
    assert optical_only_warning(bytes(64 << 10), "blank.img") is None


def test_a_cd_only_iso_that_is_not_windows_gets_the_general_warning() -> None:
    from bty_live.image.optical import optical_only_warning

    warning = optical_only_warning(iso_head(volume="OLD_LINUX_CD"), "old.iso")
    assert warning is not None and "without an MBR (not hybrid)" in warning and "Windows" not in warning


def test_the_plan_of_a_windows_iso_carries_the_warning(tmp_path: Path) -> None:
    from bty_live.image.catalog import describe_image
    from bty_live.image.source import load_image_source

    iso = tmp_path / "win.iso"
    iso.write_bytes(iso_head(**WINDOWS_ISO) + bytes(4 << 20))
    image = load_image_source(describe_image(iso))
    assert len(image.warnings) == 1 and "Windows install ISO" in image.warnings[0]
    hybrid = tmp_path / "live.iso"
    hybrid.write_bytes(iso_head(volume="Debian 12.5.0 amd64 n", hybrid=True) + bytes(4 << 20))
    assert load_image_source(describe_image(hybrid)).warnings == ()


# -- xz is decoded by `xz -dc -T0`, fed through a pipe ----------------------------------------------

def multi_block_xz(path: Path, data: bytes) -> Path:
    """`data` as an xz file of several independent blocks, as `xz -T0` writes a large image."""
    raw = path.with_suffix("")
    raw.write_bytes(data)
    with path.open("wb") as out:
        subprocess.run(["xz", "-T2", "--block-size=1MiB", "-0", "-c", str(raw)], stdout=out, check=True)
    return path


def test_a_multi_block_xz_image_reads_whole_and_its_observer_sees_every_byte_of_the_file(tmp_path: Path) -> None:
    image = multi_block_xz(tmp_path / "blocks.img.xz", DATA)
    seen = hashlib.sha256()
    out = bytearray()
    view = memoryview(bytearray(1 << 20))
    with ImageReader(image, observer=seen.update) as reader:
        while n := reader.readinto(view):
            out += view[:n]
        reader.drain()
        assert reader.bytes_in == image.stat().st_size
    assert bytes(out) == DATA
    assert seen.hexdigest() == hashlib.sha256(image.read_bytes()).hexdigest()


def test_a_corrupt_xz_block_names_the_image_what_xz_said_and_the_fix(tmp_path: Path) -> None:
    bad = with_middle_byte_flipped(multi_block_xz(tmp_path / "blocks.img.xz", DATA), tmp_path / "bad.img.xz")
    with pytest.raises(SourceCorruptError, match=r"image bad.img.xz is corrupt .*\(xz: .*\); re-copy it"):
        read_all(bad)


def test_an_xz_file_cut_short_is_truncated_not_corrupt(tmp_path: Path) -> None:
    data = multi_block_xz(tmp_path / "blocks.img.xz", DATA).read_bytes()
    cut = tmp_path / "cut.img.xz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SourceCorruptError, match=r"image cut.img.xz is truncated: its xz stream ends after"):
        read_all(cut)


def test_the_frame_walk_by_preads_agrees_with_the_stream_tracker_wherever_the_file_is_cut(tmp_path: Path) -> None:
    """scan_content_size jumps from block header to block header; FrameTracker.feed sees every
    byte. On a many-block frame followed by a skippable frame and a second frame, cut anywhere,
    both must give the same frames, size and verdict."""
    cctx = zstandard.ZstdCompressor(level=1, write_checksum=True)
    skippable = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"12345"
    whole = cctx.compress(DATA) + skippable + cctx.compress(DATA[:300000])
    cuts = [3, 100, *range(1000, len(whole), len(whole) // 37), len(whole) - 4, len(whole) - 1, len(whole)]
    for cut in cuts:
        path = tmp_path / "cut.img.zst"
        path.write_bytes(whole[:cut])
        tracker = zstd_frames.FrameTracker(record=True)
        tracker.feed(whole[:cut])
        with open(path, "rb") as f:
            walked = zstd_frames.scan_content_size(f, record=True)
        assert walked == tracker.summary(), cut
    assert walked.complete and walked.frames == 2 and walked.content_size == len(DATA) + 300000
