"""The agent's side of the JSON API (see bty_live.protocol), over http.client.

Each call is one attempt on a fresh connection and raises: `ServerUnavailableError` (unreachable,
timeout, 5xx: try again later), `TokenRefusedError` (401/403: fatal), `ServerRejectedError`
(other 4xx, or an answer this agent cannot use). Retrying is the caller's decision.
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from bty_live import __version__
from bty_live.httpconn import (
    ServerRejectedError,
    ServerUnavailableError,
    TokenRefusedError,
    certificate_error,
    connect,
    describe_os_error,
    parse_url,
    request_target,
)
from bty_live.protocol import AgentPlan, bearer, machine_path


class ServerApi:
    def __init__(self, server: str, token: str | None, *, cafile: Path | None = None, timeout: float = 30.0) -> None:
        parse_url(server)
        self.server = server.rstrip("/")
        self.token = token
        self.cafile = cafile
        self.timeout = timeout

    def url(self, href: str) -> str:
        """An absolute URL for a path the server gave (e.g. an image's /images/FILE)."""
        return urljoin(self.server + "/", href)

    def post_inventory(self, mac: str, inventory: dict[str, Any]) -> None:
        self.request("POST", machine_path(mac, "inventory"), inventory)

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
        headers = {"Accept": "application/json", "User-Agent": f"bty-agent/{__version__}", **bearer(self.token)}
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
            raise TokenRefusedError(f"server {self.server} refused the token ({status}); check bty.token= "
                                    "(or --token) against the server's --token-file")
        if status >= 500:
            raise ServerUnavailableError(f"server {self.server} failed: {method} {path} answered {status}; "
                                         "see the server's log")
        if status >= 400:
            raise ServerRejectedError(f"server {self.server} rejected {method} {path} ({status}: "
                                      f"{_error_text(payload)}); run the same bty-live version on both sides")
        try:
            return json.loads(payload or b"null")
        except ValueError as exc:
            raise ServerRejectedError(f"server {self.server} answered {method} {path} with something that is not "
                                      "JSON; is --server the URL of `bty serve`?") from exc


def _error_text(payload: bytes) -> str:
    try:
        answer = json.loads(payload)
    except ValueError:
        return payload[:200].decode(errors="replace")
    return str(answer.get("error")) if isinstance(answer, dict) else str(answer)[:200]
