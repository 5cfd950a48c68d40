#!/usr/bin/env python3
"""Benchmark: one `bty serve` feeding N concurrent `bty agent` processes on loopback.

A benchmark, not a test: it prints a table and exits 0 unless it cannot run at all (root needed
for loop devices).

    .venv/bin/python tools/bench_server.py [--size 1G] [--agents 1 4] [--formats raw zst] [--verify stream]

For each image format and agent count: start the server (a subprocess, as in production), attach
one fresh loop device per agent (--direct-io=on, so writes reach storage), assign each agent's
MAC its loop device (`path=/dev/loopN`), start the agents together (`bty agent --no-reboot`),
and wait for all of them. Reported:

  wire MB/s     bytes of image files the server sent, per second of wall time (all agents)
  disk MB/s     decompressed bytes the agents wrote, per second of wall time (all agents)
  server CPU    CPU seconds the server process used / wall seconds (1.00 = one core busy)
  CPU s/GB      server CPU seconds per GB sent: what a rack needs, independent of this VM's disks
  agents CPU    CPU seconds of all agent processes / wall seconds

Every agent must exit 0 and the server must hold an ok receipt for it, or the run is marked
FAILED. Artifacts live in bench-out/server/ (the image is built once, by tools/mkdiskimage.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python tools/bench_server.py`: make `tools` importable
    sys.path.insert(0, str(REPO))

from tools.benchkit.loop_targets import LoopTargets  # noqa: E402
from tools.mkdiskimage import MIB, build_disk_image, parse_size  # noqa: E402

PY = sys.executable
TOKEN = "bench-token-0123456789abcdef"


@dataclass
class Result:
    format: str
    agents: int
    ok: bool
    wall: float
    wire_bytes: int
    disk_bytes: int
    #: CPU seconds used during the run
    server_cpu_s: float
    agents_cpu_s: float
    note: str = ""

    @property
    def server_cores(self) -> float:
        return self.server_cpu_s / self.wall

    @property
    def agents_cores(self) -> float:
        return self.agents_cpu_s / self.wall

    @property
    def wire_mbps(self) -> float:
        return self.wire_bytes / self.wall / 1e6

    @property
    def disk_mbps(self) -> float:
        return self.disk_bytes / self.wall / 1e6

    @property
    def cpu_per_gb(self) -> float:
        return self.server_cpu_s / (self.wire_bytes / 1e9) if self.wire_bytes else 0.0


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def run(argv: Sequence[str]) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc.stdout


def prepare(out: Path, size: int) -> dict[str, Path]:
    """images/<stem>.img and <stem>.img.zst, each with its manifest."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    raw = images / f"bench-{size // MIB}M.img"
    zst = images / f"{raw.name}.zst"
    if not raw.exists():
        step(f"building {raw.name}: {size // MIB} MiB GPT + ESP + ext4 half full of host files")
        build_disk_image(raw, size, fill=0.5)
        for stale in (zst, zst.with_name(zst.name + ".toml"), raw.with_name(raw.name + ".toml")):
            stale.unlink(missing_ok=True)
    if not zst.exists():
        step(f"compressing {raw.name} (zstd -T0 -3)")
        run(["zstd", "-T0", "-3", "-q", "-f", str(raw), "-o", str(zst)])
    for image in (raw, zst):
        if not image.with_name(image.name + ".toml").exists():
            step(f"bty images add {image.name}")
            run([PY, "-m", "bty_live.cli", "images", "add", str(image)])
    return {"raw": raw, "zst": zst}


class Server:
    """`bty serve` as a subprocess on 127.0.0.1, a free port."""

    def __init__(self, out: Path, verify: str, extra: Sequence[str] = ()) -> None:
        self.verify = verify
        self.token = TOKEN
        self.state = out / "state"
        shutil.rmtree(self.state, ignore_errors=True)
        self.token_file = out / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        self.log = open(out / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [PY, "-m", "bty_live.commands.serve", "--images", str(out / "images"), "--state", str(self.state),
             "--listen", "127.0.0.1:0", "--token-file", str(self.token_file), *extra],
            cwd=REPO, stderr=subprocess.PIPE, stdout=self.log, text=True)
        self.url = self._wait_for_url()
        self.ps = psutil.Process(self.proc.pid)

    def _wait_for_url(self) -> str:
        """Read the log until the server says where it listens; then keep draining it in a thread
        (a full pipe would stall the server)."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.write(line)
            found = re.search(r"serving (https?://\S+)", line)
            if found:
                threading.Thread(target=self._drain, daemon=True).start()
                return found.group(1)
        raise RuntimeError(f"bty serve did not start; see {self.log.name}")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.write(line)

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def assign(self, mac: str, image: str, device: str) -> None:
        run([PY, "-m", "bty_live.commands.serve", "assign", "--state", str(self.state), mac, image,
             "--disk", f"path={device}", "--verify", self.verify])

    def receipts_ok(self) -> dict[str, bool]:
        listing = json.loads(run([PY, "-m", "bty_live.commands.serve", "machines", "--state", str(self.state),
                                  "--json"]))
        return {m["mac"]: bool(m["receipt"] and m["receipt"]["result"] == "ok") for m in listing["machines"]}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(out: Path, fmt: str, image: Path, agents: int, image_size: int, verify: str) -> Result:
    targets = LoopTargets(out, image_size)
    server = Server(out, verify)
    try:
        macs = [f"02:b7:00:00:00:{i:02x}" for i in range(agents)]
        devices = [targets.create(f"agent{i}") for i in range(agents)]
        for mac, device in zip(macs, devices, strict=True):
            server.assign(mac, image.name, device)
        step(f"{fmt}: {agents} agent(s) flashing {', '.join(devices)} from {server.url}")
        cpu0, agents_cpu0 = server.cpu(), children_cpu()
        started = time.perf_counter()
        procs = [subprocess.Popen([PY, "-m", "bty_live.commands.agent", "--server", server.url, "--token-file",
                                   str(server.token_file), "--mac", mac, "--no-reboot", "--wait-limit", "60"],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for mac in macs]
        failures = []
        for mac, proc in zip(macs, procs, strict=True):
            _, err = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"{mac}: exit {proc.returncode}: {err.strip().splitlines()[-1:]}")
        wall = time.perf_counter() - started
        server_cpu, agents_cpu = server.cpu() - cpu0, children_cpu() - agents_cpu0
        ok = server.receipts_ok()
        failures += [f"{mac}: no ok receipt on the server" for mac in macs if not ok.get(mac)]
    finally:
        server.stop()
        targets.release_all()
    return Result(format=fmt, agents=agents, ok=not failures, wall=wall, wire_bytes=image.stat().st_size * agents,
                  disk_bytes=image_size * agents, server_cpu_s=server_cpu, agents_cpu_s=agents_cpu,
                  note="; ".join(failures))


def print_table(results: Sequence[Result]) -> None:
    print()
    print(f"{'format':<7}{'agents':>7}{'wall s':>9}{'wire MB/s':>11}{'disk MB/s':>11}{'server CPU':>12}"
          f"{'CPU s/GB':>10}{'agents CPU':>12}  status")
    for r in results:
        print(f"{r.format:<7}{r.agents:>7}{r.wall:>9.2f}{r.wire_mbps:>11.0f}{r.disk_mbps:>11.0f}"
              f"{r.server_cores:>12.2f}{r.cpu_per_gb:>10.2f}{r.agents_cores:>12.2f}  "
              f"{'ok' if r.ok else 'FAILED: ' + r.note}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="image size (default 1G)")
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 4], help="agent counts (default: 1 4)")
    parser.add_argument("--formats", nargs="+", choices=["raw", "zst"], default=["raw", "zst"],
                        help="image formats (default: raw zst)")
    parser.add_argument("--verify", choices=["readback", "stream", "off"], default="stream",
                        help="the agents' verify mode (default stream: the read-back measures disks, not the server)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "server", help="artifacts directory")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_server: needs root (loop devices)", file=sys.stderr)
        return 1
    images = prepare(args.out, args.size)
    results = []
    for fmt in args.formats:
        for agents in args.agents:
            results.append(measure(args.out, fmt, images[fmt], agents, args.size, args.verify))
    print_table(results)
    print(f"\n{os.cpu_count()} CPUs; image {args.size // MIB} MiB raw, {images['zst'].stat().st_size // MIB} MiB zst; "
          f"agents verify {args.verify}; server and agents share this machine")
    (args.out / "results.json").write_text(json.dumps([asdict(r) | {"wire_mbps": r.wire_mbps,
                                                                     "disk_mbps": r.disk_mbps,
                                                                     "server_cpu_s_per_gb": r.cpu_per_gb}
                                                       for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
