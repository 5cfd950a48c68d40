"""`bty flash oci://...`: images pushed with oras (the Python package) to a real registry
(Debian's docker-registry) on loopback, flashed through `bty_live.cli.main` onto regular files
(the test-only file-target switch) and one loop device. A tag resolves to a pinned digest, the
layer is checked against its sha256 as it streams (a damaged blob wipes the disk), a manifest
that is not the one pinned is refused before writing, a cut connection resumes, and a registry
behind a token gate with a storage redirect works anonymously or with a stored login, without
ever showing the token or the password."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.errors import DigestMismatchError, ImageError, ImageFetchError, exit_code_for
from bty_live.flash.ledger import read_ledger
from bty_live.image.manifest import load_manifest
from bty_live.image.source import FILE_DIGEST_ONLY
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image, compress, device_equals_file
from tests.netkit import CutProxy, bty_flash, one_line, receipt_of
from tests.ocikit import GATE_TOKEN, AuthFile, Registry, running_gate, running_registry

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry") and not os.path.exists("/usr/bin/docker-registry"),
                                reason="needs Debian's docker-registry (scripts/setup-host.sh installs it)")

IMAGE_SIZE = 16 * MiB
OLD = b"\xa5"  # what a target holds before a flash: a wipe must zero it
FETCH = exit_code_for(ImageFetchError("x"))
DIGEST = exit_code_for(DigestMismatchError("x"))
IMAGE = exit_code_for(ImageError("x"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "disk.img", IMAGE_SIZE, files_bytes=2 * MiB)


@pytest.fixture(scope="module")
def zst_image(raw_image: Path) -> Path:
    return compress(raw_image, "zst")


def files_in(directory: Path, *images: Path, manifest: bool = False) -> list[Path]:
    """Copies of `images` in `directory` (what `oras push` is given), each with its manifest when asked."""
    directory.mkdir(parents=True, exist_ok=True)
    pushed = []
    for image in images:
        copy = directory / image.name
        shutil.copy(image, copy)
        pushed.append(copy)
        if manifest:
            assert cli.main(["images", "add", str(copy)]) == 0
            pushed.append(copy.with_name(copy.name + ".toml"))
    return pushed


def target_file(tmp_path: Path, size: int = IMAGE_SIZE) -> Path:
    path = tmp_path / "target.img"
    path.write_bytes(OLD * size)
    return path


def equals(target: Path, raw: Path) -> bool:
    with open(target, "rb") as f:
        return f.read(raw.stat().st_size) == raw.read_bytes()


def wiped(target: Path, size: int = IMAGE_SIZE) -> bool:
    with open(target, "rb") as f:
        head = f.read(MiB)
        f.seek(size - MiB)
        return not any(head) and not any(f.read(MiB))


# -- a digest, a tag, bty's manifest -------------------------------------------------------------


def test_a_pinned_digest_flashes_byte_exact_onto_a_loop_device_verified_by_the_layer_digest(
        registry: Registry, zst_image: Path, raw_image: Path, tmp_path: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    digest = registry.push("os/pinned:v1", files_in(tmp_path / "push", zst_image))
    layer = registry.layers(digest)["disk.img.zst"]
    loop = make_loop(IMAGE_SIZE, fill=OLD)
    ref = f"oci://{registry.host}/os/pinned@{digest}"

    assert bty_flash(ref, loop.path, tmp_path) == 0

    assert device_equals_file(loop.path, raw_image)
    receipt = receipt_of(tmp_path)
    assert receipt["image_path"] == ref and receipt["image_name"] == "disk"
    assert receipt["file_digest"] == layer and receipt["file_check"] == "match"
    assert receipt["stream_check"] == FILE_DIGEST_ONLY and receipt["readback_check"] == "match"
    assert receipt["download"] == {"url": f"http://{registry.host}/v2/os/pinned/blobs/{layer}", "resumes": 0,
                                   "bytes": zst_image.stat().st_size}
    out = capsys.readouterr().out
    assert f"file digest {layer[:23]}...: match" in out and "UNVERIFIED" not in out
    [record] = read_ledger(tmp_path / "ledger.jsonl").records
    assert record.result == "passed" and record.phase("verify") == "passed" and record.known_good


@pytest.mark.usefixtures("file_targets")
@pytest.mark.parametrize("tag", ["v2", None])
def test_a_tag_resolves_to_the_digest_the_receipt_names(registry: Registry, zst_image: Path, raw_image: Path,
                                                        tmp_path: Path, tag: str | None) -> None:
    digest = registry.push(f"os/tagged:{tag or 'latest'}", files_in(tmp_path / "push", zst_image))
    target = target_file(tmp_path)

    assert bty_flash(f"oci://{registry.host}/os/tagged" + (f":{tag}" if tag else ""), target, tmp_path) == 0

    assert equals(target, raw_image)
    assert receipt_of(tmp_path)["image_path"] == f"oci://{registry.host}/os/tagged@{digest}"


@pytest.mark.usefixtures("file_targets")
def test_with_bty_manifest_in_the_artifact_the_stream_blake3_is_checked_too(
        registry: Registry, zst_image: Path, raw_image: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    pushed = files_in(tmp_path / "push", zst_image, manifest=True)
    manifest = load_manifest(pushed[0])
    assert manifest is not None
    digest = registry.push("os/manifest:v1", pushed)
    target = target_file(tmp_path)

    assert bty_flash(f"oci://{registry.host}/os/manifest:v1", target, tmp_path) == 0

    assert equals(target, raw_image)
    receipt = receipt_of(tmp_path)
    assert receipt["stream_check"] == "match" and receipt["file_check"] == "match"
    assert receipt["manifest_blake3"] == receipt["image_blake3"] == manifest.blake3
    assert receipt["image_name"] == manifest.name and receipt["image_path"] == f"oci://{registry.host}/os/manifest@{digest}"
    assert "stream blake3 matches the manifest" in capsys.readouterr().err


@pytest.mark.usefixtures("file_targets")
def test_dry_run_shows_the_pinned_reference_and_both_digests(registry: Registry, zst_image: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    digest = registry.push("os/dry:v1", files_in(tmp_path / "push", zst_image, manifest=True))
    target = target_file(tmp_path)

    assert cli.main(["flash", f"oci://{registry.host}/os/dry:v1", str(target), "--dry-run", "--json"]) == 0

    plan = json.loads(capsys.readouterr().out.splitlines()[-1])["plan"]
    assert plan["image"] == f"oci://{registry.host}/os/dry@{digest}"
    assert plan["file_digest"] == registry.layers(digest)["disk.img.zst"] and plan["blake3"]
    assert target.read_bytes() == OLD * IMAGE_SIZE


# -- damage ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("file_targets")
def test_a_blob_damaged_in_the_registry_fails_with_the_digest_code_and_wipes_the_disk(
        registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "push" / "damaged.img"  # its own bytes: the registry shares blobs between repositories
    raw.parent.mkdir()
    raw.write_bytes(os.urandom(IMAGE_SIZE))
    digest = registry.push("os/damaged:v1", [raw])
    blob = registry.blob_file(registry.layers(digest)["damaged.img"])
    data = bytearray(blob.read_bytes())
    data[IMAGE_SIZE // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    target = target_file(tmp_path)

    assert bty_flash(f"oci://{registry.host}/os/damaged@{digest}", target, tmp_path) == DIGEST

    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "image file damaged.img does not match its OCI digest" in last and "push the image again" in last
    assert "wiped" in last and wiped(target)
    receipt = receipt_of(tmp_path)
    assert receipt["result"] == "failed" and receipt["file_check"] == "mismatch"
    assert not any(r.known_good for r in read_ledger(tmp_path / "ledger.jsonl").records)


@pytest.mark.usefixtures("file_targets")
@pytest.mark.parametrize("by", ["digest", "tag"])
def test_a_manifest_that_is_not_the_one_pinned_is_refused_before_writing(
        registry: Registry, zst_image: Path, tmp_path: Path, by: str, capsys: pytest.CaptureFixture[str]) -> None:
    pushed = files_in(tmp_path / "push", zst_image)
    pushed[0].rename(pushed[0].with_name(f"{by}.img.zst"))  # a manifest of its own to damage
    digest = registry.push(f"os/forged-{by}:v1", [pushed[0].with_name(f"{by}.img.zst")])
    stored = registry.blob_file(digest)
    stored.write_bytes(stored.read_bytes().replace(f'"{by}.img.zst"'.encode(), f'"{by}.img.zsx"'.encode()))
    target = target_file(tmp_path)
    ref = f"oci://{registry.host}/os/forged-{by}" + (f"@{digest}" if by == "digest" else ":v1")

    assert bty_flash(ref, target, tmp_path) == DIGEST

    err = one_line(capsys.readouterr().err)
    said = "the reference pins" if by == "digest" else "the registry announced"
    assert f"the manifest {ref} served is not the one {said}" in err and "nothing was written" in err
    assert target.read_bytes() == OLD * IMAGE_SIZE
    assert not (tmp_path / "receipt.json").exists()


# -- choosing the layer ------------------------------------------------------------------------------


@pytest.mark.usefixtures("file_targets")
def test_two_images_need_a_selector_and_with_one_the_named_layer_is_flashed(
        registry: Registry, zst_image: Path, raw_image: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.img"
    other.write_bytes(os.urandom(4 * MiB))
    digest = registry.push("os/two:v1", files_in(tmp_path / "push", zst_image, other))
    target = target_file(tmp_path)
    ref = f"oci://{registry.host}/os/two:v1"

    assert bty_flash(ref, target, tmp_path) == IMAGE
    err = one_line(capsys.readouterr().err)
    assert "holds several disk images (disk.img.zst, other.img)" in err and f"{ref}#disk.img.zst" in err
    assert target.read_bytes() == OLD * IMAGE_SIZE

    assert bty_flash(f"{ref}#other.img", target, tmp_path) == 0
    assert equals(target, other)
    assert receipt_of(tmp_path)["image_path"] == f"oci://{registry.host}/os/two@{digest}#other.img"

    assert bty_flash(f"{ref}#nope.img", target, tmp_path) == IMAGE
    assert "has no layer titled 'nope.img' (its layers: disk.img.zst, other.img)" in capsys.readouterr().err


@pytest.mark.usefixtures("file_targets")
@pytest.mark.parametrize("what", ["repository", "tag"])
def test_an_unknown_repository_or_tag_is_one_line_with_the_fetch_code(
        registry: Registry, zst_image: Path, tmp_path: Path, what: str, capsys: pytest.CaptureFixture[str]) -> None:
    registry.push("os/known:v1", files_in(tmp_path / "push", zst_image))
    target = target_file(tmp_path)
    ref = f"oci://{registry.host}/os/" + ("nothing-here:v1" if what == "repository" else "known:v9")

    assert bty_flash(ref, target, tmp_path) == FETCH

    assert one_line(capsys.readouterr().err) == (f"bty: {ref} not found in the registry (HTTP 404): check the "
                                                 "repository and the tag")
    assert target.read_bytes() == OLD * IMAGE_SIZE


# -- the network -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("file_targets")
def test_a_connection_cut_mid_blob_resumes_and_the_target_is_byte_exact(
        registry: Registry, raw_image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest = registry.push("os/cut:v1", files_in(tmp_path / "push", raw_image))  # raw: 16 MiB on the wire
    proxy = CutProxy(registry.address, cut_after=6 * MiB, image_request=re.compile(r"^GET /v2/.+/blobs/"))
    target = target_file(tmp_path)

    assert bty_flash(f"oci://127.0.0.1:{proxy.port}/os/cut:v1", target, tmp_path) == 0

    assert proxy.cuts == 1 and equals(target, raw_image)
    [resume] = proxy.resumes()
    assert 0 < int(resume.removeprefix("bytes=").rstrip("-")) <= 6 * MiB
    receipt = receipt_of(tmp_path)
    assert receipt["image_path"] == f"oci://127.0.0.1:{proxy.port}/os/cut@{digest}"
    assert receipt["download"]["resumes"] == 1 and receipt["file_check"] == "match"  # type: ignore[index]
    assert "resumed 1 time after a dropped connection" in capsys.readouterr().out


@pytest.mark.usefixtures("file_targets")
def test_behind_a_token_gate_the_pull_is_anonymous_and_the_storage_redirect_gets_no_token(
        registry: Registry, zst_image: Path, raw_image: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    digest = registry.push("os/gated:v1", files_in(tmp_path / "push", zst_image))
    target = target_file(tmp_path)
    with running_gate(registry.address) as gate:
        assert bty_flash(f"oci://{gate.host}/os/gated:v1", target, tmp_path, "--json") == 0

    assert equals(target, raw_image)
    assert gate.challenges >= 1 and set(gate.scopes) == {"repository:os/gated:pull"}
    assert gate.storage_authorizations and set(gate.storage_authorizations) == {None}  # the CDN got no token
    assert receipt_of(tmp_path)["image_path"] == f"oci://{gate.host}/os/gated@{digest}"
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, (tmp_path / "receipt.json").read_text(),
                 (tmp_path / "ledger.jsonl").read_text()):
        assert GATE_TOKEN not in text


@pytest.mark.usefixtures("file_targets")
def test_a_registry_that_wants_a_login_is_refused_without_one_and_pulls_with_the_stored_one(
        registry: Registry, zst_image: Path, raw_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    registry.push("os/private:v1", files_in(tmp_path / "push", zst_image))
    target = target_file(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.docker/config.json of the machine's
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    with running_gate(registry.address, users={"alice": "PASSWORD-s3cr3t"}) as gate:
        ref = f"oci://{gate.host}/os/private:v1"
        monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
        assert bty_flash(ref, target, tmp_path) == FETCH
        err = one_line(capsys.readouterr().err)
        assert f"registry {gate.host} refused {ref} (HTTP 401)" in err and "REGISTRY_AUTH_FILE" in err
        assert target.read_bytes() == OLD * IMAGE_SIZE

        auth = AuthFile(tmp_path / "auth.json", {gate.host: ("alice", "PASSWORD-s3cr3t")}).write()
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
        assert bty_flash(ref, target, tmp_path) == 0

    assert equals(target, raw_image)
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, (tmp_path / "receipt.json").read_text()):
        assert "s3cr3t" not in text and GATE_TOKEN not in text and "YWxpY2" not in text  # base64 of alice:...
