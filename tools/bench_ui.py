#!/usr/bin/env python3
"""Benchmark: the operator's web UI while N machines report progress at once.

A benchmark, not a test: it prints a table and exits 0 unless it cannot run at all.

    .venv/bin/python tools/bench_ui.py [--machines 40] [--viewers 3] [--seconds 20] [--interval 0.5]

`bty serve` runs as a subprocess on 127.0.0.1 with --admin-token-file. N machines enrol with
their inventory and get one plan through the UI's bulk assignment; then each posts a progress
event every --interval seconds (what an agent's uplink does while it flashes) for --seconds,
while --viewers live views follow GET /ui/events and a probe loads the machines page every half
second. Reported:

  events/s      progress events the machines posted per second (all of them)
  rows/s        row updates each live view received per second (mean over the views)
  page p50/p95  time to load the machines page (GET /ui/), ms
  server CPU    CPU seconds of the server process / wall seconds (1.00 = one core busy)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python tools/bench_ui.py`: make `tools` importable
    sys.path.insert(0, str(REPO))

from tools.bench_server import PY, Server, run, step  # noqa: E402

ADMIN = "bench-admin-token-fedcba987654"


@dataclass
class Result:
    machines: int
    viewers: int
    wall: float
    events: int
    rows_per_viewer: float
    page_ms: list[float]
    server_cpu_s: float
    errors: list[str]

    def line(self) -> str:
        p50 = statistics.median(self.page_ms) if self.page_ms else float("nan")
        p95 = sorted(self.page_ms)[int(len(self.page_ms) * 0.95) - 1] if self.page_ms else float("nan")
        return (f"{self.machines:>9}{self.viewers:>9}{self.events / self.wall:>10.0f}"
                f"{self.rows_per_viewer / self.wall:>9.1f}{p50:>10.1f}{p95:>10.1f}"
                f"{self.server_cpu_s / self.wall:>12.2f}  {'ok' if not self.errors else 'FAILED: ' + self.errors[0]}")


class Client:
    """One keep-alive HTTP connection to the server."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        return response.status, response.read()

    def json(self, method: str, path: str, payload: object, headers: dict[str, str]) -> dict[str, object]:
        status, body = self.call(method, path, json.dumps(payload).encode(),
                                 {**headers, "Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {body[:200]!r}")
        found = json.loads(body)
        assert isinstance(found, dict)
        return found


def mac_of(i: int) -> str:
    return f"02:b7:01:00:{i // 256:02x}:{i % 256:02x}"


def inventory(mac: str) -> dict[str, object]:
    disk = {"name": "nvme0n1", "path": "/dev/nvme0n1", "size": 512 << 30, "transport": "nvme", "model": "Bench SSD",
            "serial": f"S{mac[-5:]}", "eligible": True, "reasons": []}
    return {"mac": mac, "machine": {"vendor": "Bench", "product": "Box", "serial": mac, "nics": []},
            "disks": [disk]}


def follow(url: str, seconds: float, counts: list[int], stop: threading.Event) -> None:
    """A live view: read /ui/events and count the rows it sends."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=seconds + 30)
    conn.request("GET", "/ui/events", headers={"Authorization": f"Bearer {ADMIN}"})
    response = conn.getresponse()
    rows = 0
    while not stop.is_set():
        line = response.fp.readline()
        if not line:
            break
        if line.startswith(b"event: m-"):
            rows += 1
    counts.append(rows)
    conn.close()


def report(url: str, token: str, mac: str, credential: str, run_id: str, seconds: float, interval: float,
           sent: list[int], errors: list[str]) -> None:
    """A machine's uplink: one progress event every `interval` seconds, 0 -> 100 %."""
    client = Client(url)
    headers = {"Authorization": f"Bearer {token}", "X-Bty-Credential": credential}
    total = 64 << 30
    started = time.monotonic()
    count = 0
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            done = int(total * elapsed / seconds)
            event = {"phase": "write", "kind": "progress", "bytes_out": done, "total": total, "rate": 800e6,
                     "eta": seconds - elapsed, "message": "", "elapsed": elapsed, "digest": None, "error": None}
            client.json("POST", f"/api/v1/machines/{mac}/events", {"run_id": run_id, "events": [event]}, headers)
            count += 1
            time.sleep(max(0.0, interval - (time.monotonic() - started - elapsed)))
    except (OSError, RuntimeError) as exc:
        errors.append(f"{mac}: {exc}")
    sent.append(count)


def measure(out: Path, machines: int, viewers: int, seconds: float, interval: float) -> Result:
    admin_file = out / "admin-token"
    admin_file.write_text(ADMIN + "\n")
    admin_file.chmod(0o600)
    server = Server(out, "stream", extra=["--admin-token-file", str(admin_file)])
    errors: list[str] = []
    try:
        step(f"{machines} machines enrol and get one plan through the UI")
        client = Client(server.url)
        token = {"Authorization": f"Bearer {server.token}"}
        credentials = {}
        for i in range(machines):
            mac = mac_of(i)
            answer = client.json("POST", f"/api/v1/machines/{mac}/inventory", inventory(mac), token)
            credentials[mac] = str(answer["credential"])
        form = [("mac", mac) for mac in credentials] + [("action", "flash"), ("image", "bench.img"),
                                                         ("disk", "tran=nvme"), ("verify", "stream")]
        status, body = client.call("POST", "/ui/assign", urlencode(form).encode(),
                                   {"Authorization": f"Bearer {ADMIN}",
                                    "Content-Type": "application/x-www-form-urlencoded"})
        if status != 303:
            raise RuntimeError(f"bulk assignment: {status} {body[:200]!r}")
        runs = {}
        for mac, credential in credentials.items():
            status, body = client.call("GET", f"/api/v1/machines/{mac}/plan",
                                       headers={**token, "X-Bty-Credential": credential})
            runs[mac] = str(json.loads(body)["run_id"])
        step(f"{machines} machines report every {interval} s for {seconds:.0f} s; {viewers} live views; "
             "the machines page loaded every 0.5 s")
        stop = threading.Event()
        counts: list[int] = []
        sent: list[int] = []
        views = [threading.Thread(target=follow, args=(server.url, seconds, counts, stop)) for _ in range(viewers)]
        for view in views:
            view.start()
        time.sleep(1.0)
        cpu0, started = server.cpu(), time.perf_counter()
        reporters = [threading.Thread(target=report, args=(server.url, server.token, mac, credentials[mac], runs[mac],
                                                           seconds, interval, sent, errors)) for mac in credentials]
        for reporter in reporters:
            reporter.start()
        page_ms: list[float] = []
        probe = Client(server.url)
        while any(r.is_alive() for r in reporters):
            t0 = time.perf_counter()
            status, _ = probe.call("GET", "/ui/", headers={"Authorization": f"Bearer {ADMIN}"})
            page_ms.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                errors.append(f"GET /ui/: {status}")
            time.sleep(0.5)
        wall = time.perf_counter() - started
        server_cpu = server.cpu() - cpu0
        stop.set()
        for reporter in reporters:
            reporter.join()
    finally:
        server.stop()
    for view in views:
        view.join(5)
    return Result(machines=machines, viewers=viewers, wall=wall, events=sum(sent),
                  rows_per_viewer=sum(counts) / max(1, len(counts)), page_ms=page_ms, server_cpu_s=server_cpu,
                  errors=errors)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, nargs="+", default=[40], help="machines reporting (default: 40)")
    parser.add_argument("--viewers", type=int, default=3, help="live views following /ui/events (default: 3)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long they report (default: 20)")
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between a machine's events (default 0.5: the agent's uplink)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "ui", help="artifacts directory")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    image = images / "bench.img"
    if not image.with_name(image.name + ".toml").exists():
        image.write_bytes(os.urandom(1 << 20))
        run([PY, "-m", "bty_live.cli", "images", "add", str(image)])
    results = [measure(out, n, args.viewers, args.seconds, args.interval) for n in args.machines]
    print()
    print(f"{'machines':>9}{'viewers':>9}{'events/s':>10}{'rows/s':>9}{'page p50':>10}{'page p95':>10}"
          f"{'server CPU':>12}  status")
    for result in results:
        print(result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
