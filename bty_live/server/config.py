"""How `bty serve` is configured: directories, the token, the netboot files, the URL machines use."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from bty_live.errors import UsageError
from bty_live.flash.ledger import default_ledger_path
from bty_live.protocol.wire import MIN_TOKEN_LENGTH, TOKEN_CHARS

DEFAULT_KERNEL_ARGS = "console=tty0 console=ttyS0,115200"


@dataclass(frozen=True)
class NetbootFiles:
    """The netboot flavour of the live system, served to iPXE at /netboot/KERNEL and /netboot/INITRD."""

    directory: Path
    kernel: str = "vmlinuz"
    initrd: str = "initrd"
    #: appended to the kernel command line after bty.server=, bty.token= and BOOTIF=
    kernel_args: str = DEFAULT_KERNEL_ARGS

    def path(self, name: str) -> Path | None:
        return self.directory / name if name in (self.kernel, self.initrd) else None


@dataclass(frozen=True)
class ServerConfig:
    images_dir: Path
    state_dir: Path
    token: str
    netboot: NetbootFiles | None = None
    #: the URL machines reach the server at; default: the Host the request came to
    public_url: str | None = None
    #: seconds an agent with nothing to do waits before asking again
    poll: float = 10.0
    #: the known-good ledger (JSON lines, bty_live.flash.ledger); None: ledger.jsonl in images_dir
    ledger: Path | None = None
    #: the operator's token (--admin-token-file): opens the web UI at /ui/; None: the UI is off
    admin_token: str | None = None
    #: served over HTTPS (the UI's session cookie is then Secure)
    https: bool = False

    @property
    def ledger_path(self) -> Path:
        return self.ledger or default_ledger_path(self.images_dir)


def check_token(token: str, where: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH or not TOKEN_CHARS.match(token):
        raise UsageError(f"{where} must hold a token of at least {MIN_TOKEN_LENGTH} characters from "
                         "A-Z a-z 0-9 . _ ~ - (it travels on kernel command lines and in URLs); "
                         "make one with `openssl rand -hex 16`")
    return token


def read_token_file(path: Path) -> str:
    """The token in `path`, checked: a missing, empty, short or oddly spelled token is refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"token file {path} cannot be read ({exc.strerror}); create it with "
                         f"`openssl rand -hex 16 > {path}; chmod 600 {path}`") from exc
    return check_token(text, f"token file {path}")


def token_file_is_private(path: Path) -> bool:
    """False when group or others may read the token file (`bty serve` warns then)."""
    return not path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)
