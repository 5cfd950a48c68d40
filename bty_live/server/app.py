"""The HTTP face of `bty serve`: a small Starlette app over `Deployments`.

    GET  /healthz                               public: {"ok": true}
    GET  /netboot/{kernel|initrd}               public: the netboot live system (no secrets in it)
    GET  /ipxe/{mac}                            token: the iPXE script for that NIC (holds the token)
    GET  /images/{file}                         token: an image file; Range, ETag, Last-Modified, HEAD
    GET  /api/v1/images                         token: what can be assigned
    GET  /api/v1/machines                       token: every machine, its status, plan, last receipt
    GET  /api/v1/machines/{mac}                 token: one machine, with its inventory
    POST /api/v1/machines/{mac}/inventory       token: the agent registers
    GET  /api/v1/machines/{mac}/plan            token: the agent asks what to do (protocol.AgentPlan)
    POST /api/v1/machines/{mac}/events          token: {"run_id", "events": [Event...]}
    GET  /api/v1/machines/{mac}/events          token: ?run=RUN&after=ID: progress, to follow a run
    POST /api/v1/machines/{mac}/receipt         token: {"run_id", "receipt": Receipt}
    POST /api/v1/machines/{mac}/ledger          token: {"run_id", "record": LedgerRecord}, passed or failed
    GET  /api/v1/receipts                       token: ?mac=MAC
    GET  /api/v1/ledger                         token: ?image=NAME|BLAKE3&model=GLOB: records + known-good

Every path but /healthz and /netboot/ needs the token (`Authorization: Bearer T`, or `?token=T`
for iPXE, which cannot set headers). `TokenGate` answers 403 before the request reaches a route
or its body is read, so a refused request changes nothing. Plans are assigned from the server's
shell (`bty serve assign`), not over HTTP: the token every netbooted machine carries on its
kernel command line cannot redirect another machine's flash.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bty_live.errors import BtyError
from bty_live.ledger import LedgerError, filter_records, read_ledger, summarize
from bty_live.protocol import API, TOKEN_QUERY, Action, normalise_mac
from bty_live.server import ipxe
from bty_live.server.config import ServerConfig
from bty_live.server.images import image_file, list_served
from bty_live.server.service import BadRequest, Deployments
from bty_live.server.state import PlanState, Store

log = logging.getLogger("bty.serve")

PUBLIC_PATHS = ("/healthz",)
PUBLIC_PREFIXES = (ipxe.NETBOOT_ROUTE + "/",)
MAX_BODY = 4 << 20


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
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                offered = value[7:].strip()
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
            log.log(level, "%s %s %s %s", client[0], scope["method"], scope["path"], status)


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _mac(request: Request) -> str:
    try:
        return normalise_mac(request.path_params["mac"])
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc


def _int_param(request: Request, name: str) -> int:
    text = request.query_params.get(name) or "0"
    if not text.isdigit():
        raise BadRequest(f"?{name}= must be a non-negative integer, not {text!r}")
    return int(text)


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise BadRequest(f"request body of {len(body)} bytes is larger than {MAX_BODY}")
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise BadRequest(f"request body is not JSON ({exc})") from exc


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
        path = image_file(config.images_dir, request.path_params["file_name"])
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

    async def inventory(request: Request) -> Response:
        mac, body = _mac(request), await _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("the inventory must be a JSON object")
        await run_in_threadpool(service.inventory, mac, body)
        return JSONResponse({"ok": True})

    async def plan(request: Request) -> Response:
        answer = await run_in_threadpool(service.plan_for, _mac(request))
        return JSONResponse(answer.to_dict())

    async def events(request: Request) -> Response:
        mac = _mac(request)
        if request.method == "GET":
            after = _int_param(request, "after")
            found = await run_in_threadpool(store.events, mac, request.query_params.get("run"), after)
            return JSONResponse({"events": [{"id": e.id, "run_id": e.run_id, **e.event} for e in found]})
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("events"), list) or not body.get("run_id"):
            raise BadRequest('events must be posted as {"run_id": RUN, "events": [...]}')
        count = await run_in_threadpool(service.events, mac, str(body["run_id"]), body["events"])
        return JSONResponse({"ok": True, "stored": count})

    async def receipt(request: Request) -> Response:
        mac, body = _mac(request), await _json_body(request)
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
        mac, body = _mac(request), await _json_body(request)
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
        return _error(400, str(exc))

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return _error(503, str(exc))

    handlers: dict[Any, Callable[..., Any]] = {BadRequest: bad_request, BtyError: bad_request,
                                               LedgerError: unavailable}
    app = Starlette(
        routes=[
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
