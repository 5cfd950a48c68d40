"""Run the app under uvicorn: in the foreground (`bty serve`) or in a thread (tests, benchmarks).

The listening socket is bound here, before uvicorn starts, so `--listen 127.0.0.1:0` works and
the caller learns the port before the first request.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from bty_live.errors import UsageError
from bty_live.server.app import create_app
from bty_live.server.config import ServerConfig
from bty_live.server.service import IMAGES_DIR_SETTING
from bty_live.server.state import Store


@dataclass(frozen=True)
class Tls:
    certfile: Path
    keyfile: Path


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (all interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text!r} is not HOST:PORT (e.g. 0.0.0.0:8080 or 127.0.0.1:0 for a free port)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --listen") from exc
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, tls: Tls | None = None) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def make_server(config: ServerConfig, store: Store, tls: Tls | None = None) -> uvicorn.Server:
    uv = uvicorn.Config(
        create_app(config, store),
        log_level="warning",
        access_log=False,  # AccessLog logs without query strings (they may hold the token)
        lifespan="off",
        timeout_keep_alive=30,
        ssl_certfile=str(tls.certfile) if tls else None,
        ssl_keyfile=str(tls.keyfile) if tls else None,
    )
    return uvicorn.Server(uv)


def open_store(config: ServerConfig) -> Store:
    """The state, noting the images directory so `bty serve assign` can check image names."""
    store = Store(config.state_dir)
    store.set_setting(IMAGES_DIR_SETTING, str(config.images_dir.resolve()))
    return store


class ServerThread:
    """`bty serve` in a background thread of this process, on a socket bound beforehand."""

    def __init__(self, config: ServerConfig, host: str = "127.0.0.1", port: int = 0, tls: Tls | None = None) -> None:
        self.store = open_store(config)
        self.socket = bind(host, port)
        self.url = url_of(self.socket, tls)
        self.server = make_server(config, self.store, tls)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                        name="bty-serve", daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("bty serve stopped while starting; see the log")
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self.socket.close()
        self.store.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(config: ServerConfig, host: str, port: int, tls: Tls | None = None) -> None:
    """Run until SIGINT/SIGTERM (uvicorn's handlers), then close the state cleanly."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sock = bind(host, port)
    with open_store(config) as store:
        logging.getLogger("bty.serve").info("serving %s (images %s, state %s)", url_of(sock, tls),
                                            config.images_dir, store.path)
        make_server(config, store, tls).run(sockets=[sock])
