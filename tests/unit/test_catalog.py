"""The image catalog and manifests: what `bty images` lists, how an image is found by name,
and what a manifest must contain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard

from bty_live import cli
from bty_live.errors import ImageError
from bty_live.image.catalog import find_image, image_stem, list_images, resolve_images_dir
from bty_live.image.manifest import Manifest, load_manifest, parse_manifest, write_manifest

DIGEST = "ab" * 32


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    directory = tmp_path / "images"
    directory.mkdir()
    (directory / "alpha.img").write_bytes(b"\x01" * 4096)
    (directory / "beta.img.zst").write_bytes(zstandard.ZstdCompressor().compress(b"\x02" * 8192))
    (directory / "README.md").write_text("not an image")
    (directory / "notes.toml").write_text("x = 1")
    return directory


def test_images_are_the_files_with_image_suffixes(catalog: Path) -> None:
    names = [e.path.name for e in list_images(catalog)]
    assert names == ["alpha.img", "beta.img.zst"]


def test_images_without_manifest_are_listed_unverified_with_their_known_size(catalog: Path) -> None:
    entries = {e.name: e for e in list_images(catalog)}
    assert entries["alpha"].digest_status == "unverified" and entries["alpha"].size == 4096
    assert entries["beta"].size == 8192  # from the zstd frame header


def test_images_add_writes_a_manifest_that_the_list_then_shows(catalog: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["images", "add", str(catalog / "beta.img.zst"), "--description", "second", "--os", "linux"]) == 0
    manifest = load_manifest(catalog / "beta.img.zst")
    assert manifest is not None and manifest.name == "beta" and manifest.size == 8192
    assert manifest.description == "second" and len(manifest.blake3) == 64 and manifest.sha256
    capsys.readouterr()
    assert cli.main(["images", "--images", str(catalog), "--json"]) == 0
    listed = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
    assert listed["beta"]["digest_status"] == "manifest"
    assert listed["beta"]["blake3"] == manifest.blake3
    assert listed["alpha"]["digest_status"] == "unverified"


def test_re_adding_keeps_the_descriptive_fields_and_replaces_the_digest(catalog: Path) -> None:
    image = catalog / "alpha.img"
    write_manifest(image, Manifest(name="Alpha OS", size=1, blake3=DIGEST, description="kept", os="alpha-1"))
    assert cli.main(["images", "add", str(image)]) == 0
    manifest = load_manifest(image)
    assert manifest is not None
    assert (manifest.name, manifest.description, manifest.os) == ("Alpha OS", "kept", "alpha-1")
    assert manifest.size == 4096 and manifest.blake3 != DIGEST


@pytest.mark.parametrize("spec", ["beta", "beta.img.zst"])
def test_an_image_is_found_by_name_or_file_name(catalog: Path, spec: str) -> None:
    assert find_image(spec, catalog).path.name == "beta.img.zst"


def test_an_image_is_found_by_a_blake3_prefix(catalog: Path) -> None:
    cli.main(["images", "add", str(catalog / "alpha.img")])
    digest = load_manifest(catalog / "alpha.img").blake3  # type: ignore[union-attr]
    assert find_image(digest[:10], catalog).path.name == "alpha.img"


def test_an_unknown_image_lists_what_is_there(catalog: Path) -> None:
    with pytest.raises(ImageError, match=r"'gamma' not found .*alpha, beta"):
        find_image("gamma", catalog)


def test_images_dir_comes_from_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BTY_IMAGES", "/srv/images")
    assert resolve_images_dir("/x") == Path("/x")
    assert resolve_images_dir(None) == Path("/srv/images")
    monkeypatch.delenv("BTY_IMAGES")
    assert resolve_images_dir(None) == Path("images")


def test_image_stem_strips_stacked_suffixes() -> None:
    assert image_stem(Path("demo.img.zst")) == "demo"
    assert image_stem(Path("win11.iso")) == "win11"
    assert image_stem(Path("my.disk.img.xz")) == "my.disk"


@pytest.mark.parametrize("text,problem", [
    ('size = 1\nblake3 = "' + DIGEST + '"', "name is missing"),
    ('name = "x"\nsize = -5\nblake3 = "' + DIGEST + '"', "size must be a positive"),
    ('name = "x"\nsize = 5\nblake3 = "abc"', "blake3 must be 64 hexadecimal"),
    ('name = "x"\nsize = 5\nblake3 = "' + DIGEST + '"\nsha256 = 7', "sha256 must be 64"),
    ("name = [", "not valid TOML"),
])
def test_a_bad_manifest_names_the_file_the_key_and_the_fix(text: str, problem: str) -> None:
    with pytest.raises(ImageError, match=problem) as info:
        parse_manifest(text, "demo.img.zst.toml")
    assert "demo.img.zst.toml" in str(info.value) and "bty images add" in str(info.value)


def test_manifest_round_trips_unknown_keys_and_the_tune_table() -> None:
    text = f'name = "d"\nsize = 9\nblake3 = "{DIGEST}"\nvendor_field = "kept"\n[tune]\ntask = "t.yaml"\n'
    manifest = parse_manifest(text, "m")
    again = parse_manifest(manifest.to_toml(), "m")
    assert again == manifest and again.extra == {"vendor_field": "kept"} and again.tune.task == "t.yaml"


def test_a_broken_manifest_shows_in_the_list_instead_of_hiding_the_image(catalog: Path) -> None:
    (catalog / "alpha.img.toml").write_text("name = ")
    entry = next(e for e in list_images(catalog) if e.path.name == "alpha.img")
    assert entry.digest_status == "invalid manifest" and entry.problem
