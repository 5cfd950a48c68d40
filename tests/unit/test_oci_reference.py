"""An OCI reference: its forms, which registries are plain http, which layer is the image, and
where a registry login comes from (never shown)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from bty_live.errors import ImageError, UsageError
from bty_live.image.oci import Layer, choose_layers, is_oci_reference, parse_layers, parse_reference
from bty_live.protocol.registry_auth import Credential, RegistryAuth, parse_challenge, stored_credential

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("spec", "scheme", "host", "repository", "tag", "digest", "file"), [
    ("oci://ghcr.io/org/os/debian:12", "https", "ghcr.io", "org/os/debian", "12", None, None),
    (f"oci://registry.example.com:5000/os@{DIGEST}", "https", "registry.example.com:5000", "os", None, DIGEST, None),
    ("oci://127.0.0.1:5000/os/demo", "http", "127.0.0.1:5000", "os/demo", None, None, None),
    ("oci://localhost:5000/os/demo:v1#disk.img.zst", "http", "localhost:5000", "os/demo", "v1", None, "disk.img.zst"),
    ("oci://[::1]:5000/os/demo:v1", "http", "[::1]:5000", "os/demo", "v1", None, None),
    ("oci+http://10.0.0.5:5000/os/demo:v1", "http", "10.0.0.5:5000", "os/demo", "v1", None, None),
    ("oci+https://localhost/os/demo:v1", "https", "localhost", "os/demo", "v1", None, None),
    (f"oci://host/a/b:v1@{DIGEST}", "https", "host", "a/b", "v1", DIGEST, None),
])
def test_references_parse(spec: str, scheme: str, host: str, repository: str, tag: str | None,
                          digest: str | None, file: str | None) -> None:
    ref = parse_reference(spec)
    assert (ref.scheme, ref.host, ref.repository, ref.tag, ref.digest, ref.file) == (
        scheme, host, repository, tag, digest, file)
    assert is_oci_reference(spec)


def test_a_tag_defaults_to_latest_and_the_pinned_reference_names_the_digest() -> None:
    ref = parse_reference("oci://127.0.0.1:5000/os/demo#disk.img")
    assert ref.shown == "oci://127.0.0.1:5000/os/demo:latest#disk.img"
    assert ref.pinned(DIGEST) == f"oci://127.0.0.1:5000/os/demo@{DIGEST}#disk.img"
    assert ref.api("manifests", "latest") == "http://127.0.0.1:5000/v2/os/demo/manifests/latest"


def test_the_registry_is_reached_at_the_host_the_reference_names() -> None:
    assert parse_reference("oci://reg.example:5000/library/x:1").registry_url == "https://reg.example:5000"


@pytest.mark.parametrize(("spec", "why"), [
    ("oci://host", "names no registry host"),
    ("oci:///os/demo", "names no registry host"),
    ("oci://user:pw@host/os/demo", "holds credentials"),
    ("oci://host/OS/Demo:v1", "has repository"),
    ("oci://host/os/demo@sha256:abc", "not sha256: and 64"),
    ("oci://host/os/demo@md5:" + "a" * 32, "not sha256: and 64"),
    ("oci://host/os/demo:-bad", "not a valid tag"),
    ("oci://host/os/demo#", "empty #FILE"),
])
def test_bad_references_are_usage_errors_naming_the_form(spec: str, why: str) -> None:
    with pytest.raises(UsageError, match=why) as caught:
        parse_reference(spec)
    assert "oci://HOST[:PORT]/REPO:TAG" in str(caught.value) and "pw" not in str(caught.value)


def manifest(*titles: str | None, media_type: str = "application/vnd.oci.image.manifest.v1+json") -> bytes:
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": DIGEST, "size": 1,
               **({"annotations": {"org.opencontainers.image.title": t}} if t else {})} for t in titles]
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "layers": layers}).encode()


def test_the_image_layer_is_the_one_with_an_image_suffix_and_its_toml_is_bty_manifest() -> None:
    layers = parse_layers(manifest("README.md", "disk.img.zst", "disk.img.zst.toml", None), "ref")
    image, toml = choose_layers(layers, parse_reference("oci://h/r:t"), "ref")
    assert image.title == "disk.img.zst" and toml is not None and toml.title == "disk.img.zst.toml"


def test_no_image_layer_and_an_index_are_refused() -> None:
    with pytest.raises(ImageError, match=r"no layer of ref is a disk image \(layers: README.md\)"):
        choose_layers(parse_layers(manifest("README.md"), "ref"), parse_reference("oci://h/r:t"), "ref")
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": []}).encode()
    with pytest.raises(ImageError, match="is an image index"):
        parse_layers(index, "ref")
    with pytest.raises(ImageError, match="not JSON"):
        parse_layers(b"<html>", "ref")


def test_a_selector_picks_any_titled_layer() -> None:
    layers = [Layer("x", DIGEST, 1, "a.img"), Layer("x", DIGEST, 1, "firmware.bin")]
    image, toml = choose_layers(layers, parse_reference("oci://h/r:t#firmware.bin"), "ref")
    assert image.title == "firmware.bin" and toml is None


def test_challenges_parse() -> None:
    challenge = parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                                'scope="repository:a/b:pull"')
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://auth.example/token", "service": "reg",
                                "scope": "repository:a/b:pull"}
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None and basic.scheme == "basic" and basic.params == {"realm": "Registry Realm"}
    assert parse_challenge(None) is None and parse_challenge("  ") is None


def write_auths(path: Path, auths: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {k: {"auth": base64.b64encode(v.encode()).decode()}
                                          for k, v in auths.items()}}))
    return path


def test_a_login_comes_from_registry_auth_file_then_docker_config(tmp_path: Path) -> None:
    docker = write_auths(tmp_path / "home/.docker/config.json", {"https://hub.example/v1/": "bob:hub",
                                                                "reg:5000": "bob:docker"})
    auth_file = write_auths(tmp_path / "auth.json", {"reg:5000": "alice:podman"})
    home = tmp_path / "home"

    found = stored_credential("reg:5000", {"REGISTRY_AUTH_FILE": str(auth_file)}, home)
    assert found is not None and base64.b64decode(found.basic) == b"alice:podman" and found.origin == auth_file
    found = stored_credential("reg:5000", {}, home)
    assert found is not None and found.origin == docker
    hub = stored_credential("hub.example", {}, home)  # a key written as a URL matches its host
    assert hub is not None and base64.b64decode(hub.basic) == b"bob:hub"
    assert stored_credential("other:5000", {}, home) is None
    assert "hub" not in repr(hub) and "Ym9i" not in repr(hub)  # never the credential


def test_a_broken_auth_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "auth.json"
    broken.write_text("{not json")
    with pytest.raises(UsageError, match=f"registry credentials file {broken} cannot be read"):
        stored_credential("reg", {"REGISTRY_AUTH_FILE": str(broken)}, tmp_path)
    broken.write_text(json.dumps({"auths": {"reg": {"auth": "bm9jb2xvbg=="}}}))  # "nocolon"
    with pytest.raises(UsageError, match="not base64 of user:password"):
        stored_credential("reg", {"REGISTRY_AUTH_FILE": str(broken)}, tmp_path)


def test_a_basic_challenge_is_answered_once_with_the_stored_login() -> None:
    auth = RegistryAuth("https://reg", "a/b", Credential("YTpi", Path("/x")))
    assert auth.header() == {}
    assert auth.renew('Basic realm="r"') and auth.header() == {"Authorization": "Basic YTpi"}
    assert not auth.renew('Basic realm="r"')  # refused again: nothing else to try
    assert not RegistryAuth("https://reg", "a/b", None).renew('Basic realm="r"')
    assert "YTpi" not in repr(auth)
