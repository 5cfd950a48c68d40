"""The operator's pages and actions, mounted at /ui on `bty serve`'s app.

    GET  /ui/login, POST /ui/login      the form that turns the admin token into a session cookie
    POST /ui/logout                     ends the session (CSRF-checked)
    GET  /ui/                           machines: status, live progress, plan, last result; filter, sort
    GET  /ui/machines/{mac}             one machine: inventory, plan, events of its run, receipts
    GET  /ui/images                     what can be served, and how each machine model fared with it
    POST /ui/assign                     one plan for every selected machine, or cancel theirs (CSRF-checked)
    GET  /ui/events                     Server-Sent Events: machine rows as they change (Last-Event-ID)
    GET  /ui/static/{file}              htmx, its SSE extension, the stylesheet (public: no secrets)

Everything but the login form and the static files needs the admin credential (`auth.py`);
an agent's token or credential is refused with 403, nothing else answered.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from bty_live.errors import BtyError, LedgerError
from bty_live.flash.ledger import LedgerRecord, read_ledger
from bty_live.image.remote import is_image_url
from bty_live.protocol.httpconn import shown_url
from bty_live.protocol.wire import CREDENTIAL_HEADER, Action, bearer_token, normalise_mac
from bty_live.server.images import list_served
from bty_live.server.service import Deployments
from bty_live.server.state import MachineRecord, PlanRecord, Store
from bty_live.server.ui.auth import COOKIE, SESSION_SECONDS, AdminAuth, Session
from bty_live.server.ui.rows import ImageRow, MachineRow, image_rows, machine_row, seen_at

HERE = Path(__file__).parent
#: how often a live view looks for news in the store
POLL_SECONDS = 0.5
#: a comment line this often keeps proxies from closing an idle stream
KEEPALIVE_SECONDS = 15.0
SORTS = {
    "mac": lambda r: r.mac,
    "model": lambda r: (r.model.lower(), r.mac),
    "status": lambda r: (r.status, r.mac),
    "seen": lambda r: -r.last_seen_at,
}
Handler = Callable[[Request, Session], Awaitable[Response]]
#: the bulk action that takes the selected machines' plans away (a running flash stops, wiped)
CANCEL = "cancel"


class SharedRows:
    """The rows every live view draws, computed at most once per `max_age` seconds whatever the
    number of views (each view only compares them with what it sent last)."""

    def __init__(self, compute: Callable[[], list[MachineRow]], max_age: float = POLL_SECONDS) -> None:
        self._compute = compute
        self._max_age = max_age
        self._lock = threading.Lock()
        self._rows: list[MachineRow] = []
        self._at = -float("inf")

    def get(self) -> list[MachineRow]:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self._max_age:
                self._rows = self._compute()
                self._at = now
            return self._rows


def create_ui(store: Store, service: Deployments, auth: AdminAuth, *, images_dir: Path | None,
              secure_cookie: bool) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    def page(request: Request, name: str, session: Session | None, status: int = 200, **context: Any) -> Response:
        csrf = auth.csrf_token(session) if session is not None and not session.by_bearer else ""
        return templates.TemplateResponse(request, name, {"csrf": csrf, "logged_in": session is not None, **context},
                                          status_code=status)

    def row_of(machine: MachineRecord, plan: PlanRecord | None, now: float) -> MachineRow:
        progress = store.last_progress(machine.mac, plan.run_id) if plan is not None else None
        return machine_row(machine, plan, store.last_receipt(machine.mac), progress, now)

    def rows(query: str = "", sort: str = "mac") -> list[MachineRow]:
        now = time.time()
        found = [row_of(machine, store.plan(machine.mac), now) for machine in store.machines()]
        if query:
            needle = query.lower()
            found = [r for r in found if any(needle in cell.lower() for cell in
                                             (r.mac, r.model, r.serial, r.status, r.plan, r.disks))]
        return sorted(found, key=SORTS.get(sort, SORTS["mac"]))

    live_rows = SharedRows(rows)

    # -- the gate ----------------------------------------------------------------------------

    def session_of(request: Request) -> Session | Response:
        """The caller's session, or the answer to give instead (403, 401 or the login form)."""
        offered = bearer_token(request.headers.get("authorization"))
        if offered is not None:
            if auth.is_admin_token(offered):
                return Session(sid="", expires=0)
            return PlainTextResponse("this token does not open the operator UI: it needs the token of "
                                     "`bty serve --admin-token-file`, not the agents' token", status_code=403)
        if CREDENTIAL_HEADER.lower() in request.headers:
            return PlainTextResponse("a machine's credential does not open the operator UI", status_code=403)
        session = auth.session_from_cookie(request.cookies.get(COOKIE))
        if session is not None:
            return session
        if request.method in ("GET", "HEAD") and request.url.path != "/ui/events":
            return RedirectResponse(f"/ui/login?next={request.url.path}", status_code=303)
        return PlainTextResponse("log in first (POST /ui/login) or send Authorization: Bearer ADMIN_TOKEN",
                                 status_code=401)

    def admin(handler: Handler, *, csrf: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def gated(request: Request) -> Response:
            found = session_of(request)
            if isinstance(found, Response):
                return found
            if csrf:
                form = await request.form()
                if not same_origin(request) or not auth.csrf_ok(found, str(form.get("csrf") or "")):
                    return PlainTextResponse("this form is stale or came from another site (CSRF check failed); "
                                             "reload the page and try again", status_code=403)
            return await handler(request, found)

        return gated

    # -- login -------------------------------------------------------------------------------

    async def login_form(request: Request) -> Response:
        return page(request, "login.html", None, next=safe_next(request.query_params.get("next")), message="")

    async def login(request: Request) -> Response:
        form = await request.form()
        offered = str(form.get("token") or "")
        target = safe_next(str(form.get("next") or ""))
        if not same_origin(request):
            return page(request, "login.html", None, 403, next=target, message="This form came from another site.")
        if not auth.is_admin_token(offered):
            message = ("That is the agents' token (--token-file): the UI needs the operator's token "
                       "(--admin-token-file)." if auth.is_agent_token(offered) else "Wrong token.")
            return page(request, "login.html", None, 401, next=target, message=message)
        _, cookie = auth.new_session()
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, cookie, max_age=SESSION_SECONDS, path="/ui", httponly=True, samesite="strict",
                            secure=secure_cookie)
        return response

    async def logout(request: Request, session: Session) -> Response:
        auth.end(session)
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict", secure=secure_cookie)
        return response

    # -- pages -------------------------------------------------------------------------------

    async def machines(request: Request, session: Session) -> Response:
        query = request.query_params.get("q", "")
        sort = request.query_params.get("sort", "mac")
        found = await run_in_threadpool(rows, query, sort)
        served = await run_in_threadpool(list_served, images_dir) if images_dir else []
        return page(request, "machines.html", session, rows=found, q=query, sort=sort, sorts=list(SORTS),
                    images=[i for i in served if not i.get("problem")], actions=[a.value for a in Action] + [CANCEL],
                    notice=request.query_params.get("notice", ""), last_event_id=store.last_event_id())

    async def machine(request: Request, session: Session) -> Response:
        try:
            mac = normalise_mac(request.path_params["mac"])
        except ValueError:
            return PlainTextResponse("not a MAC address", status_code=404)
        record = await run_in_threadpool(store.machine, mac)
        if record is None:
            return page(request, "missing.html", session, 404, mac=mac)
        plan = store.plan(mac)
        events = store.events(mac, plan.run_id) if plan is not None else []
        row = row_of(record, plan, time.time())
        ledger, ledger_problem = await run_in_threadpool(ledger_of, mac)
        return page(request, "machine.html", session, row=row, record=record, plan=plan, events=events[-200:],
                    receipts=store.receipts(mac, limit=20), ledger=ledger, ledger_problem=ledger_problem,
                    seen_at=lambda then: seen_at(then, time.time()),
                    last_event_id=events[-1].id if events else store.last_event_id())

    def ledger_records() -> tuple[Sequence[LedgerRecord], str]:
        """The server's ledger, or no records and why it cannot be read (said on the page)."""
        if service.ledger is None:
            return (), ""
        try:
            return read_ledger(service.ledger).records, ""
        except LedgerError as exc:
            return (), f"the ledger cannot be read, so no results are shown: {exc}"

    def ledger_of(mac: str) -> tuple[list[LedgerRecord], str]:
        records, problem = ledger_records()
        return [r for r in records if mac in r.macs][-20:][::-1], problem

    def image_page_rows() -> tuple[list[ImageRow], str]:
        served = list_served(images_dir) if images_dir else []
        records, problem = ledger_records()
        return image_rows(served, records), problem

    async def images(request: Request, session: Session) -> Response:
        found, ledger_problem = await run_in_threadpool(image_page_rows)
        return page(request, "images.html", session, images=found, ledger_problem=ledger_problem)

    async def assign(request: Request, session: Session) -> Response:
        form = await request.form()
        macs = [str(m) for m in form.getlist("mac")]
        if not macs:
            return RedirectResponse("/ui/?notice=" + "select at least one machine", status_code=303)
        if form.get("action") == CANCEL:
            return await cancel([str(m) for m in macs])
        try:
            action = Action(str(form.get("action") or "flash"))
            image = str(form.get("image_url") or "").strip() or str(form.get("image") or "") or None
            disk = str(form.get("disk") or "") or None
            verify = str(form.get("verify") or "readback")
            for mac in macs:
                await run_in_threadpool(service.assign, normalise_mac(mac), action, image if action == Action.FLASH
                                        else None, disk if action == Action.FLASH else None, verify)
        except (BtyError, ValueError) as exc:
            return RedirectResponse(f"/ui/?notice={quote(str(exc))}", status_code=303)
        what = f"flash {shown_url(image) if image and is_image_url(image) else image} onto {disk}" \
            if action == Action.FLASH else action.value
        return RedirectResponse(f"/ui/?notice={quote(f'{what}: assigned to {len(macs)} machine(s)')}",
                                status_code=303)

    async def cancel(macs: list[str]) -> Response:
        """Cancel every selected machine's plan that can be; say which could not and why."""
        done, refused = 0, []
        for mac in macs:
            try:
                await run_in_threadpool(service.cancel, normalise_mac(mac))
                done += 1
            except (BtyError, ValueError) as exc:
                refused.append(str(exc))
        notice = f"cancelled the plans of {done} machine(s)" + (f"; not: {'; '.join(refused)}" if refused else "")
        return RedirectResponse(f"/ui/?notice={quote(notice)}", status_code=303)

    async def events(request: Request, session: Session) -> Response:
        start = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        after = int(start) if start.isdigit() and len(start) < 19 else 0
        try:  # a machine's page also follows its event log, from where it left off
            follow = normalise_mac(request.query_params["mac"]) if "mac" in request.query_params else None
        except ValueError:
            follow = None
        row_template = templates.get_template("_row.html")
        log_template = templates.get_template("_log.html")

        async def stream() -> AsyncIterator[str]:
            nonlocal after
            sent: dict[str, str] = {}
            macs: list[str] = []
            idle = 0.0
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                newest = await run_in_threadpool(store.last_event_id)
                current = await run_in_threadpool(live_rows.get)
                chunks = []
                if follow is not None:
                    fresh = await run_in_threadpool(store.events, follow, None, after, 500)
                    if fresh:
                        chunks.append(sse("log", log_template.render(events=fresh), fresh[-1].id))
                        after = max(after, fresh[-1].id)
                        newest = max(newest, after)
                if [r.mac for r in current] != macs:  # a machine appeared: the whole table
                    macs = [r.mac for r in current]
                    html = "".join(row_template.render(row=r) for r in current)
                    chunks.append(sse("table", html, newest))
                    sent = {r.row_id: row_template.render(row=r) for r in current}
                else:
                    for r in current:
                        html = row_template.render(row=r)
                        if sent.get(r.row_id) != html:
                            sent[r.row_id] = html
                            chunks.append(sse(r.row_id, html, newest))
                after = max(after, newest)
                if chunks:
                    idle = 0.0
                    yield "".join(chunks)
                else:
                    idle += POLL_SECONDS
                    if idle >= KEEPALIVE_SECONDS:
                        idle = 0.0
                        yield ": keep-alive\n\n"
                await asyncio.sleep(POLL_SECONDS)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return Starlette(routes=[
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", admin(logout, csrf=True), methods=["POST"]),
        Route("/", admin(machines)),
        Route("/machines/{mac}", admin(machine)),
        Route("/images", admin(images)),
        Route("/assign", admin(assign, csrf=True), methods=["POST"]),
        Route("/events", admin(events)),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ])


def ui_off(request: Request) -> Response:
    """/ui/ when `bty serve` runs without --admin-token-file."""
    return PlainTextResponse("the operator UI is off: start `bty serve` with --admin-token-file FILE (a token "
                             "of its own, not the agents'; make one with `openssl rand -hex 16 > FILE; "
                             "chmod 600 FILE`)", status_code=404)


def sse(event: str, html: str, event_id: int) -> str:
    """One Server-Sent Event: its name, an id to resume from, the HTML on `data:` lines."""
    data = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    return f"event: {event}\nid: {event_id}\n{data}\n"


def quote(text: str) -> str:
    """A notice for the page's query string (cut short: it is a message, not a document)."""
    return url_quote(text[:300])


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of the UI only (never another site)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


def same_origin(request: Request) -> bool:
    """A form post whose Origin (or Referer) names this server, or that names none (old browsers,
    scripts): the CSRF token is the check then."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin != "null"
    return urlsplit(origin).netloc == request.headers.get("host", "")
