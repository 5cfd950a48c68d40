"""`bty serve`: the reference server of server mode.

It hands netbooting machines an iPXE script, serves the netboot live system and the images
(with Range, so agents resume dropped downloads), tells each machine its plan, and keeps what
the agents report (events, receipts) and the known-good ledger in SQLite.

    config.py   what the server is started with        state.py    SQLite: the only storage
    images.py   which images can be offered            service.py  the rules (plans, events, receipts)
    ipxe.py     iPXE scripts                           app.py      HTTP (Starlette) over the service
    runner.py   uvicorn: foreground or a thread
"""
