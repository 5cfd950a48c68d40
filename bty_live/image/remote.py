"""Images given by URL: `bty flash https://host/disk.img.zst DISK`.

The image streams through `HttpSource`, the PXE agent's client (Range resume after a dropped
connection, the same file or a refusal, bounded retries); nothing is stored on the way. TLS is
verified against the system's CAs, or a CA bundle given with `--ca-file`.

The digest the stream must have, in this order: `--blake3 HEX`; else the manifest beside the
image, `URL.toml` (what `bty images add` writes; a 404 means there is none, any other failure
is an error); else none: the image is flashed *unverified* (read back against what was
downloaded, not against a known digest), and the plan, the receipt and the ledger say so.

A presigned URL (S3, a CDN) carries its credentials in the query string: the query goes into
requests and nowhere else (messages, plans, receipts and ledgers show `shown_url`). Its
manifest's URL cannot be derived (it would need its own signature), so such an image needs
`--blake3`; the manifest is looked for at the path + `.toml`, without the query string.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from bty_live.errors import ImageError, NotFoundError, UsageError
from bty_live.image.catalog import image_stem
from bty_live.image.manifest import MANIFEST_SUFFIX, Manifest, parse_manifest
from bty_live.image.source import ImageSource, streamed_image_source
from bty_live.protocol.httpconn import Backoff, Wording, shown_url

#: what the plan, the engine and the receipt say of a URL image with no digest to check
NO_DIGEST = ("no digest to check: the disk is read back against what was downloaded, not against a known "
             "digest; give --blake3 or publish URL.toml")
#: the receipt's stream_check of such an image
UNVERIFIED = "unverified (no digest)"
#: a manifest is a few hundred bytes; anything this large is not one
#: a manifest is a few KiB, its block index ~40 bytes per 2 MiB of image (20 MiB for 1 TiB)
MANIFEST_LIMIT = 64 << 20

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

#: the image's failures: the user typed the URL, so the fix is in the URL
IMAGE_WORDING = Wording(
    again="flash again",
    not_found="image URL {url} not found (HTTP 404); check the URL",
    unexpected="check the URL",
    refused="image URL {url} refused (HTTP {status}): it needs credentials, or a presigned URL expired; "
            "check the URL",
)
#: the manifest's failures (a 404 is no failure: the image has no manifest)
MANIFEST_WORDING = Wording(
    again="flash again",
    not_found="manifest {url} not found (HTTP 404)",
    unexpected="publish the manifest there, or give the image's digest with --blake3",
    refused="manifest {url} refused (HTTP {status}); make it readable, or give the image's digest with --blake3",
)
#: ... of a presigned image, whose manifest would need a signature of its own
PRESIGNED_MANIFEST_WORDING = replace(
    MANIFEST_WORDING,
    refused="manifest {url} refused (HTTP {status}): a presigned image's manifest cannot be fetched; "
            "give the image's digest with --blake3",
)


@dataclass(frozen=True)
class UrlOptions:
    """How to fetch and check an image given by URL (`bty flash --blake3 --ca-file`)."""

    #: the blake3 of the decompressed image, 64 hex digits; over any manifest
    blake3: str | None = None
    #: a CA bundle (PEM) to verify the server's certificate with, besides the system's CAs
    cafile: Path | None = None
    #: reconnects without progress, and the waits between them (the agent's defaults)
    backoff: Backoff = field(default_factory=Backoff)


def is_image_url(spec: str) -> bool:
    """An image given as http:// or https:// (any other string names a file or a catalog entry)."""
    return spec.lower().startswith(("http://", "https://"))


def check_blake3(text: str) -> str:
    """A `--blake3` value, lower-cased; UsageError unless it is 64 hex digits."""
    if not _HEX64.match(text.strip()):
        raise UsageError(f"--blake3 {text[:80]!r} is not 64 hexadecimal characters; give the blake3 of the "
                         "decompressed image (the blake3 line of its manifest, or `b3sum` of the raw image)")
    return text.strip().lower()


def file_name_of(url: str) -> str:
    """The image's file name, from the URL's path (never its query): for format detection and messages."""
    return unquote(os.path.basename(urlsplit(url).path))


def manifest_url_for(url: str) -> str:
    """URL.toml: the path + .toml, without the query string or fragment (a presigned URL's
    signature is for the image alone)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path + MANIFEST_SUFFIX, "", ""))


def fetch_manifest(url: str, options: UrlOptions, token: str | None = None) -> Manifest | None:
    """The manifest beside the image at `url`, or None when the server has none (404); any other
    failure (refused, unreachable, not a manifest) raises. `token`: `bty serve`'s, for its images."""
    wording = PRESIGNED_MANIFEST_WORDING if urlsplit(url).query else MANIFEST_WORDING
    from bty_live.image.http_source import HttpSource  # the HTTP stack, only for a URL

    source = HttpSource(manifest_url_for(url), token, None, cafile=options.cafile, backoff=options.backoff,
                        wording=wording, user_agent="bty")
    try:
        stream = source.open()
    except NotFoundError:
        return None
    try:
        data = stream.read(MANIFEST_LIMIT + 1)
    finally:
        stream.close()
    if len(data) > MANIFEST_LIMIT:
        raise ImageError(f"manifest {source.shown_url} is larger than 64 MiB: it is not a manifest; "
                         "publish the one `bty images add` writes, or give --blake3")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImageError(f"manifest {source.shown_url} is not UTF-8 text: it is not a manifest; "
                         "publish the one `bty images add` writes, or give --blake3") from exc
    return parse_manifest(text, source.shown_url)


def load_url_image_source(url: str, options: UrlOptions) -> ImageSource:
    """The image at `url`, ready to plan: its digest (--blake3, else URL.toml, else none), its
    size (the manifest's, else a raw image's Content-Length, else unknown), its first bytes."""
    file_name = file_name_of(url)
    if not urlsplit(url).hostname or not file_name:
        raise UsageError(f"image URL {shown_url(url)} names no host or no file; give the URL of the image "
                         "(https://HOST/PATH/disk.img.zst)")
    manifest = None if options.blake3 else fetch_manifest(url, options)
    from bty_live.image.http_source import HttpSource  # the HTTP stack, only for a URL

    source = HttpSource(url, None, None, name=file_name, cafile=options.cafile, backoff=options.backoff,
                        wording=IMAGE_WORDING, user_agent="bty")
    name = manifest.name if manifest else image_stem(Path(file_name))
    return streamed_image_source(source, name=name, manifest=manifest, given_blake3=options.blake3)
