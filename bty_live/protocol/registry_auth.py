"""Pulling from an OCI registry with the user's credentials, or none: the registry token dance.

A registry answers an anonymous request with `401` and `WWW-Authenticate: Bearer realm=URL,
service=S,scope=repository:REPO:pull`; the client then GETs `URL?service=S&scope=...` (with the
user's login as Basic credentials when it has one, anonymously otherwise) and sends the token it
gets as `Authorization: Bearer T`. Public images on the big public registries work anonymously; a
registry that wants Basic credentials directly (`WWW-Authenticate: Basic`) gets them.

The user's login comes from the file `REGISTRY_AUTH_FILE` names (podman, skopeo, oras), else
`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (`docker login`, `oras login`): the
`auth` entry (base64 of user:password) of the registry's host. Credential helpers (`credsStore`,
`credHelpers`) and identity tokens are not read: the live stick has none.

Tokens and credentials go into requests only: no message, event, receipt or ledger shows them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from bty_live.errors import ImageFetchError, UsageError
from bty_live.protocol.httpconn import connect, describe_os_error, request_target, shown_url

#: a token answer is a few KiB; more is not a token
TOKEN_LIMIT = 1 << 20

_PARAM = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    """A parsed `WWW-Authenticate` header: its scheme (lower-case) and parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenge(header: str | None) -> Challenge | None:
    """`Bearer realm="https://auth/token",service="reg",scope="repository:a/b:pull"` -> Challenge;
    None for a missing or empty header."""
    if not header or not header.strip():
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
              for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


@dataclass(frozen=True)
class Credential:
    """A stored login: base64 of user:password, and the file it came from (for messages)."""

    basic: str = field(repr=False)
    origin: Path


def _auth_files(environ: Mapping[str, str], home: Path) -> list[Path]:
    """Where logins are looked for, in order."""
    files = []
    if environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(environ["REGISTRY_AUTH_FILE"]))
    if environ.get("DOCKER_CONFIG"):
        files.append(Path(environ["DOCKER_CONFIG"]) / "config.json")
    files.append(home / ".docker" / "config.json")
    return files


def _key_host(key: str) -> str:
    """An `auths` key ("host:5000", "https://host/v1/") -> "host:5000"."""
    return urlsplit(key if "://" in key else f"//{key}").netloc.lower()


def stored_credential(host: str, environ: Mapping[str, str] | None = None,
                      home: Path | None = None) -> Credential | None:
    """The login for registry `host` (host[:port]) from the first auth file that has one."""
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    wanted = host.lower()  # the registry's API host, as named in the reference
    for path in _auth_files(environ, home):
        auths = _read_auths(path)
        for key, entry in auths.items():
            if _key_host(key) == wanted and isinstance(entry, dict) and isinstance(entry.get("auth"), str):
                return Credential(_checked_basic(entry["auth"], path), path)
    return None


def _read_auths(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"registry credentials file {path} cannot be read ({type(exc).__name__}); fix it, or "
                         "point REGISTRY_AUTH_FILE at another") from exc
    auths = data.get("auths") if isinstance(data, dict) else None
    return auths if isinstance(auths, dict) else {}


def _checked_basic(value: str, path: Path) -> str:
    """The `auth` entry, if it is base64 of user:password (never shown: it is the password)."""
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise UsageError(f"registry credentials file {path}: an `auth` entry is not base64 of user:password; "
                         "log in again (docker login, oras login)") from exc
    if ":" not in decoded:
        raise UsageError(f"registry credentials file {path}: an `auth` entry is not base64 of user:password; "
                         "log in again (docker login, oras login)")
    return value


class RegistryAuth:
    """The Authorization a registry wants, renewed after each 401 (an `Authorizer` for HttpSource).

    `registry` is the registry's base URL (scheme://host[:port]); `repository` the one pulled from
    (the scope asked for when a challenge names none)."""

    def __init__(self, registry: str, repository: str, credential: Credential | None, *,
                 cafile: Path | None = None, timeout: float = 30.0, user_agent: str = "bty") -> None:
        self.registry = registry
        self.repository = repository
        self.credential = credential
        self.cafile = cafile
        self.timeout = timeout
        self.user_agent = user_agent
        self._authorization: str | None = None

    def __repr__(self) -> str:  # never the token
        return f"RegistryAuth({self.registry}, {self.repository})"

    def header(self) -> dict[str, str]:
        return {"Authorization": self._authorization} if self._authorization else {}

    def renew(self, challenge: str | None) -> bool:
        parsed = parse_challenge(challenge)
        if parsed is None:
            return False
        if parsed.scheme == "basic":
            return self._use(f"Basic {self.credential.basic}" if self.credential else None)
        if parsed.scheme == "bearer" and parsed.params.get("realm"):
            token = self._fetch_token(parsed.params)
            return self._use(f"Bearer {token}" if token else None)
        return False

    def _use(self, authorization: str | None) -> bool:
        """Take a new Authorization; False when there is none (or the same one failed already)."""
        if authorization is None or authorization == self._authorization and authorization.startswith("Basic"):
            return False
        self._authorization = authorization
        return True

    def _fetch_token(self, params: dict[str, str]) -> str | None:
        """A token from the challenge's realm; None when it refuses an anonymous request (the
        registry's 401 then stands: the image needs a login)."""
        realm = params["realm"]
        query = {k: params[k] for k in ("service",) if params.get(k)}
        query["scope"] = params.get("scope") or f"repository:{self.repository}:pull"
        url = realm + ("&" if urlsplit(realm).query else "?") + urlencode(query)
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and urlsplit(self.registry).scheme == "http"):
            raise ImageFetchError(f"registry {shown_url(self.registry)} sends bty for a token to {shown_url(realm)}, "
                                  "which is not https://; refusing to ask it (check the registry's auth settings)")
        headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        if self.credential is not None:
            headers["Authorization"] = f"Basic {self.credential.basic}"
        status, body = self._get(url, headers)
        if status in (401, 403):
            if self.credential is None:
                return None
            raise ImageFetchError(f"the token service {shown_url(realm)} refused the login for "
                                  f"{shown_url(self.registry)} from {self.credential.origin} (HTTP {status}); "
                                  "log in again (docker login, oras login)")
        if status != 200:
            raise ImageFetchError(f"the token service {shown_url(realm)} of registry {shown_url(self.registry)} "
                                  f"answered HTTP {status}; try again later, or check the registry")
        return _token_of(body, realm)

    def _get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        import http.client  # with the connection: see bty_live.protocol.httpconn

        parts = urlsplit(url)
        conn = connect(parts, self.timeout, self.cafile)
        try:
            conn.request("GET", request_target(parts), headers=headers)
            response = conn.getresponse()
            return response.status, response.read(TOKEN_LIMIT)
        except (OSError, http.client.HTTPException) as exc:
            raise ImageFetchError(f"the token service {shown_url(url)} of registry {shown_url(self.registry)} "
                                  f"cannot be reached ({describe_os_error(exc)}); check the network") from exc
        finally:
            conn.close()


def _token_of(body: bytes, realm: str) -> str:
    """The token of a token service's JSON answer ("token", or OAuth2's "access_token")."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise ImageFetchError(f"the token service {shown_url(realm)} answered no token; check the registry")
    return token
