"""An image streamed over HTTP(S): a ByteSource that survives dropped connections.

Two users, one mechanism: the PXE agent downloads the image its `bty serve` assigned, and
`bty flash URL DISK` the image a user named (a web server, a CDN, a presigned S3 URL).

The engine reads a source front to back once. `HttpStream` hands out the response body as it
arrives (no temp file); when the connection drops or stalls it reconnects with
`Range: bytes=N-` (N = bytes already handed out) and `If-Range`, and accepts the answer only if
it is `206` with `Content-Range: bytes N-.../TOTAL` for the same file (same size, ETag and
Last-Modified). Failures without progress are retried with backoff a bounded number of times,
and the whole download has a deadline (a server that drops after every byte makes progress
forever); then an `ImageFetchError` names the URL and what to do. Everything above this layer
sees one uninterrupted stream.

Every stream a source opens (the plan reads the head, the engine the whole image) must be the
same file as the first: same size, ETag and Last-Modified. The URL's query string (a presigned
URL's credentials) goes into requests only; messages name `shown_url`.

For OCI registries (`image/oci.py`) a source can also follow redirects (a registry sends blob
GETs to its storage or a CDN: each request, resumes too, starts at the registry and follows
afresh, since a storage URL's signature expires), to https:// only (or http:// when the source
itself is http://), and never with the source's Authorization header on another host; and it
can ask an `Authorizer` for a new Authorization after a 401 (a registry's token expires within
minutes, a long download outlives it).
"""

from __future__ import annotations

import http.client
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from bty_live import __version__
from bty_live.errors import ImageFetchError, NotFoundError, TokenRefusedError
from bty_live.image.sources import ByteSource
from bty_live.protocol.httpconn import (
    Backoff,
    Wording,
    certificate_error,
    connect,
    describe_os_error,
    parse_url,
    request_target,
    shown_url,
)
from bty_live.protocol.wire import bearer
from bty_live.units import format_size, format_sizes

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
#: the redirects a source with follow_redirects follows, and how many in a row
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5


class Authorizer(Protocol):
    """Where a source's Authorization comes from when it is more than a fixed token (a registry's
    bearer token, fetched after a 401 and again when it expires)."""

    def header(self) -> dict[str, str]:
        """The Authorization header to send now ({} for none)."""
        ...

    def renew(self, challenge: str | None) -> bool:
        """After a 401 carrying `challenge` (its WWW-Authenticate): get a new Authorization; False
        when there is nothing else to try (the 401 then stands)."""
        ...


@dataclass(frozen=True)
class ResumeNotice:
    """Told to `on_resume` each time a dropped download continues where it stopped."""

    url: str
    #: bytes delivered before the drop: where the Range request started
    offset: int
    #: failed attempts before this resume succeeded
    attempts: int
    #: why the connection dropped ("connection reset", "timed out", ...)
    reason: str


#: the PXE agent's: the image URL comes from `bty serve`, which checks the shared token
AGENT_WORDING = Wording(
    again="assign the machine again",
    not_found="image {url} is not on the server (404): it was removed or renamed; assign the machine again",
    unexpected="is the URL a bty server's image?",
)


@dataclass(frozen=True)
class _Validator:
    """What identifies the file of the first response; every resume must match it."""

    total: int | None
    etag: str | None
    last_modified: str | None


class _Retry(Exception):
    """A failure worth another attempt (connection refused or reset, timeout, 5xx)."""


class HttpSource:
    """A ByteSource for `url`. `size` is the file's size as the server announced it (checked)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        size: int | None,
        *,
        name: str | None = None,
        cafile: Path | None = None,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        on_resume: Callable[[ResumeNotice], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wording: Wording = AGENT_WORDING,
        user_agent: str = "bty-agent",
        headers: Mapping[str, str] | None = None,
        auth: Authorizer | None = None,
        follow_redirects: bool = False,
    ) -> None:
        parts = parse_url(url)
        #: the whole URL, query string included: for requests only
        self.url = url
        #: the URL for messages, receipts and ledgers (no query string, no credentials)
        self.shown_url = shown_url(url)
        self.name = name or unquote(os.path.basename(parts.path)) or parts.hostname or url
        self.size = size
        self.path: Path | None = None
        self.token = token
        self.cafile = cafile
        self.timeout = timeout
        self.backoff = backoff or Backoff()
        self.on_resume = on_resume
        self.sleep = sleep
        #: seconds a stream may take from its first request to its last byte; None: no limit
        self.deadline = deadline
        self.clock = clock
        self.wording = wording
        self.user_agent = f"{user_agent}/{__version__}"
        #: successful Range resumes over every stream opened from this source
        self.resumes = 0
        #: the file the first stream found; every later stream must find the same one
        self.validator: _Validator | None = None
        #: more request headers (e.g. a registry's Accept)
        self.headers = dict(headers or {})
        #: renews the Authorization after a 401 of the source's own host
        self.auth = auth
        #: follow 3xx answers (a registry's blob in storage); else a redirect is an error naming its target
        self.follow_redirects = follow_redirects
        #: the first answer's headers (lower-case names): e.g. a registry's Docker-Content-Digest
        self.response_headers: dict[str, str] = {}

    def open(self) -> HttpStream:
        return HttpStream(self)

    def head(self, end: int | None) -> ByteSource:
        """The file's first `end` bytes as a source of their own (all of it for None): a head
        read that does not pull the rest of the file onto the wire."""
        return _HeadSource(self, end) if end is not None else self

    def read_range(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of the file, by one bounded Range request (resumed
        like a stream when the connection drops), from the same file every stream found."""
        stream = HttpStream(self, start=offset, end=offset + length)
        try:
            data = stream.read(length)
        finally:
            stream.close()
        if len(data) != length:
            raise ImageFetchError(f"image {self.shown_url} ended at {format_size(offset + len(data))} while "
                                  f"{format_size(offset + length)} were asked for: it changed or shrank on the server; "
                                  f"{self.wording.again}")
        return data

    def __repr__(self) -> str:
        return f"HttpSource({self.shown_url})"


class _HeadSource:
    def __init__(self, source: HttpSource, end: int) -> None:
        self.source = source
        self.end = end
        self.name = source.name
        self.size = source.size
        self.path: Path | None = None

    def open(self) -> HttpStream:
        return HttpStream(self.source, end=self.end)


class HttpStream:
    """The body of one GET, read sequentially; resumes by itself after a dropped connection.
    With `start` / `end`, the bytes [start, end) of the file only (a bounded Range request)."""

    def __init__(self, source: HttpSource, *, start: int = 0, end: int | None = None) -> None:
        self.source = source
        self._parts = parse_url(source.url)
        self._delivered = start  # the file offset of the next byte
        self._end = end
        self._ranged = start > 0 or end is not None
        self._validator: _Validator | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._response: http.client.HTTPResponse | None = None
        self._strikes = 0  # failures since the last byte arrived
        self._drop_reason = ""
        self._closed = False
        self._give_up_at = None if source.deadline is None else source.clock() + source.deadline
        self._connect()

    @property
    def delivered(self) -> int:
        return self._delivered

    # -- RawStream -----------------------------------------------------------------------------

    def readinto(self, buffer: memoryview, /) -> int:
        if self._closed:
            raise ValueError("read from a closed HttpStream")
        if len(buffer) == 0:
            return 0
        while True:
            total = self._validator.total if self._validator else None
            if self._end is not None:
                total = self._end if total is None else min(total, self._end)
                buffer = buffer[: max(0, self._end - self._delivered)]
            if total is not None and self._delivered >= total:
                return 0
            if self._response is None:
                self._connect()
                continue
            try:
                n = self._response.readinto(buffer)
            except ssl.SSLError as exc:
                self._failed(f"TLS error: {exc}")
                continue
            except (OSError, http.client.HTTPException) as exc:
                self._failed(describe_os_error(exc))
                continue
            if n == 0:
                if total is None:
                    return 0  # no length announced: the end of the body is the end of the file
                self._failed("connection closed early")
                continue
            self._delivered += n
            self._strikes = 0
            self._check_deadline()
            return n

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            n = self.readinto(view[filled:])
            if n == 0:
                break
            filled += n
        del view
        del buffer[filled:]
        return bytes(buffer)

    def close(self) -> None:
        self._closed = True
        self._disconnect()

    # -- connections ---------------------------------------------------------------------------

    def _failed(self, reason: str) -> None:
        """Drop the connection, count the failure, wait, or give up when retries are spent."""
        self._disconnect()
        self._drop_reason = reason
        self._strikes += 1
        if self._strikes >= self.source.backoff.attempts:
            raise self._give_up(reason)
        self._check_deadline(reason)
        delay = self.source.backoff.delay(self._strikes)
        if self._give_up_at is not None:
            delay = min(delay, max(0.0, self._give_up_at - self.source.clock()))
        self.source.sleep(delay)

    def _check_deadline(self, reason: str = "") -> None:
        if self._give_up_at is None or self.source.clock() < self._give_up_at:
            return
        self._disconnect()
        total = self._validator.total if self._validator else self.source.size
        where = f"at {format_size(self._delivered)}" + (f" of {format_size(total)}" if total else "")
        last = f"; last failure: {reason or self._drop_reason}" if (reason or self._drop_reason) else ""
        raise ImageFetchError(f"download of {self.source.shown_url} did not finish within "
                              f"{self.source.deadline:.0f} s (stopped {where}{last}); check the network and the "
                              f"server, then {self.source.wording.again}")

    def _give_up(self, reason: str) -> ImageFetchError:
        total = self._validator.total if self._validator else self.source.size
        where = f"at {format_size(self._delivered)}" + (f" of {format_size(total)}" if total else "")
        return ImageFetchError(
            f"download of {self.source.shown_url} failed {where} after {self._strikes} attempts ({reason}); "
            "check the network and that the server is running, then flash again"
        )

    def _connect(self) -> None:
        """(Re)open the body at the current offset, retrying failures worth retrying."""
        while self._response is None:
            try:
                self._response = self._request()
            except _Retry as exc:
                self._failed(str(exc))

    def _disconnect(self) -> None:
        response, conn = self._response, self._conn
        self._response = self._conn = None
        if response is not None:
            response.close()
        if conn is not None:
            conn.close()

    def _request(self) -> http.client.HTTPResponse:
        """One answer for the current offset: redirects followed (when the source wants), a 401
        answered once by the source's Authorizer; then checked by `_check`."""
        source, offset = self.source, self._delivered
        headers = {"User-Agent": source.user_agent, "Accept-Encoding": "identity", **source.headers}
        if offset or self._ranged:
            headers["Range"] = f"bytes={offset}-" + (str(self._end - 1) if self._end is not None else "")
            validator = self._validator or source.validator
            if_range = validator.etag or validator.last_modified if validator else None
            if if_range:
                headers["If-Range"] = if_range
        url, hops, renewed = source.url, 0, False
        while True:
            parts = urlsplit(url)
            own = _same_origin(parts, self._parts)  # the source's credentials go to its own host only
            conn, response = self._send(url, parts, {**headers, **(self._authorization() if own else {})})
            status = response.status
            if source.follow_redirects and status in _REDIRECTS:
                location = response.getheader("Location")
                response.close()
                conn.close()
                url, hops = self._redirected(url, location, hops), hops + 1
                continue
            if status == 401 and own and source.auth is not None and not renewed:
                renewed = True
                try:
                    again = source.auth.renew(response.getheader("WWW-Authenticate"))
                except BaseException:
                    response.close()
                    conn.close()
                    raise
                if again:
                    response.close()
                    conn.close()
                    continue
            break
        try:
            self._check(response, offset)
        except BaseException:
            response.close()
            conn.close()
            raise
        self._conn = conn
        if offset == 0 and not self._ranged:
            source.response_headers = {name.lower(): value for name, value in response.getheaders()}
        if offset and not (self._ranged and self._strikes == 0):
            source.resumes += 1
            if source.on_resume is not None:
                source.on_resume(ResumeNotice(source.shown_url, offset, self._strikes, self._drop_reason))
        return response

    def _authorization(self) -> dict[str, str]:
        source = self.source
        return {**bearer(source.token), **(source.auth.header() if source.auth is not None else {})}

    def _send(self, url: str, parts: SplitResult,
              headers: dict[str, str]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = connect(parts, self.source.timeout, self.source.cafile)
        try:
            conn.request("GET", request_target(parts), headers=headers)
            return conn, conn.getresponse()
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise certificate_error(url, exc) from exc  # it shows the host, not the query
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _Retry(describe_os_error(exc)) from exc

    def _redirected(self, url: str, location: str | None, hops: int) -> str:
        """Where a redirect leads: https:// (or http:// from an http:// source), a few hops at most."""
        shown = self.source.shown_url
        if not location:
            raise ImageFetchError(f"GET {shown} answered a redirect without a Location; "
                                  + self.source.wording.unexpected.format(url=shown, status=""))
        if hops >= MAX_REDIRECTS:
            raise ImageFetchError(f"GET {shown} was redirected more than {MAX_REDIRECTS} times (last to "
                                  f"{shown_url(location)}); check the server")
        target = urljoin(url, location)
        scheme = urlsplit(target).scheme
        allowed = scheme == "https" or (scheme == "http" and self._parts.scheme == "http")
        if not allowed or not urlsplit(target).hostname:
            raise ImageFetchError(f"GET {shown} redirects to {shown_url(target)}: bty follows redirects to https:// "
                                  "only (or to http:// from an http:// server); check the server's storage settings")
        return target

    def _check(self, response: http.client.HTTPResponse, offset: int) -> None:
        """Accept the response only if it continues the same file at `offset`."""
        url, status, wording = self.source.shown_url, response.status, self.source.wording
        if status in (401, 403):
            if wording.refused is not None:
                raise ImageFetchError(wording.refused.format(url=url, status=status))
            raise TokenRefusedError(f"the server refused the token for {url} ({status}); "
                                    "check bty.token= (or --token) against the server's --token-file")
        if status == 404:
            raise NotFoundError(wording.not_found.format(url=url, status=status))
        if status >= 500:
            raise _Retry(f"server error {status} {response.reason}")
        etag, modified = response.getheader("ETag"), response.getheader("Last-Modified")
        if offset == 0 and (not self._ranged or status == 200):  # a server without Range: the whole
            # file answers a head read, which stops reading at its end
            if status != 200:
                location = response.getheader("Location")  # redirects are not followed: say where to
                to = f" (to {shown_url(location)})" if location and 300 <= status < 400 else ""
                raise ImageFetchError(f"GET {url} answered {status} {response.reason}{to}; expected 200: "
                                      + wording.unexpected.format(url=url, status=status))
            length = response.getheader("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if self.source.size is not None and total is not None and total != self.source.size:
                served, announced = format_sizes(total, self.source.size)
                raise ImageFetchError(
                    f"image {url} is {served} on the server but the plan announced "
                    f"{announced}: the image changed after the plan was made; {wording.again}"
                )
            self._first_answer(_Validator(total, etag, modified))
            return
        validator = self._validator or self.source.validator
        if status == 200:
            if validator is not None and (etag, modified) != (validator.etag, validator.last_modified):
                raise self._changed()
            raise ImageFetchError(f"server of {url} ignored the Range request (answered 200, not 206), so the "
                                  "download cannot resume; serve images with `bty serve` or another server "
                                  "with Range support")
        if status != 206:
            raise ImageFetchError(f"resuming {url} at byte {offset} got {status} {response.reason}; expected 206: "
                                  "the image changed or shrank on the server; flash again")
        match = _CONTENT_RANGE.match(response.getheader("Content-Range") or "")
        if not match or int(match.group(1)) != offset:
            raise ImageFetchError(f"resuming {url} at byte {offset} got Content-Range "
                                  f"{response.getheader('Content-Range')!r}; the server did not honour the Range "
                                  "request: serve images with `bty serve`")
        total = int(match.group(3))
        if validator is None:  # the first request of the source is a ranged one: it names the file
            if self.source.size is not None and total != self.source.size:
                served, announced = format_sizes(total, self.source.size)
                raise ImageFetchError(f"image {url} is {served} on the server but the plan announced {announced}: "
                                      f"the image changed after the plan was made; {wording.again}")
            self._first_answer(_Validator(total, etag, modified))
            return
        if (validator.total is not None and total != validator.total) or \
                (validator.etag and etag != validator.etag) or \
                (validator.last_modified and modified != validator.last_modified):
            raise self._changed()
        self._validator = validator

    def _first_answer(self, found: _Validator) -> None:
        """The file a stream starts with must be the file every stream of this source found."""
        source = self.source
        if self._validator is not None and self._validator != found:  # a retry from the first byte
            raise self._changed()
        if source.validator is not None and source.validator != found:
            raise ImageFetchError(f"image {source.shown_url} changed on the server since the plan was made "
                                  f"(another size, ETag or Last-Modified); {source.wording.again}")
        self._validator = source.validator = found
        if source.size is None:
            source.size = found.total

    def _changed(self) -> ImageFetchError:
        return ImageFetchError(f"image {self.source.shown_url} changed on the server during the download "
                               f"(at {format_size(self._delivered)}): the bytes so far belong to another file; "
                               "flash again once the image is stable")


def _same_origin(a: SplitResult, b: SplitResult) -> bool:
    """Same scheme, host and port: where a source's Authorization may go."""
    return (a.scheme, a.hostname, _port(a)) == (b.scheme, b.hostname, _port(b))


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
