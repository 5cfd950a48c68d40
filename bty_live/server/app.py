"""The HTTP face of `bty serve`: a small Starlette app over `Deployments`.

    GET  /healthz                               public: {"ok": true}
    GET  /netboot/{kernel|initrd}               public: the netboot live system (no secrets in it)
    GET  /ipxe/{mac}                            token: the iPXE script for that NIC (holds the token)
    GET  /images/{file}                         token: an image file; Range, ETag, Last-Modified, HEAD
    GET  /images/{file}.toml                    token: its manifest (the agent's block index)
    GET  /api/v1/images                         token: what can be assigned
    GET  /api/v1/machines                       token: every machine, its status, plan, last receipt
    GET  /api/v1/machines/{mac}                 token: one machine, with its inventory
    POST /api/v1/machines/{mac}/inventory       token (+ credential): the agent enrols or registers again
    GET  /api/v1/machines/{mac}/plan            credential: the agent asks what to do (protocol.AgentPlan)
    POST /api/v1/machines/{mac}/events          credential: {"run_id", "events": [Event...]}
    GET  /api/v1/machines/{mac}/events          token: ?run=RUN&after=ID: progress, to follow a run
    POST /api/v1/machines/{mac}/receipt         credential: {"run_id", "receipt": Receipt}
    POST /api/v1/machines/{mac}/ledger          credential: {"run_id", "record": LedgerRecord}, passed or failed
    GET  /api/v1/receipts                       token: ?mac=MAC
    GET  /api/v1/ledger                         token: ?image=NAME|BLAKE3&model=GLOB: records + known-good

Every path but /healthz and /netboot/ needs the token (`Authorization: Bearer T`, or `?token=T`
for iPXE, which cannot set headers). `TokenGate` answers 403 before the request reaches a route
or its body is read, so a refused request changes nothing. The token is shared by every
netbooted machine, so it only enrols: a machine's first inventory (without a credential) is
answered with `{"credential": C}`, and every request that tells the server something about that
MAC must carry C in `X-Bty-Credential` (checked before the body is read). Plans are assigned from
the server's shell (`bty serve assign`), not over HTTP.

Bodies are JSON of at most MAX_BODY bytes (Content-Length checked first, the stream capped),
finite numbers only, nested at most MAX_DEPTH deep; log lines escape control characters.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bty_live.errors import BtyError, LedgerError
from bty_live.flash.ledger import filter_records, read_ledger, summarize
from bty_live.image.manifest import MANIFEST_SUFFIX, manifest_path_for
from bty_live.protocol.wire import API, CREDENTIAL_HEADER, TOKEN_QUERY, Action, bearer_token, normalise_mac
from bty_live.server import ipxe
from bty_live.server.config import ServerConfig
from bty_live.server.images import image_file, list_served
from bty_live.server.service import BadRequest, Deployments, PayloadTooLarge
from bty_live.server.state import PlanState, Store

log = logging.getLogger("bty.serve")

PUBLIC_PATHS = ("/healthz",)
PUBLIC_PREFIXES = (ipxe.NETBOOT_ROUTE + "/",)
#: the operator's UI: its own gate (the admin credential), never the agents' token
UI_PREFIX = "/ui"
MAX_BODY = 4 << 20
MAX_DEPTH = 32
#: ?after= and other integer parameters: SQLite integers are 64-bit
MAX_INT_DIGITS = 18
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` for a log line: control characters (newlines too) as \\xNN, so nothing forges a line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class ImageResponse(FileResponse):
    """FileResponse (Range, If-Range, ETag, Last-Modified) with 1 MiB reads instead of 64 KiB:
    each read is a hop to a worker thread, so larger reads serve more bytes per CPU second."""

    chunk_size = 1 << 20


class TokenGate:
    """ASGI middleware: 403 for every non-public request without the token, before any route runs."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_public(scope["path"]) or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse({"error": "missing or wrong token: send `Authorization: Bearer TOKEN` "
                                          "with the token of the server's --token-file"}, status_code=403)
        await response(scope, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        offered = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and (token := bearer_token(value.decode("latin-1"))) is not None:
                offered = token.encode("latin-1")
        if not offered:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            offered = (query.get(TOKEN_QUERY) or [""])[0].encode("latin-1")
        return hmac.compare_digest(offered, self.token)


class AccessLog:
    """One log line per request, without the query string (it may hold the token)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def tap(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tap)
        finally:
            client = scope.get("client") or ("-", 0)
            level = logging.DEBUG if scope["path"].endswith("/events") and status < 400 else logging.INFO
            log.log(level, "%s %s %s %s", printable(str(client[0])), printable(scope["method"]),
                    printable(scope["path"]), status)


def _is_public(path: str) -> bool:
    """Paths the agents' token gate leaves alone: public ones, and the UI (which its own gate
    keeps for the operator: the agents' token opens nothing there)."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or path == UI_PREFIX \
        or path.startswith(UI_PREFIX + "/")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _mac(request: Request) -> str:
    try:
        return normalise_mac(request.path_params["mac"])
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc


def _int_param(request: Request, name: str) -> int:
    text = request.query_params.get(name) or "0"
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_INT_DIGITS:
        raise BadRequest(f"?{name}= must be a non-negative integer of at most {MAX_INT_DIGITS} digits, "
                         f"not {text[:40]!r}")
    return int(text)


async def _read_body(request: Request) -> bytes:
    """The body, at most MAX_BODY bytes: a larger Content-Length is refused before reading, and
    a stream that grows past the limit (chunked, or lying about its length) is cut off."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise PayloadTooLarge(f"request body of {length[:20]} bytes is larger than {MAX_BODY}; send less")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"request body is larger than {MAX_BODY} bytes; send less")
        parts.append(chunk)
    return b"".join(parts)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """How deep `value` nests (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH:
            children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(body: bytes) -> Any:
    """Strict JSON: finite numbers only (no NaN, no Infinity, no 1e999), at most MAX_DEPTH deep."""
    try:
        value = json.loads(body or b"null", parse_constant=_no_constant, parse_float=_finite)
    except RecursionError as exc:
        raise BadRequest(f"request body nests deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:
        raise BadRequest(f"request body is not JSON the server takes ({exc})") from exc
    if _depth(value) > MAX_DEPTH:
        raise BadRequest(f"request body nests deeper than {MAX_DEPTH} levels")
    return value


async def _json_body(request: Request) -> Any:
    return parse_json(await _read_body(request))


def _ui_routes(config: ServerConfig, store: Store, service: Deployments) -> list[BaseRoute]:
    """The operator's UI at /ui/ when --admin-token-file was given; else a page saying how to turn it on."""
    from bty_live.server.ui.views import ui_off

    if config.admin_token is None:
        return [Route(UI_PREFIX, ui_off), Route(UI_PREFIX + "/{rest:path}", ui_off)]
    from bty_live.server.ui.auth import AdminAuth
    from bty_live.server.ui.views import create_ui

    ui = create_ui(store, service, AdminAuth(config.admin_token, config.token), images_dir=config.images_dir,
                   secure_cookie=config.https)
    return [Route(UI_PREFIX, lambda request: RedirectResponse(UI_PREFIX + "/", status_code=308)),
            Mount(UI_PREFIX, app=ui)]


def create_app(config: ServerConfig, store: Store) -> Starlette:
    service = Deployments(store, config.images_dir, config.poll, config.ledger_path)

    def base_url(request: Request) -> str:
        return config.public_url or str(request.base_url)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def netboot_file(request: Request) -> Response:
        path = config.netboot.path(request.path_params["name"]) if config.netboot else None
        if path is None or not path.is_file():
            return _error(404, "no such netboot file; start `bty serve` with --netboot DIR holding the kernel and "
                               "initrd")
        return ImageResponse(path)

    async def ipxe_script(request: Request) -> Response:
        mac = _mac(request)
        plan = await run_in_threadpool(store.plan, mac)
        if plan is not None and (plan.action == Action.LOCALBOOT or
                                 (plan.action == Action.FLASH and plan.state == PlanState.DONE)):
            text = ipxe.localboot_script(mac, f"run {plan.run_id} is done: booting the local disk")
        elif config.netboot is None:
            text = ipxe.no_netboot_script(mac)
        else:
            why = f"plan: {plan.action.value} (run {plan.run_id})" if plan else "no plan yet: registering"
            text = ipxe.agent_script(base_url(request), config.token, config.netboot, mac, why)
        return PlainTextResponse(text)

    async def image(request: Request) -> Response:
        name = request.path_params["file_name"]
        if name.endswith(MANIFEST_SUFFIX):  # IMAGE.toml: the manifest of a served image (its block index)
            served = image_file(config.images_dir, name[: -len(MANIFEST_SUFFIX)])
            if served is None:
                return _error(404, f"no image {name[: -len(MANIFEST_SUFFIX)]!r} on this server; see GET {API}/images")
            return FileResponse(manifest_path_for(served), media_type="application/toml")
        path = image_file(config.images_dir, name)
        if path is None:
            return _error(404, f"no image {request.path_params['file_name']!r} on this server; see GET {API}/images")
        return ImageResponse(path)

    async def images(request: Request) -> Response:
        return JSONResponse({"images": await run_in_threadpool(list_served, config.images_dir)})

    async def machines(request: Request) -> Response:
        return JSONResponse({"machines": await run_in_threadpool(service.overview)})

    async def machine(request: Request) -> Response:
        mac = _mac(request)
        found = [m for m in await run_in_threadpool(service.overview) if m["mac"] == mac]
        return JSONResponse(found[0]) if found else _error(404, f"no machine {mac} has reported to this server")

    async def enrolled_mac(request: Request) -> str:
        """The MAC of the path, once the request carried that machine's credential (403 before the body)."""
        mac = _mac(request)
        await run_in_threadpool(service.check_credential, mac, request.headers.get(CREDENTIAL_HEADER))
        return mac

    async def inventory(request: Request) -> Response:
        mac = _mac(request)
        offered = request.headers.get(CREDENTIAL_HEADER)
        if offered:
            await run_in_threadpool(service.check_credential, mac, offered)
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("the inventory must be a JSON object")
        credential = None if offered else await run_in_threadpool(service.enrol, mac)
        await run_in_threadpool(service.inventory, mac, body)
        if credential is not None:
            log.info("%s enrolled: credential issued", mac)
            return JSONResponse({"ok": True, "credential": credential})
        return JSONResponse({"ok": True})

    async def plan(request: Request) -> Response:
        answer = await run_in_threadpool(service.plan_for, await enrolled_mac(request))
        return JSONResponse(answer.to_dict())

    async def events(request: Request) -> Response:
        if request.method == "GET":
            mac = _mac(request)
            after = _int_param(request, "after")
            found = await run_in_threadpool(store.events, mac, request.query_params.get("run"), after)
            return JSONResponse({"events": [{"id": e.id, "run_id": e.run_id, **e.event} for e in found]})
        mac = await enrolled_mac(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("events"), list) or not body.get("run_id"):
            raise BadRequest('events must be posted as {"run_id": RUN, "events": [...]}')
        count = await run_in_threadpool(service.events, mac, str(body["run_id"]), body["events"])
        return JSONResponse({"ok": True, "stored": count})

    async def receipt(request: Request) -> Response:
        mac = await enrolled_mac(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or not body.get("run_id"):
            raise BadRequest('a receipt must be posted as {"run_id": RUN, "receipt": {...}}')
        record = await run_in_threadpool(service.receipt, mac, str(body["run_id"]), body.get("receipt"))
        return JSONResponse({"ok": True, "id": record.id})

    async def receipts(request: Request) -> Response:
        mac = request.query_params.get("mac")
        try:
            which = normalise_mac(mac) if mac else None
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        found = await run_in_threadpool(store.receipts, which)
        return JSONResponse({"receipts": [r.to_dict() for r in found]})

    async def ledger_record(request: Request) -> Response:
        mac = await enrolled_mac(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or not body.get("run_id"):
            raise BadRequest('a ledger record must be posted as {"run_id": RUN, "record": {...}}')
        await run_in_threadpool(service.ledger_record, mac, str(body["run_id"]), body.get("record"))
        return JSONResponse({"ok": True})

    async def ledger(request: Request) -> Response:
        found = await run_in_threadpool(read_ledger, config.ledger_path)
        records = filter_records(found.records, image=request.query_params.get("image"),
                                 model=request.query_params.get("model"))
        return JSONResponse({"records": [r.to_dict() for r in records],
                             "known_good": [c.to_dict() for c in summarize(records)],
                             "skipped_lines": len(found.skipped)})

    async def bad_request(request: Request, exc: Exception) -> Response:
        return _error(exc.status if isinstance(exc, BadRequest) else 400, str(exc))

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.error("%s %s: %s", printable(request.method), printable(request.url.path), printable(str(exc)))
        return _error(503, str(exc))

    handlers: dict[Any, Callable[..., Any]] = {BadRequest: bad_request, BtyError: bad_request,
                                               LedgerError: unavailable}
    app = Starlette(
        routes=[
            *_ui_routes(config, store, service),
            Route("/healthz", healthz),
            Route(ipxe.NETBOOT_ROUTE + "/{name}", netboot_file),
            Route(ipxe.IPXE_ROUTE + "/{mac}", ipxe_script),
            Route("/images/{file_name}", image),
            Route(API + "/images", images),
            Route(API + "/machines", machines),
            Route(API + "/machines/{mac}", machine),
            Route(API + "/machines/{mac}/inventory", inventory, methods=["POST"]),
            Route(API + "/machines/{mac}/plan", plan),
            Route(API + "/machines/{mac}/events", events, methods=["GET", "POST"]),
            Route(API + "/machines/{mac}/receipt", receipt, methods=["POST"]),
            Route(API + "/machines/{mac}/ledger", ledger_record, methods=["POST"]),
            Route(API + "/receipts", receipts),
            Route(API + "/ledger", ledger),
        ],
        exception_handlers=handlers,
    )
    app.add_middleware(TokenGate, token=config.token)
    app.add_middleware(AccessLog)
    return app
