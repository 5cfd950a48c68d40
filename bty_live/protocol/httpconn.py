"""HTTP(S) connections for the PXE agent: URLs, TLS, backoff and the errors, in one place.

The agent uses the standard library's `http.client`, not requests or httpx: the netboot system
then needs nothing beyond Python, the image stream reads straight into the engine's buffers
(`readinto`), every read has a timeout, and each resume is a fresh connection whose status and
headers are checked by hand. TLS uses `ssl.create_default_context()`: certificates and host
names are verified, against the system's CAs or a given CA file.

`http.client` and `ssl` (with `email`, ~20 ms of imports) are imported by the functions that
connect, not with this module: a flash from a local file, which imports this module for
`shown_url` and `Backoff`, does not wait for them before its first byte is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit, urlunsplit

from bty_live.errors import NetworkError, ServerRejectedError

if TYPE_CHECKING:
    import http.client
    import ssl


@dataclass(frozen=True)
class Wording:
    """What a failed download's message tells the reader to do: the agent's image comes from its
    server's plan (assign the machine again), `bty flash URL`'s from the user (check the URL).
    Templates take {url} (shown without its query string) and {status}."""

    #: after a failure that may pass
    again: str
    #: HTTP 404
    not_found: str
    #: the first answer is not 200
    unexpected: str
    #: HTTP 401/403; None: the server refused bty's token (TokenRefusedError)
    refused: str | None = None


@dataclass(frozen=True)
class Backoff:
    """How often to try again and how long to wait: `attempts` tries in all, waiting
    first, first*factor, ... (at most `cap` seconds) before each retry."""

    attempts: int = 6
    first: float = 0.5
    factor: float = 2.0
    cap: float = 10.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1, 2, ...)."""
        return float(min(self.cap, self.first * self.factor ** max(0, retry - 1)))


def parse_url(url: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerRejectedError(f"{url!r} is not an http:// or https:// URL; give the server as http://HOST:PORT")
    return parts


def shown_url(url: str) -> str:
    """The URL as it may be shown and recorded: without its query string (a presigned URL's
    credentials), fragment or user:password. Requests use the whole URL; messages, receipts,
    ledgers and events use this."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def tls_context(cafile: Path | None) -> ssl.SSLContext:
    """Verify certificates and host names, with the system's CAs or `cafile`."""
    import ssl

    try:
        return ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise NetworkError(f"CA file {cafile} cannot be used ({exc}); give a PEM file with the server's CA") from exc


def connect(parts: SplitResult, timeout: float, cafile: Path | None = None) -> http.client.HTTPConnection:
    """A connection (not yet opened) to the URL's host; HTTPS verifies the certificate."""
    import http.client

    host = parts.hostname or ""
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=tls_context(cafile))
    return http.client.HTTPConnection(host, parts.port, timeout=timeout)


def request_target(parts: SplitResult) -> str:
    """The path and query to send in the request line."""
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def describe_os_error(exc: BaseException) -> str:
    """A short cause for a connection failure: 'connection refused', 'timed out', ..."""
    import http.client
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed early"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server closed the connection"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)


def certificate_error(url: str, exc: ssl.SSLCertVerificationError) -> NetworkError:
    """A certificate that does not verify: names the host (and the URL, without its query string)."""
    host = urlsplit(url).hostname or url
    return NetworkError(f"the certificate of {host} is not trusted ({exc.verify_message}) for {shown_url(url)}; "
                        "give the server's CA certificate with --ca-file")
