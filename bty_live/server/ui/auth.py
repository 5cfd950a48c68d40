"""Who may use the operator's UI: the admin token, as a signed session cookie or a Bearer header.

- Browsers log in on a form with the admin token and get a session cookie: a random session id,
  an expiry and an HMAC over both, HttpOnly, SameSite=Strict, Path=/ui, Secure behind HTTPS.
  The HMAC key is derived from the admin token and a secret drawn when the server starts, so a
  new admin token or a restart ends every session, and logging out ends that session for good
  (its id is remembered as revoked until it would have expired).
- Every form that changes something carries a CSRF token: an HMAC of the session id, checked on
  POST together with the Origin header when the browser sends one. SameSite=Strict alone would
  already keep the cookie off cross-site requests; the token covers browsers that ignore it.
- Scripts send `Authorization: Bearer ADMIN_TOKEN` (no cookie, so no CSRF check).
- The agents' shared token and their per-machine credentials open nothing here (403).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "bty_session"
#: how long a browser session lasts without logging in again
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    """A logged-in browser (or a script with the Bearer token: `sid` empty, no CSRF needed)."""

    sid: str
    expires: int

    @property
    def by_bearer(self) -> bool:
        return not self.sid


class AdminAuth:
    """Signs and checks sessions and CSRF tokens with a key derived from the admin token."""

    def __init__(self, admin_token: str, agent_token: str, *, now: Callable[[], float] = time.time) -> None:
        self._admin = admin_token.encode()
        self._agent = agent_token.encode()
        self._key = hashlib.sha256(b"bty-ui-session\0" + self._admin + secrets.token_bytes(32)).digest()
        self._now = now
        self._revoked: dict[str, int] = {}

    # -- the token itself --------------------------------------------------------------------

    def is_admin_token(self, offered: str) -> bool:
        return hmac.compare_digest(offered.strip().encode(), self._admin)

    def is_agent_token(self, offered: str) -> bool:
        return hmac.compare_digest(offered.strip().encode(), self._agent)

    # -- sessions ----------------------------------------------------------------------------

    def new_session(self) -> tuple[Session, str]:
        """A fresh session and the cookie value that carries it."""
        session = Session(sid=secrets.token_urlsafe(18), expires=int(self._now()) + SESSION_SECONDS)
        return session, f"{session.sid}.{session.expires}.{self._sign(f'{session.sid}.{session.expires}')}"

    def session_from_cookie(self, value: str | None) -> Session | None:
        """The session a cookie holds, if it is ours, intact and not expired."""
        if not value or value.count(".") != 2:
            return None
        sid, expires, signature = value.split(".")
        if not expires.isdigit() or not hmac.compare_digest(signature, self._sign(f"{sid}.{expires}")):
            return None
        if int(expires) < self._now() or sid in self._revoked:
            return None
        return Session(sid=sid, expires=int(expires))

    def end(self, session: Session) -> None:
        """Log a session out: its cookie opens nothing any more, wherever a copy of it is."""
        now = self._now()
        self._revoked = {sid: expires for sid, expires in self._revoked.items() if expires >= now}
        if not session.by_bearer:
            self._revoked[session.sid] = session.expires

    # -- CSRF --------------------------------------------------------------------------------

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf.{session.sid}")

    def csrf_ok(self, session: Session, offered: str | None) -> bool:
        if session.by_bearer:
            return True  # no cookie was used: a cross-site page cannot send the Bearer header
        return bool(offered) and hmac.compare_digest(str(offered), self.csrf_token(session))

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
