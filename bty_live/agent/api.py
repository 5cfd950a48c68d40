"""The agent's side of the JSON API (see bty_live.protocol.wire), over http.client.

Each call is one attempt on a fresh connection and raises: `ServerUnavailableError` (unreachable,
timeout, 5xx: try again later), `TokenRefusedError` (401/403: fatal), `ServerRejectedError`
(other 4xx, or an answer this agent cannot use). Retrying is the caller's decision.

The agent starts with the shared token only. Its first inventory enrols the machine: the answer
carries the machine's own credential, which this client keeps (in memory only) and sends with
every later request in `X-Bty-Credential`.
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from bty_live import __version__
from bty_live.errors import RunWithdrawnError, ServerRejectedError, ServerUnavailableError, TokenRefusedError
from bty_live.protocol.httpconn import certificate_error, connect, describe_os_error, parse_url, request_target
from bty_live.protocol.wire import AgentPlan, bearer, credential_header, machine_path


class ServerApi:
    def __init__(self, server: str, token: str | None, *, cafile: Path | None = None, timeout: float = 30.0) -> None:
        parse_url(server)
        self.server = server.rstrip("/")
        self.token = token
        self.cafile = cafile
        self.timeout = timeout
        #: this machine's own credential, once the server issued it (enrolment)
        self.credential: str | None = None

    def url(self, href: str) -> str:
        """An absolute URL for a path the server gave (e.g. an image's /images/FILE)."""
        return urljoin(self.server + "/", href)

    def is_server(self, url: str) -> bool:
        """True when `url` is on this server (same scheme, host and port): only then does it get the token."""
        return _origin(url) == _origin(self.server)

    def post_inventory(self, mac: str, inventory: dict[str, Any]) -> None:
        """Register; the first time (no credential yet) this enrols and keeps the credential."""
        answer = self.request("POST", machine_path(mac, "inventory"), inventory)
        issued = answer.get("credential") if isinstance(answer, dict) else None
        if self.credential is None:
            if not isinstance(issued, str) or not issued:
                raise ServerRejectedError(f"server {self.server} issued no credential for {mac}; run the same "
                                          "bty-live version on the server and the netboot image")
            self.credential = issued

    def plan(self, mac: str) -> AgentPlan:
        answer = self.request("GET", machine_path(mac, "plan"))
        try:
            return AgentPlan.from_dict(answer)
        except ValueError as exc:
            raise ServerRejectedError(f"server {self.server} sent a plan this agent cannot use ({exc}); "
                                      "run the same bty-live version on the server and the netboot image") from exc

    def post_events(self, mac: str, run_id: str, events: list[dict[str, Any]]) -> None:
        self.request("POST", machine_path(mac, "events"), {"run_id": run_id, "events": events})

    def post_receipt(self, mac: str, run_id: str, receipt: dict[str, Any]) -> None:
        self.request("POST", machine_path(mac, "receipt"), {"run_id": run_id, "receipt": receipt})

    def post_ledger(self, mac: str, run_id: str, record: dict[str, Any]) -> None:
        self.request("POST", machine_path(mac, "ledger"), {"run_id": run_id, "record": record})

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; the parsed answer, or one of the errors above."""
        url = self.url(path)
        parts = parse_url(url)
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json", "User-Agent": f"bty-agent/{__version__}", **bearer(self.token),
                   **credential_header(self.credential)}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = connect(parts, self.timeout, self.cafile)
        try:
            conn.request(method, request_target(parts), body=data, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except ssl.SSLCertVerificationError as exc:
            raise certificate_error(url, exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ServerUnavailableError(f"server {self.server} cannot be reached ({describe_os_error(exc)}); "
                                         "check the network and that `bty serve` is running") from exc
        finally:
            conn.close()
        status = response.status
        if status in (401, 403):
            why = _error_text(payload)
            if "credential" in why or "enrolled" in why:
                raise TokenRefusedError(f"server {self.server} refused {method} {path} ({status}: {why})")
            raise TokenRefusedError(f"server {self.server} refused the token ({status}); check bty.token= "
                                    "(or --token) against the server's --token-file")
        if status >= 500:
            raise ServerUnavailableError(f"server {self.server} failed: {method} {path} answered {status}; "
                                         "see the server's log")
        if status == 409:
            raise RunWithdrawnError(f"server {self.server} is no longer on this run ({_error_text(payload)}): "
                                    "the operator cancelled it or assigned the machine anew")
        if status >= 400:
            raise ServerRejectedError(f"server {self.server} rejected {method} {path} ({status}: "
                                      f"{_error_text(payload)}); run the same bty-live version on both sides")
        try:
            return json.loads(payload or b"null")
        except ValueError as exc:
            raise ServerRejectedError(f"server {self.server} answered {method} {path} with something that is not "
                                      "JSON; is --server the URL of `bty serve`?") from exc


def _origin(url: str) -> tuple[str, str, int]:
    parts = parse_url(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _error_text(payload: bytes) -> str:
    try:
        answer = json.loads(payload)
    except ValueError:
        return payload[:200].decode(errors="replace")
    return str(answer.get("error")) if isinstance(answer, dict) else str(answer)[:200]
