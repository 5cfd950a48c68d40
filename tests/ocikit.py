"""OCI registry helpers for tests: the reference registry (Debian's docker-registry, distribution
2.8) on loopback with its storage in a temporary directory, pushes with the `oras` Python package
(what users push with), and a token gate in front of the registry (a registry's auth and a
storage redirect, as Docker Hub and GHCR have them).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    """A port free right now (the registry cannot listen on port 0 and say which it got)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    """A running docker-registry: `host` is what references name (127.0.0.1:PORT)."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps the blob (or manifest) with this digest."""
        hexdigest = digest.removeprefix("sha256:")
        return self.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def push(self, reference: str, files: list[Path]) -> str:
        """`oras push HOST/REFERENCE FILE...` (each a layer titled with its file name); the
        manifest's digest."""
        import oras.client

        client = oras.client.OrasClient(insecure=True)
        response = client.push(target=f"{self.host}/{reference}", files=[str(f) for f in files],
                               disable_path_validation=True, quiet=True)
        digest = response.headers["Docker-Content-Digest"]
        assert isinstance(digest, str) and digest.startswith("sha256:")
        return digest

    def layers(self, manifest_digest: str) -> dict[str, str]:
        """title -> digest of the layers of a pushed manifest (read from the registry's storage)."""
        data = json.loads(self.blob_file(manifest_digest).read_bytes())
        return {layer["annotations"]["org.opencontainers.image.title"]: layer["digest"] for layer in data["layers"]}


@contextlib.contextmanager
def running_registry(directory: Path) -> Iterator[Registry]:
    """docker-registry serving from `directory`, started here (never the system's service)."""
    root = directory / "storage"
    root.mkdir(parents=True)
    port = free_port()
    config = directory / "config.yml"
    config.write_text(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
""")
    log = open(directory / "registry.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port, process, directory / "registry.log")
        yield Registry(root, port, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/v2/")
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        time.sleep(0.1)
    raise RuntimeError("docker-registry did not answer /v2/ within 20 s")


# -- a token gate ----------------------------------------------------------------------------------

GATE_TOKEN = "gate-token-SECRET-5f3a9c"
#: headers a proxied answer keeps
_KEPT = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "ETag", "Docker-Content-Digest",
         "Last-Modified")


class _GateHandler(http.server.BaseHTTPRequestHandler):
    server: TokenGate
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        gate, parts = self.server, urlsplit(self.path)
        if parts.path == "/token":
            return self._token(parse_qs(parts.query))
        if parts.path.startswith("/storage/"):  # "the CDN": another host name, no registry token
            gate.storage_authorizations.append(self.headers.get("Authorization"))
            return self._proxy(parts.path.removeprefix("/storage"))
        if self.headers.get("Authorization") != f"Bearer {GATE_TOKEN}":
            gate.challenges += 1
            repository = parts.path.removeprefix("/v2/").split("/manifests/")[0].split("/blobs/")[0]
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://127.0.0.1:{gate.port}/token",'
                                                 f'service="gate",scope="repository:{repository}:pull"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if gate.redirect_blobs and "/blobs/" in parts.path:
            self.send_response(307)
            self.send_header("Location", f"http://localhost:{gate.port}/storage{parts.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return self._proxy(parts.path)

    def _token(self, query: dict[str, list[str]]) -> None:
        gate = self.server
        gate.scopes.extend(query.get("scope", []))
        if gate.users:
            given = self.headers.get("Authorization") or ""
            allowed = {"Basic " + base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in gate.users.items()}
            if given not in allowed:
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = json.dumps({"token": GATE_TOKEN, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _proxy(self, path: str) -> None:
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        headers = {k: v for k in ("Accept", "Range", "If-Range") if (v := self.headers.get(k))}
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            self.send_response(response.status)
            for name in _KEPT:
                if (value := response.getheader(name)) is not None:
                    self.send_header(name, value)
            self.end_headers()
            with contextlib.suppress(OSError):
                while chunk := response.read(1 << 20):
                    self.wfile.write(chunk)
        finally:
            conn.close()


class TokenGate(http.server.ThreadingHTTPServer):
    """In front of `upstream` (a registry): /v2/ wants `Bearer GATE_TOKEN` (401 with a Bearer
    challenge otherwise), /token hands it out (anonymously, or to `users` only), and blob GETs are
    redirected (307) to /storage/ on http://localhost:PORT, "the CDN", which records the
    Authorization it was sent."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int], *, users: dict[str, str] | None = None,
                 redirect_blobs: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _GateHandler)
        self.upstream = upstream
        self.users = users or {}
        self.redirect_blobs = redirect_blobs
        self.port = int(self.server_address[1])
        self.scopes: list[str] = []
        self.storage_authorizations: list[str | None] = []
        self.challenges = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def running_gate(upstream: tuple[str, int], **options: Any) -> Iterator[TokenGate]:
    gate = TokenGate(upstream, **options)
    thread = threading.Thread(target=gate.serve_forever, daemon=True)
    thread.start()
    try:
        yield gate
    finally:
        gate.shutdown()
        gate.server_close()
        thread.join()


@dataclass
class AuthFile:
    """A containers-auth.json / docker config.json with one login."""

    path: Path
    logins: dict[str, tuple[str, str]] = field(default_factory=dict)

    def write(self) -> Path:
        auths = {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
                 for host, (user, password) in self.logins.items()}
        self.path.write_text(json.dumps({"auths": auths}))
        return self.path
