"""The operator's web UI of `bty serve`, at /ui/ on the same Starlette app.

Server-side HTML (Jinja2 templates), htmx and its SSE extension vendored in `static/` (with
their licences; no build step, no CDN, no external fonts: the server may sit on an air-gapped
LAN). Only the operator's credential (`--admin-token-file`) opens it: agents' token and
credentials are refused (`auth.py`). Without the flag the UI is off.
"""
