"""Network helpers for server-mode tests: a real `bty serve` in a thread, and a TCP proxy that
cuts connections to inject the failures a real network has.

The proxy sits between a client and the server, one request per connection (which is how
HttpSource and the agent's API client talk). It records each request's line and Range header,
and can cut the first image download that passes a byte count, stop accepting after that cut,
cut every image download after a few bytes (a server that drops all the time), throttle image
downloads, or strip Range headers (a server that ignores them).

Plus the HTTP helpers the server tests share: one request, a JSON call, enrolment; and a plain
static file server with Range support (what a web server, a CDN or S3 is to `bty flash URL`).
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bty_live.protocol.wire import CREDENTIAL_HEADER, machine_path
from bty_live.server.config import NetbootFiles, ServerConfig
from bty_live.server.runner import ServerThread

TOKEN = "test-token-0123456789abcdef"
MAC = "52:54:00:12:34:56"


def make_config(root: Path, images: Path, *, netboot: bool = False, poll: float = 0.05) -> ServerConfig:
    boot = None
    if netboot:
        directory = root / "netboot"
        directory.mkdir(exist_ok=True)
        (directory / "vmlinuz").write_bytes(b"kernel")
        (directory / "initrd").write_bytes(b"initrd")
        boot = NetbootFiles(directory)
    return ServerConfig(images_dir=images, state_dir=root / "state", token=TOKEN, netboot=boot, poll=poll)


@contextlib.contextmanager
def running_server(config: ServerConfig) -> Iterator[ServerThread]:
    server = ServerThread(config).start()
    try:
        yield server
    finally:
        server.stop()


def copy_image(source: Path, images: Path, name: str | None = None) -> Path:
    images.mkdir(parents=True, exist_ok=True)
    target = images / (name or source.name)
    shutil.copy(source, target)
    return target


def request(url: str, method: str, path: str, token: str | None = TOKEN, body: Any = None,
            headers: dict[str, str] | None = None, credential: str | None = None,
            raw: bytes | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:
    """One request on a fresh connection: (status, body, response). `raw` is sent as the body as is."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if credential is not None:
        sent[CREDENTIAL_HEADER] = credential
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    if data is not None:
        sent["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        return response.status, response.read(), response
    finally:
        conn.close()


def api(url: str, method: str, path: str, body: Any = None, credential: str | None = None) -> Any:
    status, payload, _ = request(url, method, path, body=body, credential=credential)
    assert status == 200, payload
    return json.loads(payload)


def inventory(model: str = "QEMU Standard PC", mac: str = MAC) -> dict[str, Any]:
    return {"mac": mac, "machine": {"model": model, "vendor": "QEMU"},
            "disks": [{"name": "nvme0n1", "serial": "S1", "eligible": True, "reasons": []}]}


def enrol(url: str, body: dict[str, Any] | None = None, mac: str = MAC) -> str:
    """The machine's first inventory, with the shared token only: the answer holds its credential."""
    answer = api(url, "POST", machine_path(mac, "inventory"), body or inventory(mac=mac))
    assert isinstance(answer["credential"], str) and len(answer["credential"]) >= 32
    return str(answer["credential"])


@dataclass
class Seen:
    request_line: str
    range: str | None
    sent: int = 0  # response bytes passed to the client


@dataclass
class CutProxy:
    """Forwards 127.0.0.1:port to `upstream` (host, port)."""

    upstream: tuple[str, int]
    #: cut the first image download (GET /images/...) that passes this many bytes (None: never)
    cut_after: int | None = None
    #: after the cut, refuse every new connection (the server is gone)
    die_after_cut: bool = False
    #: drop Range and If-Range from requests (a server without Range support)
    strip_range: bool = False
    #: called just before the cut (e.g. to change the image on the server)
    on_cut: Callable[[], None] | None = None
    #: cut every GET /images/ response after this many bytes (headers included)
    cut_every: int | None = None
    #: bytes per second of GET /images/ responses (None: as fast as it goes)
    rate: float | None = None
    #: which request lines are image downloads (what the cuts, the rate and the counts above apply to):
    #: `bty serve`'s and FileServer's /images/; an OCI registry's blobs are `GET /v2/.../blobs/`
    image_request: re.Pattern[str] = re.compile(r"^GET /images/")
    seen: list[Seen] = field(default_factory=list)
    cuts: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def range_requests(self) -> list[str]:
        return [s.range for s in self.seen if s.range]

    def resumes(self) -> list[str]:
        """The open-ended Range requests ("bytes=N-"): a dropped download resumed. Bounded ones
        ("bytes=N-M") read a head, a seek table or a differential flash's frames."""
        return [r for r in self.range_requests() if r.endswith("-")]

    def close(self) -> None:
        """Stop listening: new connections are refused (shutdown wakes the blocked accept)."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            head += chunk
        head_bytes, _, rest = head.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        range_header = next((line.split(":", 1)[1].strip() for line in lines[1:]
                             if line.lower().startswith("range:")), None)
        if self.strip_range:
            lines = [line for line in lines if not line.lower().startswith(("range:", "if-range:"))]
        seen = Seen(lines[0], range_header)
        with self._lock:
            self.seen.append(seen)
        upstream = socket.create_connection(self.upstream)
        upstream.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + rest)
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        image = bool(self.image_request.match(lines[0]))
        cut_here = self.cut_after is not None and image
        try:
            while True:
                data = upstream.recv(1 << 16 if self.rate and image else 1 << 20)
                if not data:
                    break
                if self.cut_every is not None and image and seen.sent + len(data) >= self.cut_every:
                    client.sendall(data[:self.cut_every - seen.sent])
                    return
                if self.rate and image:
                    time.sleep(len(data) / self.rate)
                if cut_here and self._should_cut(seen, len(data)):
                    if self.on_cut is not None:
                        self.on_cut()
                    if self.die_after_cut:
                        self.close()
                    return
                client.sendall(data)
                seen.sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _should_cut(self, seen: Seen, incoming: int) -> bool:
        with self._lock:
            if self.cuts or self.cut_after is None or seen.sent + incoming <= self.cut_after:
                return False
            self.cuts += 1
            return True

    @staticmethod
    def _pump(client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass


def served_images(root: Path) -> Path:
    """root/images holding demo.img (1 MiB of random bytes) with its manifest: an image the
    server offers, for tests about the server rather than about flashing."""
    from bty_live import cli

    directory = root / "images"
    directory.mkdir(exist_ok=True)
    (directory / "demo.img").write_bytes(os.urandom(1 << 20))
    assert cli.main(["images", "add", str(directory / "demo.img")]) == 0
    return directory


# -- a static file server ---------------------------------------------------------------------------

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _FileHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of the files under /images/ with Range (bytes=N- and N-M), If-Range, ETag and
    Last-Modified, one request per connection. Python 3.11's SimpleHTTPRequestHandler has no
    Range support, and a resume needs it."""

    server: FileServer

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _serve(self, *, body: bool) -> None:
        parts = urlsplit(self.path)
        self.server.requests.append(self.path)
        self.server.authorizations.append(self.headers.get("Authorization"))
        if self.server.require_query is not None and parts.query != self.server.require_query:
            return self._status(403)
        path = self.server.directory / unquote(parts.path.removeprefix("/images/"))
        if not parts.path.startswith("/images/") or not path.is_file():
            return self._status(404)
        with open(path, "rb") as f:  # opened once: a file replaced meanwhile is served whole
            st = os.fstat(f.fileno())
            etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
            modified = email.utils.formatdate(st.st_mtime, usegmt=True)
            start, end, status = 0, st.st_size - 1, 200
            wanted = _RANGE.match(self.headers.get("Range") or "")
            if wanted and self.headers.get("If-Range") in (None, etag, modified):
                start, status = int(wanted.group(1)), 206
                end = min(int(wanted.group(2)), end) if wanted.group(2) else end
            self.send_response(status)
            self.send_header("Content-Length", str(end + 1 - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{st.st_size}")
            self.end_headers()
            if body:
                f.seek(start)
                left = end + 1 - start
                with contextlib.suppress(OSError):  # the client went away
                    while left > 0 and (chunk := f.read(min(left, 1 << 20))):
                        self.wfile.write(chunk)
                        left -= len(chunk)

    def _status(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class FileServer(http.server.ThreadingHTTPServer):
    """Serves `directory` at /images/ on 127.0.0.1; `require_query` answers 403 to any request
    without exactly that query string (a presigned URL's signature); `requests` lists the paths
    asked for, query strings included."""

    daemon_threads = True

    def __init__(self, directory: Path, *, require_query: str | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _FileHandler)
        self.directory = directory
        self.require_query = require_query
        self.requests: list[str] = []
        #: the Authorization header of each request (None when it had none)
        self.authorizations: list[str | None] = []
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.address[1]}"


@contextlib.contextmanager
def serving_files(directory: Path, *, require_query: str | None = None,
                  tls: tuple[Path, Path] | None = None) -> Iterator[FileServer]:
    server = FileServer(directory, require_query=require_query, tls=tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _RedirectHandler(http.server.BaseHTTPRequestHandler):
    server: Redirector

    def do_GET(self) -> None:
        self.server.authorizations.append(self.headers.get("Authorization"))
        self.send_response(self.server.status)
        self.send_header("Location", self.server.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class Redirector(http.server.ThreadingHTTPServer):
    """Answers every GET with `status` (307) to `target` + the path (a registry sending blob GETs to
    its storage); `authorizations` lists the Authorization header each request carried."""

    daemon_threads = True

    def __init__(self, target: str, *, status: int = 307, tls: tuple[Path, Path] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _RedirectHandler)
        self.target = target
        self.status = status
        self.authorizations: list[str | None] = []
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def serving_redirects(target: str, **options: Any) -> Iterator[Redirector]:
    server = Redirector(target, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem) for 127.0.0.1 and localhost, made by openssl: a CA no system trusts."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


# -- `bty flash` of a network image, as the URL and OCI tests run it -------------------------------


def bty_flash(image: str, target: Any, tmp_path: Path, *extra: str) -> int:
    """`bty flash IMAGE TARGET --yes`, its receipt and ledger in `tmp_path`; `target` is a path or a
    loop device (anything with `.path`)."""
    from bty_live import cli

    return cli.main(["flash", image, str(getattr(target, "path", target)), "--yes",
                     "--receipt", str(tmp_path / "receipt.json"), "--ledger", str(tmp_path / "ledger.jsonl"), *extra])


def receipt_of(tmp_path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((tmp_path / "receipt.json").read_text())
    return data


def one_line(err: str) -> str:
    """The whole of stderr, which must be one line (a failure before the plan was printed)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]
