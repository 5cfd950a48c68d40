"""`bty flash URL DISK`: an image streamed from a plain web server (Range, ETag, no bty on the
other side) onto real loop devices, through the agent's resuming client. Its digest comes from
--blake3 or URL.toml, or it is flashed unverified and says so; a cut connection resumes; a
presigned URL's query string never leaves the request; TLS is verified."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest

from bty_live import cli
from bty_live.errors import (
    DigestMismatchError,
    ImageFetchError,
    NetworkError,
    TargetRefusedError,
    UsageError,
    exit_code_for,
)
from bty_live.flash.ledger import read_ledger
from bty_live.image.manifest import load_manifest
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image, compress, device_equals_file, looks_blank, read_device
from tests.netkit import CutProxy, FileServer, bty_flash, one_line, receipt_of, self_signed_certificate, serving_files

IMAGE_SIZE = 64 * MiB
OLD_DATA = b"\xa5"  # what the loop devices hold before a flash: a wipe must zero it
SIGNATURE = "X-Amz-Expires=300&X-Amz-Signature=SECRET0123456789"

FETCH = exit_code_for(ImageFetchError("x"))
DIGEST = exit_code_for(DigestMismatchError("x"))
REFUSED = exit_code_for(TargetRefusedError("x"))
NETWORK = exit_code_for(NetworkError("x"))
USAGE = exit_code_for(UsageError("x"))


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "disk.img", IMAGE_SIZE)


@pytest.fixture(scope="module")
def zst_image(raw_image: Path) -> Path:
    return compress(raw_image, "zst")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """The web server's directory (served at /images/)."""
    directory = tmp_path / "site"
    directory.mkdir()
    return directory


@pytest.fixture
def server(site: Path) -> Iterator[FileServer]:
    with serving_files(site) as running:
        yield running


def publish(site: Path, image: Path, *, manifest: bool) -> Path:
    """Put `image` on the web server, with its manifest (IMAGE.toml, by `bty images add`) or without."""
    served = site / image.name
    os.link(image, served)
    if manifest:
        assert cli.main(["images", "add", str(served)]) == 0
    return served


def last_line(err: str) -> str:
    """The error line a failed flash ends with, after the plan and the progress."""
    line = err.strip().splitlines()[-1]
    assert line.startswith("bty: "), line
    return line


def digest_of(raw: Path) -> str:
    return blake3.blake3(raw.read_bytes()).hexdigest()


# -- a digest to check ---------------------------------------------------------------------------


def test_a_url_with_its_manifest_beside_it_lands_byte_exact_and_the_receipt_names_the_url(
        site: Path, server: FileServer, zst_image: Path, raw_image: Path, tmp_path: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    served = publish(site, zst_image, manifest=True)
    manifest = load_manifest(served)
    assert manifest is not None
    loop = make_loop(IMAGE_SIZE, fill=OLD_DATA)  # same size: no GPT fix-up changes the image's bytes
    url = f"{server.url}/images/disk.img.zst"

    assert bty_flash(url, loop, tmp_path) == 0

    assert device_equals_file(loop.path, raw_image)
    out = capsys.readouterr().out
    assert "stream digest: match; read-back: match" in out and f"from {url}" in out
    receipt = receipt_of(tmp_path)
    assert receipt["image_path"] == url and receipt["image_name"] == manifest.name
    assert receipt["stream_check"] == "match" and receipt["readback_check"] == "match"
    assert receipt["manifest_blake3"] == receipt["image_blake3"] == manifest.blake3
    assert receipt["download"] == {"url": url, "resumes": 0, "bytes": zst_image.stat().st_size}
    [record] = read_ledger(tmp_path / "ledger.jsonl").records
    assert record.result == "passed" and record.known_good


def test_a_wrong_blake3_fails_with_the_digest_code_and_wipes_the_disk(
        site: Path, server: FileServer, zst_image: Path, tmp_path: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    publish(site, zst_image, manifest=True)  # --blake3 wins over the manifest
    loop = make_loop(IMAGE_SIZE, fill=OLD_DATA)

    assert bty_flash(f"{server.url}/images/disk.img.zst", loop, tmp_path, "--blake3", "0" * 64) == DIGEST

    err = last_line(capsys.readouterr().err)
    assert "does not match the digest given with --blake3" in err and "wiped" in err
    assert looks_blank(loop.path, IMAGE_SIZE)
    assert receipt_of(tmp_path)["result"] == "failed"
    assert not any(r.known_good for r in read_ledger(tmp_path / "ledger.jsonl").records)


def test_blake3_that_is_not_64_hex_digits_is_a_usage_error(server: FileServer, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["flash", f"{server.url}/images/disk.img.zst", "/dev/null", "--blake3", "abc123"]) == USAGE
    assert "not 64 hexadecimal characters" in one_line(capsys.readouterr().err)
    assert server.requests == []  # refused before anything was fetched


def test_blake3_and_ca_file_with_a_local_image_are_a_usage_error(raw_image: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["flash", str(raw_image), "/dev/null", "--blake3", "0" * 64]) == USAGE
    assert "for an image given by URL" in one_line(capsys.readouterr().err)


def test_without_a_digest_the_image_is_flashed_unverified_says_so_and_is_never_known_good(
        site: Path, server: FileServer, zst_image: Path, raw_image: Path, tmp_path: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    publish(site, zst_image, manifest=False)
    loop = make_loop(IMAGE_SIZE, fill=OLD_DATA)

    assert bty_flash(f"{server.url}/images/disk.img.zst", loop, tmp_path) == 0

    assert device_equals_file(loop.path, raw_image)  # read back against what was downloaded
    assert "/images/disk.img.zst.toml" in server.requests  # the manifest was looked for: 404, none
    captured = capsys.readouterr()
    assert "digest:  UNVERIFIED: no digest to check" in captured.err  # the plan
    assert captured.out.splitlines()[-1] == (
        "UNVERIFIED: no digest to check: the disk is read back against what was downloaded, not against a "
        "known digest; give --blake3 or publish URL.toml")
    receipt = receipt_of(tmp_path)
    assert receipt["stream_check"] == "unverified (no digest)" and receipt["readback_check"] == "match"
    assert receipt["manifest_blake3"] is None and receipt["image_name"] == "disk"
    [record] = read_ledger(tmp_path / "ledger.jsonl").records
    assert record.result == "passed" and record.phase("verify") == "skipped" and not record.known_good


# -- a network that fails ------------------------------------------------------------------------


def test_a_connection_cut_mid_transfer_resumes_and_the_disk_is_byte_exact(
        site: Path, server: FileServer, raw_image: Path, tmp_path: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    publish(site, raw_image, manifest=True)  # raw: 64 MiB on the wire
    proxy = CutProxy(server.address, cut_after=24 * MiB)
    loop = make_loop(IMAGE_SIZE, fill=OLD_DATA)

    assert bty_flash(f"{proxy.url}/images/disk.img", loop, tmp_path) == 0

    assert proxy.cuts == 1 and device_equals_file(loop.path, raw_image)
    [resume] = proxy.resumes()
    assert 0 < int(resume.removeprefix("bytes=").rstrip("-")) <= 24 * MiB
    assert receipt_of(tmp_path)["download"] == {"url": f"{proxy.url}/images/disk.img", "resumes": 1,
                                                "bytes": IMAGE_SIZE}
    assert "resumed 1 time after a dropped connection" in capsys.readouterr().out


def test_an_image_changed_on_the_server_after_a_cut_is_refused_and_the_disk_wiped(
        site: Path, server: FileServer, raw_image: Path, tmp_path: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    served = publish(site, raw_image, manifest=True)

    def replace_image() -> None:  # a new file under the same name: new ETag and Last-Modified
        fresh = site / "fresh.img"
        fresh.write_bytes(os.urandom(IMAGE_SIZE))
        os.utime(fresh, (time.time() + 10, time.time() + 10))
        os.replace(fresh, served)

    proxy = CutProxy(server.address, cut_after=24 * MiB, on_cut=replace_image)
    loop = make_loop(IMAGE_SIZE, fill=OLD_DATA)

    assert bty_flash(f"{proxy.url}/images/disk.img", loop, tmp_path) == FETCH

    err = last_line(capsys.readouterr().err)
    assert "changed on the server during the download" in err and "wiped" in err
    assert looks_blank(loop.path, IMAGE_SIZE)


def test_a_server_that_ignores_range_after_a_cut_is_a_clear_error(
        site: Path, server: FileServer, raw_image: Path, tmp_path: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    publish(site, raw_image, manifest=True)
    proxy = CutProxy(server.address, cut_after=24 * MiB, strip_range=True)
    loop = make_loop(IMAGE_SIZE, fill=OLD_DATA)

    assert bty_flash(f"{proxy.url}/images/disk.img", loop, tmp_path) == FETCH

    err = last_line(capsys.readouterr().err)
    assert "ignored the Range request" in err and "cannot resume" in err and "wiped" in err
    assert looks_blank(loop.path, IMAGE_SIZE)


def test_a_missing_image_is_one_line_with_the_fetch_code_and_nothing_is_written(
        server: FileServer, tmp_path: Path, make_loop: Callable[..., LoopDevice],
        capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(IMAGE_SIZE, fill=OLD_DATA)
    before = read_device(loop.path, 0, MiB)
    url = f"{server.url}/images/gone.img.zst"

    assert bty_flash(url, loop, tmp_path) == FETCH

    assert one_line(capsys.readouterr().err) == f"bty: image URL {url} not found (HTTP 404); check the URL"
    assert read_device(loop.path, 0, MiB) == before
    assert not (tmp_path / "receipt.json").exists()


# -- presigned URLs ------------------------------------------------------------------------------


@pytest.fixture
def presigned_server(site: Path) -> Iterator[FileServer]:
    """A server that answers 403 to any request without the signature (as S3 does)."""
    with serving_files(site, require_query=SIGNATURE) as running:
        yield running


def test_a_presigned_url_with_blake3_flashes_and_its_query_string_is_never_shown_or_recorded(
        site: Path, presigned_server: FileServer, raw_image: Path, tmp_path: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    publish(site, raw_image, manifest=False)
    proxy = CutProxy(presigned_server.address, cut_after=24 * MiB)  # the resume must carry the signature too
    loop = make_loop(IMAGE_SIZE, fill=OLD_DATA)
    plain = f"{proxy.url}/images/disk.img"

    code = bty_flash(f"{plain}?{SIGNATURE}", loop, tmp_path, "--blake3", digest_of(raw_image), "--json")

    captured = capsys.readouterr()
    assert code == 0 and device_equals_file(loop.path, raw_image)
    assert proxy.cuts == 1 and presigned_server.requests  # every request was signed, or it got 403
    receipt = receipt_of(tmp_path)
    assert receipt["image_path"] == plain and receipt["stream_check"] == "match"
    assert receipt["download"] == {"url": plain, "resumes": 1, "bytes": IMAGE_SIZE}
    for text in (captured.out, captured.err, (tmp_path / "receipt.json").read_text(),
                 (tmp_path / "ledger.jsonl").read_text()):
        assert "SECRET" not in text and "Signature" not in text


def test_a_presigned_url_without_blake3_is_refused_naming_blake3(
        site: Path, presigned_server: FileServer, raw_image: Path, tmp_path: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    publish(site, raw_image, manifest=True)  # there, but its URL would need a signature of its own
    loop = make_loop(IMAGE_SIZE, fill=OLD_DATA)
    before = read_device(loop.path, 0, MiB)

    assert bty_flash(f"{presigned_server.url}/images/disk.img?{SIGNATURE}", loop, tmp_path) == FETCH

    err = one_line(capsys.readouterr().err)
    assert "manifest" in err and "403" in err and "--blake3" in err and "SECRET" not in err
    assert presigned_server.requests == ["/images/disk.img.toml"]  # no query string: the image's is its own
    assert read_device(loop.path, 0, MiB) == before


def test_errors_about_a_presigned_url_do_not_show_its_query_string(
        presigned_server: FileServer, tmp_path: Path, make_loop: Callable[..., LoopDevice],
        capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(IMAGE_SIZE)
    url = f"{presigned_server.url}/images/gone.img"

    assert bty_flash(f"{url}?{SIGNATURE}", loop, tmp_path, "--blake3", "0" * 64) == FETCH

    assert one_line(capsys.readouterr().err) == f"bty: image URL {url} not found (HTTP 404); check the URL"


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def test_https_with_a_self_signed_certificate_is_refused_without_its_ca_file_and_works_with_it(
        site: Path, zst_image: Path, raw_image: Path, certificate: tuple[Path, Path], tmp_path: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    publish(site, zst_image, manifest=True)
    loop = make_loop(IMAGE_SIZE, fill=OLD_DATA)
    before = read_device(loop.path, 0, MiB)
    with serving_files(site, tls=certificate) as server:
        url = f"{server.url}/images/disk.img.zst"
        assert url.startswith("https://127.0.0.1:")

        assert bty_flash(url, loop, tmp_path) == NETWORK
        err = one_line(capsys.readouterr().err)
        assert "certificate of 127.0.0.1 is not trusted" in err and "--ca-file" in err
        assert read_device(loop.path, 0, MiB) == before

        assert bty_flash(url, loop, tmp_path, "--ca-file", str(certificate[0])) == 0
    assert device_equals_file(loop.path, raw_image)
    assert receipt_of(tmp_path)["stream_check"] == "match"


# -- size and planning ---------------------------------------------------------------------------


def test_a_compressed_image_of_unknown_size_larger_than_the_disk_is_stopped_and_the_disk_wiped(
        site: Path, server: FileServer, raw_image: Path, tmp_path: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    publish(site, compress(raw_image, "gz", tmp_path / "disk.img.gz"), manifest=False)  # gzip: no size up front
    loop = make_loop(IMAGE_SIZE // 2, fill=OLD_DATA)

    assert bty_flash(f"{server.url}/images/disk.img.gz", loop, tmp_path) == REFUSED

    err = capsys.readouterr().err
    assert "unknown size" in err  # the plan said so
    last = last_line(err)
    assert "too small for image disk.img.gz" in last and "wiped" in last
    assert looks_blank(loop.path, IMAGE_SIZE // 2)


def test_dry_run_on_a_url_reads_only_the_start_of_the_image_and_writes_nothing(
        site: Path, server: FileServer, raw_image: Path, tmp_path: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    publish(site, raw_image, manifest=True)
    proxy = CutProxy(server.address)  # counts what the server sent
    loop = make_loop(IMAGE_SIZE, fill=OLD_DATA)
    before = read_device(loop.path, 0, MiB)
    url = f"{proxy.url}/images/disk.img"

    assert cli.main(["flash", url, loop.path, "--dry-run"]) == 0

    err = capsys.readouterr().err
    assert f"image:   {url} (raw, 64 MiB file, 64 MiB decompressed [manifest])" in err
    assert "table:   gpt, 2 partitions" in err and "dry run: nothing was written" in err
    assert read_device(loop.path, 0, MiB) == before
    image_bytes = sum(s.sent for s in proxy.seen if s.request_line.startswith("GET /images/disk.img "))
    assert image_bytes < IMAGE_SIZE  # the head, twice at most: never the whole image
