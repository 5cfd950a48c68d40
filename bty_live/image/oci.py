"""Images in OCI registries: `bty flash oci://REGISTRY/REPO@sha256:DIGEST DISK` (or `:TAG`).

Users push disk images as OCI artifacts with `oras push REGISTRY/REPO:TAG disk.img.zst
[disk.img.zst.toml]`: an image manifest whose layers are the files, each annotated
`org.opencontainers.image.title` with its file name. bty pulls one such layer straight onto the
disk:

1. The reference names a manifest by digest, or by tag (default `latest`, as docker and oras
   do). A tag is resolved first (GET /v2/REPO/manifests/TAG); the run is then pinned to the
   sha256 of the manifest's bytes, which must equal a pinned digest (and the registry's
   Docker-Content-Digest, when it sends one): a manifest that does not is refused before the
   disk is touched. Plans, receipts and ledgers name `oci://HOST/REPO@sha256:...`, never a tag.
2. The layer: the one whose title has an image suffix (`formats.SUFFIXES`), or the one named
   after `#` (`oci://HOST/REPO:TAG#disk.img.zst`); several and no `#` is refused, naming them.
   A layer titled IMAGE.toml beside it is bty's manifest (what `bty images add` writes): its
   size and blake3 are then checked as for a local image.
3. The blob streams through `HttpSource` (Range resume; the registry's redirect to its storage
   or CDN followed, to https:// only, without the registry's Authorization). The layer's digest
   is the sha256 of the file as shipped: the engine hashes the bytes as they arrive and compares
   before the run counts as good (`source.FileDigest`); a mismatch wipes the disk. A run checked
   so is verified, with or without bty's manifest.

Reaching the registry: `oci://` is https (TLS verified, `--ca-file` honoured) except for a
loopback host (localhost, 127.0.0.0/8, ::1), which is plain http, as docker treats it;
`oci+http://` forces plain http for any host (a registry on the local network), `oci+https://`
TLS for a loopback one. Credentials: `protocol/registry_auth.py` (the anonymous token dance,
or the user's login from REGISTRY_AUTH_FILE / ~/.docker/config.json; never shown).

Why the registry API over http.client rather than the `oras` Python package: oras-py's pull
writes every layer to a file in a directory (no stream into the engine, so the stick would
need the image's size in temporary space), resumes nothing after a dropped connection, does not
check a blob against its digest, and brings requests and jsonschema onto the live system. Pulling
one layer is three GETs; doing them through the `HttpSource` every other source uses gives OCI
images the same resume, same-file check, TLS and messages, with no new dependency. The tests
push with oras-py, so bty reads what the real tool writes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bty_live.errors import DigestMismatchError, ImageError, UsageError
from bty_live.image.catalog import image_stem
from bty_live.image.formats import claimed_compression
from bty_live.image.manifest import MANIFEST_SUFFIX, Manifest, parse_manifest
from bty_live.image.remote import UrlOptions
from bty_live.image.source import FileDigest, ImageSource, streamed_image_source
from bty_live.protocol.httpconn import Wording
from bty_live.protocol.registry_auth import RegistryAuth, stored_credential

if TYPE_CHECKING:
    from bty_live.image.http_source import HttpSource

SCHEMES = ("oci://", "oci+http://", "oci+https://")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEXES = frozenset({"application/vnd.oci.image.index.v1+json",
                     "application/vnd.docker.distribution.manifest.list.v2+json"})
ACCEPT = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"
TITLE = "org.opencontainers.image.title"
DEFAULT_TAG = "latest"
#: the OCI distribution spec's limit for a manifest
MANIFEST_LIMIT = 4 << 20
#: bty's own manifest is a few hundred bytes
BTY_MANIFEST_LIMIT = 1 << 20

_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
FORM = "oci://HOST[:PORT]/REPO:TAG or oci://HOST[:PORT]/REPO@sha256:DIGEST (optionally #FILE)"


@dataclass(frozen=True)
class OciReference:
    """A parsed `oci://HOST/REPO[:TAG][@sha256:HEX][#FILE]`."""

    #: how the registry is reached: "https" or "http"
    scheme: str
    #: as the user wrote it: "registry.example.com", "127.0.0.1:5000"
    host: str
    repository: str
    tag: str | None
    #: "sha256:HEX" when the reference is pinned
    digest: str | None
    #: the layer's title after '#', when the user chose one
    file: str | None
    #: the scheme as written ("oci", "oci+http", "oci+https"), for references shown back
    written_scheme: str = "oci"

    @property
    def registry_url(self) -> str:
        """scheme://host[:port] of the registry's API."""
        return f"{self.scheme}://{self.host}"  # the API host itself: no registry's aliases are built in

    @property
    def shown(self) -> str:
        """The reference as the user named it (tag or digest), for messages."""
        at = f"@{self.digest}" if self.digest else f":{self.tag or DEFAULT_TAG}"
        return f"{self.written_scheme}://{self.host}/{self.repository}{at}" + (f"#{self.file}" if self.file else "")

    def pinned(self, digest: str) -> str:
        """The reference by the manifest's digest: what receipts and ledgers name."""
        return f"{self.written_scheme}://{self.host}/{self.repository}@{digest}" + \
            (f"#{self.file}" if self.file else "")

    def api(self, kind: str, name: str) -> str:
        """/v2/REPO/manifests/TAG, /v2/REPO/blobs/sha256:..., as a whole URL."""
        return f"{self.registry_url}/v2/{self.repository}/{kind}/{name}"


@dataclass(frozen=True)
class Layer:
    """One file of the artifact."""

    media_type: str
    digest: str
    size: int
    title: str | None


def is_oci_reference(spec: str) -> bool:
    """An image given as oci:// (or oci+http://, oci+https://)."""
    return spec.lower().startswith(SCHEMES)


def _bad(spec: str, why: str) -> UsageError:
    return UsageError(f"image reference {_without_userinfo(spec)[:200]} {why}; give {FORM}")


def _without_userinfo(spec: str) -> str:
    """The reference as it may be shown: a user:password@ before the host left out."""
    scheme, sep, rest = spec.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}"


def parse_reference(spec: str) -> OciReference:
    """Parse and check an OCI reference; UsageError (naming the form) for anything else."""
    written, _, rest = spec.partition("://")
    written = written.lower()
    rest, hashed, file = rest.partition("#")
    if hashed and not file:
        raise _bad(spec, "has an empty #FILE")
    host, slash, path = rest.partition("/")
    if "@" in host:
        raise _bad(spec, "holds credentials: log in with `docker login` or `oras login` (or set "
                   "REGISTRY_AUTH_FILE) instead of writing them into it")
    if not host or not slash or not _HOST.match(host):
        raise _bad(spec, "names no registry host")
    path, at, digest = path.partition("@")
    if at and not _DIGEST.match(digest):
        raise _bad(spec, f"has digest {digest[:80]!r}, not sha256: and 64 lower-case hex digits")
    repository, tag = path, None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = path[: len(path) - len(last)] + last.split(":", 1)[0], last.split(":", 1)[1]
        if not _TAG.match(tag):
            raise _bad(spec, f"has tag {tag[:80]!r}, which is not a valid tag")
    if not repository or not all(_COMPONENT.match(part) for part in repository.split("/")):
        raise _bad(spec, f"has repository {repository[:80]!r}: lower-case letters, digits and . _ - between them, "
                   "in /-separated parts")
    return OciReference(scheme=_scheme_for(written, host), host=host, repository=repository,
                        tag=tag, digest=digest if at else None, file=file or None,
                        written_scheme=written)


def _scheme_for(written: str, host: str) -> str:
    """oci+http:// and oci+https:// say it; oci:// is https except on a loopback host."""
    if written == "oci+http":
        return "http"
    if written == "oci+https":
        return "https"
    return "http" if _is_loopback(host) else "https"


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1: host.index("]")]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# -- the manifest ------------------------------------------------------------------------------


def _braces(text: str) -> str:
    """A text to put into a Wording template as is."""
    return text.replace("{", "{{").replace("}", "}}")


def manifest_wording(ref: OciReference) -> Wording:
    shown, host = _braces(ref.shown), _braces(ref.host)
    what = "digest" if ref.digest else "tag"
    return Wording(
        again="flash again",
        not_found=f"{shown} not found in the registry (HTTP 404): check the repository and the {what}",
        unexpected=f"is {host} an OCI registry? give {FORM}",
        refused=f"registry {host} refused {shown} (HTTP {{status}}): the repository does not exist, or it needs a "
                f"login: check the name, or log in (docker login {host}, or set REGISTRY_AUTH_FILE)",
    )


def blob_wording(ref: OciReference, pinned: str, title: str) -> Wording:
    shown, host, title = _braces(pinned), _braces(ref.host), _braces(title)
    return Wording(
        again="flash again",
        not_found=f"layer {title} of {shown} is missing from the registry (HTTP 404): push the image again",
        unexpected=f"is {host} an OCI registry? check {shown}",
        refused=f"registry {host} refused layer {title} of {shown} (HTTP {{status}}): it needs a login: "
                f"log in (docker login {host}, or set REGISTRY_AUTH_FILE)",
    )


def _read_limited(source: HttpSource, limit: int, what: str) -> bytes:
    stream = source.open()
    try:
        data = stream.read(limit + 1)
    finally:
        stream.close()
    if len(data) > limit:
        raise ImageError(f"{what} is larger than {limit >> 20} MiB: it is not one; check the reference")
    return data


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fetch_manifest(ref: OciReference, auth: RegistryAuth, options: UrlOptions) -> tuple[bytes, str]:
    """The manifest's bytes and the digest they are pinned to (their sha256), checked against the
    reference's digest and the registry's Docker-Content-Digest."""
    from bty_live.image.http_source import HttpSource  # the HTTP stack, only when a registry is asked

    source = HttpSource(ref.api("manifests", ref.digest or ref.tag or DEFAULT_TAG), None, None,
                        name=ref.repository, cafile=options.cafile, backoff=options.backoff,
                        wording=manifest_wording(ref), user_agent="bty", headers={"Accept": ACCEPT}, auth=auth,
                        follow_redirects=True)
    body = _read_limited(source, MANIFEST_LIMIT, f"the manifest of {ref.shown}")
    found = sha256_digest(body)
    announced = source.response_headers.get("docker-content-digest", "")
    for expected, said in ((ref.digest, "the reference pins"), (announced if announced.startswith("sha256:")
                                                                else None, "the registry announced")):
        if expected and expected != found:
            raise DigestMismatchError(
                f"the manifest {ref.shown} served is not the one {said}: sha256 {found[7:23]}... != "
                f"{expected[7:23]}...; nothing was written: the registry's copy is damaged, or something between "
                "rewrites it"
            )
    return body, found


def parse_layers(body: bytes, shown: str) -> list[Layer]:
    """The layers of an image manifest; an index (several manifests, e.g. per platform) or
    anything else is refused."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageError(f"the manifest of {shown} is not JSON; check the reference") from exc
    if not isinstance(data, dict):
        raise ImageError(f"the manifest of {shown} is not an OCI image manifest; check the reference")
    media_type = data.get("mediaType")
    if media_type in INDEXES or "manifests" in data:
        raise ImageError(f"{shown} is an image index (a list of manifests, e.g. one per platform), not one "
                         "artifact: name one of its manifests by digest (oci://HOST/REPO@sha256:...)")
    if data.get("schemaVersion") != 2 or media_type not in (None, OCI_MANIFEST, DOCKER_MANIFEST) or \
            not isinstance(data.get("layers"), list):
        raise ImageError(f"{shown} is not an OCI image manifest (mediaType {media_type!r}); push the image "
                         "with `oras push REGISTRY/REPO:TAG disk.img.zst`")
    return [_layer(entry, shown) for entry in data["layers"]]


def _layer(entry: Any, shown: str) -> Layer:
    if not isinstance(entry, dict):
        raise ImageError(f"the manifest of {shown} has a layer that is not an object; push the image again")
    digest, size = entry.get("digest"), entry.get("size")
    annotations = entry.get("annotations")
    title = annotations.get(TITLE) if isinstance(annotations, dict) else None
    if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"the manifest of {shown} has a layer without a digest or a size; push the image again")
    return Layer(str(entry.get("mediaType") or ""), digest, size, title if isinstance(title, str) else None)


def is_image_title(title: str | None) -> bool:
    """A layer title with an image suffix (demo.img.zst; not demo.img.zst.toml)."""
    return bool(title) and claimed_compression(Path(title or "")) is not None


def choose_layers(layers: list[Layer], ref: OciReference, shown: str) -> tuple[Layer, Layer | None]:
    """The image's layer (the one with an image suffix, or the one named after #) and bty's
    manifest for it (the layer titled IMAGE.toml), if the artifact carries one."""
    titles = [layer.title for layer in layers if layer.title]
    if ref.file is not None:
        chosen = [layer for layer in layers if layer.title == ref.file]
        if not chosen:
            raise ImageError(f"{shown} has no layer titled {ref.file!r} (its layers: "
                             f"{', '.join(titles) or 'none titled'}); give one of them after #")
    else:
        chosen = [layer for layer in layers if is_image_title(layer.title)]
        if not chosen:
            raise ImageError(f"no layer of {shown} is a disk image (layers: {', '.join(titles) or 'none titled'}); "
                             "push one with `oras push REGISTRY/REPO:TAG disk.img.zst`")
        if len(chosen) > 1:
            names = ", ".join(str(layer.title) for layer in chosen)
            raise ImageError(f"{shown} holds several disk images ({names}); choose one with #FILE, e.g. "
                             f"{shown}#{chosen[0].title}")
    image = chosen[0]
    if len(chosen) > 1:
        raise ImageError(f"{shown} has {len(chosen)} layers titled {ref.file!r}; push the image again with one")
    if not _DIGEST.match(image.digest):
        raise ImageError(f"layer {image.title} of {shown} has digest {image.digest[:80]!r}, not sha256:HEX; "
                         "push the image again")
    manifests = [layer for layer in layers if layer.title == f"{image.title}{MANIFEST_SUFFIX}"]
    return image, manifests[0] if manifests else None


def fetch_bty_manifest(ref: OciReference, layer: Layer, auth: RegistryAuth, options: UrlOptions,
                       pinned: str) -> Manifest:
    """bty's manifest from its layer, checked against the layer's digest."""
    shown = f"{layer.title} in {pinned}"
    from bty_live.image.http_source import HttpSource  # the HTTP stack, only when a registry is asked

    source = HttpSource(ref.api("blobs", layer.digest), None, None, name=str(layer.title), cafile=options.cafile,
                        backoff=options.backoff, wording=blob_wording(ref, pinned, str(layer.title)),
                        user_agent="bty", auth=auth, follow_redirects=True)
    data = _read_limited(source, BTY_MANIFEST_LIMIT, f"manifest {shown}")
    if sha256_digest(data) != layer.digest:
        raise DigestMismatchError(f"manifest {shown} does not match its layer's digest; nothing was written: the "
                                  "registry's copy is damaged, push the image again")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImageError(f"manifest {shown} is not UTF-8 text: it is not a manifest; push the one "
                         "`bty images add` writes") from exc
    return parse_manifest(text, shown)


def load_oci_image_source(spec: str, options: UrlOptions) -> ImageSource:
    """The image layer of the artifact `spec` names, ready to plan: pinned to its manifest's
    digest, its file digest (the layer's) to be checked as it streams, its blake3 and size from
    bty's manifest in the artifact (or --blake3), its first bytes read."""
    ref = parse_reference(spec)
    auth = RegistryAuth(ref.registry_url, ref.repository, stored_credential(ref.host), cafile=options.cafile,
                        user_agent="bty")
    body, digest = fetch_manifest(ref, auth, options)
    pinned = ref.pinned(digest)
    layer, manifest_layer = choose_layers(parse_layers(body, ref.shown), ref, ref.shown)
    title = str(layer.title)
    manifest = None
    if manifest_layer is not None and not options.blake3:
        manifest = fetch_bty_manifest(ref, manifest_layer, auth, options, pinned)
        if manifest.sha256 is not None and f"sha256:{manifest.sha256}" != layer.digest:
            raise DigestMismatchError(f"manifest {manifest_layer.title} in {pinned} describes another file than "
                                      f"layer {title} (sha256 {manifest.sha256[:16]}... != {layer.digest[7:23]}...); "
                                      "nothing was written: push the image with its own manifest")
    from bty_live.image.http_source import HttpSource  # the HTTP stack, only when a registry is asked

    source = HttpSource(ref.api("blobs", layer.digest), None, layer.size, name=title, cafile=options.cafile,
                        backoff=options.backoff, wording=blob_wording(ref, pinned, title), user_agent="bty",
                        auth=auth, follow_redirects=True)
    image = streamed_image_source(source, name=manifest.name if manifest else image_stem(Path(title)),
                                  manifest=manifest, given_blake3=options.blake3)
    file_digest = FileDigest("sha256", layer.digest.removeprefix("sha256:"), "OCI digest",
                             fix=f"the registry's copy of {title} is damaged: push the image again")
    return replace(image, file_digest=file_digest, reference=pinned)


