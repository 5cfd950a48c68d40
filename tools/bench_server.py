#!/usr/bin/env python3
"""Benchmark: one `bty serve` feeding N concurrent `bty agent` processes on loopback.

A benchmark, not a test: it prints a table and exits 0 unless it cannot run at all (root needed
for loop devices).

    .venv/bin/python tools/bench_server.py [--size 1G] [--agents 1 4] [--formats raw zst] [--verify stream]
                                           [--reflash | --reflash-only] [--changes 24] [--seed 14] [--no-blank]

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

--reflash (what `make bench-server` runs after the above; --reflash-only: this alone) measures the
bytes on the wire of a differential reflash. v1 is the bench's image, packed (`bty images pack`,
kept like the other images); v2 is made anew each time: v1 with --changes (24) ranges of 64-512
KiB, 4 KiB aligned, rewritten with random bytes (seeded), scattered over the data of v1's root
partition (the ext4 half full of files), then packed into the served directory. For each agent
count, each agent's loop device (exactly the image's size) holds v1 (copied into its backing file
before it is attached), v2 is assigned, and the agents start together. Then, for comparison, the
same with blank disks (v2 written whole). Reported per run:

  v2 sent       bytes of the server's responses to GET /images/V2.img.zst per machine (status
                line, headers, body), counted per request by a proxy in front of the server,
                one per agent (`bty serve` logs no sizes): the proxy adds `Connection: close` so
                each connection carries one request
  of file       that, as a share of the packed v2: the goal is < 15 % for a reflash (PASS/FAIL)
  .toml, all    the manifest (the block index), and every response (API calls too)
  src read      the receipts' differential.source_bytes_read; mode: their differential.mode,
                which must be "differential" for every agent of a reflash run, else FAILED

Every agent must exit 0 with an ok receipt and its disk must equal v2's raw image, or FAILED.
v2's files are removed afterwards; loop devices, proxies, agents and the server on every path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python tools/bench_server.py`: make `tools` importable
    sys.path.insert(0, str(REPO))

from bty_live.image.manifest import load_manifest  # noqa: E402
from bty_live.image.seek_table import FOOTER_SIZE, parse_seek_table, table_size  # noqa: E402
from tools.benchkit.loop_targets import LoopTargets, target_matches  # noqa: E402
from tools.benchkit.reflash import data_extents as file_data_extents  # noqa: E402
from tools.mkdiskimage import KIB, MIB, build_disk_image, parse_size, read_partitions, to_partition  # noqa: E402

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

    def receipts(self) -> dict[str, dict[str, Any]]:
        """The last receipt record of each machine (`bty serve machines --json`): result, receipt."""
        listing = json.loads(run([PY, "-m", "bty_live.commands.serve", "machines", "--state", str(self.state),
                                  "--json"]))
        return {m["mac"]: m["receipt"] for m in listing["machines"] if m["receipt"]}

    def receipts_ok(self) -> dict[str, bool]:
        return {mac: record["result"] == "ok" for mac, record in self.receipts().items()}

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


# -- reflash: what the server sends when machines that hold v1 are given v2 -----------------------

CHANGE_ALIGN = 4 * KIB
CHANGE_MIN, CHANGE_MAX = 64 * KIB, 512 * KIB
#: a reflash should send less than this share of the packed file to each machine (issue 14)
REFLASH_GOAL = 0.15


@dataclass
class Exchange:
    """One request through a CountingProxy and the bytes the server answered it with."""

    request_line: str
    range: str | None  # the request's Range header
    sent: int = 0  # status line, headers and body, as read from the server's socket


class CountingProxy:
    """127.0.0.1:PORT in front of `bty serve`, one per agent: the bytes the server sends that
    machine, request by request (`bty serve` logs requests without their sizes).

    The proxy adds `Connection: close` to each request (the agent's HTTP client opens a
    connection per request anyway), so a connection carries one request and one response and
    every byte read from the server on it belongs to that response. Nothing else is changed."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._open = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def sent(self, request: re.Pattern[str] | None = None) -> int:
        """Bytes of the responses to the requests whose line matches (all of them: None)."""
        with self._lock:
            return sum(e.sent for e in self.exchanges if request is None or request.match(e.request_line))

    def requests(self, request: re.Pattern[str]) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if request.match(e.request_line)]

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until no connection is open (the agent has exited; its last responses drain)."""
        deadline = time.monotonic() + timeout
        while self._open and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._open += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(1 << 16)
                if not chunk or len(head) > 1 << 20:
                    return
                head += chunk
            head_bytes, _, rest = head.partition(b"\r\n\r\n")
            lines = head_bytes.decode("latin-1").split("\r\n")
            lines = [lines[0], *(line for line in lines[1:] if not line.lower().startswith("connection:")),
                     "Connection: close"]
            exchange = Exchange(lines[0], next((line.split(":", 1)[1].strip() for line in lines[1:]
                                                if line.lower().startswith("range:")), None))
            with self._lock:
                self.exchanges.append(exchange)
            upstream = socket.create_connection(self.upstream)
            upstream.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + rest)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            buffer = bytearray(1 << 20)
            view = memoryview(buffer)
            while received := upstream.recv_into(buffer):
                exchange.sent += received
                client.sendall(view[:received])
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
            with self._lock:
                self._open -= 1

    @staticmethod
    def _pump(client: socket.socket, upstream: socket.socket) -> None:
        """The rest of the agent's request (a POST body) to the server."""
        try:
            while data := client.recv(1 << 16):
                upstream.sendall(data)
        except OSError:
            pass


@dataclass(frozen=True)
class Change:
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class ReflashImages:
    v1_raw: Path  # the bench's image, what the machines' disks hold
    v1_packed: Path
    v2_raw: Path  # v1 with the changes: what the disks must hold afterwards
    v2_packed: Path  # what is assigned
    changes: list[Change]
    #: of v2's block index (its manifest): one frame of the packed file
    block_size: int
    blocks: int  # of the image
    changed_blocks: list[int]
    #: compressed bytes of v2's frames of the changed blocks: what fetching only those frames costs
    changed_frames_bytes: int

    @property
    def changed_bytes(self) -> int:
        return union_length(self.changes)

    def remove_v2(self) -> None:
        for path in (self.v2_raw, self.v2_packed, manifest_of(self.v2_packed)):
            path.unlink(missing_ok=True)


def manifest_of(image: Path) -> Path:
    return image.with_name(image.name + ".toml")


def union_length(changes: Sequence[Change]) -> int:
    total, reached = 0, 0
    for change in sorted(changes, key=lambda c: c.offset):
        total += max(0, change.end - max(change.offset, reached))
        reached = max(reached, change.end)
    return total


def data_extents(path: Path, start: int, end: int) -> list[tuple[int, int]]:
    """The [start, end) pieces of the sparse file that hold data (SEEK_DATA / SEEK_HOLE)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return file_data_extents(fd, start, end) or [(start, end)]
    finally:
        os.close(fd)


def pick_changes(extents: Sequence[tuple[int, int]], count: int, seed: int, limit: int) -> list[Change]:
    """`count` ranges of CHANGE_MIN..CHANGE_MAX bytes, 4 KiB aligned, scattered over the bytes the
    extents hold: the data is cut into `count` equal slices and each range starts at a random
    place of its slice (a package update touches files all over the filesystem)."""
    rng = random.Random(seed)
    total = sum(end - start for start, end in extents)
    changes = []
    for i in range(count):
        at = rng.randrange(total * i // count, max(total * (i + 1) // count, total * i // count + 1))
        for start, end in extents:
            if at < end - start:
                offset = (start + at) // CHANGE_ALIGN * CHANGE_ALIGN
                break
            at -= end - start
        length = rng.randrange(CHANGE_MIN // CHANGE_ALIGN, CHANGE_MAX // CHANGE_ALIGN + 1) * CHANGE_ALIGN
        changes.append(Change(offset, min(length, limit - offset)))
    return changes


def packed_frames(packed: Path) -> list[int]:
    """The compressed size of each frame of a packed file, from its seek table."""
    with open(packed, "rb") as f:
        f.seek(-FOOTER_SIZE, os.SEEK_END)
        _, size = table_size(f.read(FOOTER_SIZE))
        f.seek(-size, os.SEEK_END)
        return [frame.length for frame in parse_seek_table(f.read(size))]


def pack(raw: Path, packed: Path) -> None:
    for stale in (packed, manifest_of(packed)):
        stale.unlink(missing_ok=True)
    step(f"bty images pack {raw.name} -o {packed.name}")
    run([PY, "-m", "bty_live.cli", "images", "pack", str(raw), "-o", str(packed)])


def index_block_size(packed: Path) -> int | None:
    """The block size of the packed image's block index (its frame size), from its manifest."""
    manifest = load_manifest(packed) if packed.exists() else None
    return manifest.index.block_size if manifest is not None and manifest.index is not None else None


def prepare_reflash(out: Path, v1_raw: Path, size: int, count: int, seed: int) -> ReflashImages:
    """v1 packed (kept, like the bench's other images), and v2 made anew: v1 with `count` ranges
    of its root partition's data rewritten with random bytes, packed too. v2's files are
    removed by ReflashImages.remove_v2 (the caller's finally)."""
    images = out / "images"
    stem = f"reflash-{size // MIB}M"
    work = out / "reflash"
    work.mkdir(parents=True, exist_ok=True)
    refl = ReflashImages(v1_raw=v1_raw, v1_packed=images / f"{stem}-v1.img.zst", v2_raw=work / f"{stem}-v2.img",
                         v2_packed=images / f"{stem}-v2.img.zst", changes=[], block_size=0, blocks=0,
                         changed_blocks=[], changed_frames_bytes=0)
    refl.remove_v2()
    try:
        root = to_partition(0, read_partitions(v1_raw)[-1])
        refl.changes = pick_changes(data_extents(v1_raw, root.start, root.end), count, seed, root.end)
        step(f"making {refl.v2_raw.name}: {v1_raw.name} with {count} ranges of "
             f"{CHANGE_MIN // KIB}-{CHANGE_MAX // KIB} KiB of its root partition's data rewritten (seed {seed})")
        run(["cp", "--sparse=always", str(v1_raw), str(refl.v2_raw)])
        rng = random.Random(seed + 1)
        with open(refl.v2_raw, "r+b") as f:
            for change in refl.changes:
                f.seek(change.offset)
                f.write(rng.randbytes(change.length))
        pack(refl.v2_raw, refl.v2_packed)
        block_size = index_block_size(refl.v2_packed)
        if not block_size:
            raise RuntimeError(f"{manifest_of(refl.v2_packed).name} has no block index")
        # v1 packed is kept; packed anew when v1 or bty's frame size changed
        if (index_block_size(refl.v1_packed) != block_size
                or refl.v1_packed.stat().st_mtime < v1_raw.stat().st_mtime):
            pack(v1_raw, refl.v1_packed)
        refl.block_size, refl.blocks = block_size, -(-size // block_size)
        refl.changed_blocks = sorted({block for c in refl.changes
                                      for block in range(c.offset // block_size, (c.end - 1) // block_size + 1)})
        frames = packed_frames(refl.v2_packed)
        if len(frames) != refl.blocks:
            raise RuntimeError(f"{refl.v2_packed.name} has {len(frames)} frames for {refl.blocks} blocks")
        refl.changed_frames_bytes = sum(frames[block] for block in refl.changed_blocks)
    except BaseException:
        refl.remove_v2()
        raise
    return refl


class ImageTargets(LoopTargets):
    """LoopTargets, and targets whose backing file starts as a copy of an image (a disk holding v1)."""

    def create_holding(self, name: str, image: Path) -> str:
        backing = self.directory / f"target-{name}.img"
        backing.unlink(missing_ok=True)
        try:
            run(["cp", "--sparse=always", str(image), str(backing)])
            with open(backing, "r+b") as f:
                f.truncate(self.size)
                os.fsync(f.fileno())  # written back now, not during the timed run
        except BaseException:
            backing.unlink(missing_ok=True)
            raise
        return self.attach(backing)


@dataclass
class ReflashResult:
    #: "reflash": each disk holds v1; "blank": zeroed disks (v2 written whole, for comparison)
    scenario: str
    agents: int
    ok: bool
    wall: float
    packed_size: int
    #: per machine, in agent order: bytes of the server's responses to GET /images/V2.img.zst
    image_sent: list[int] = field(default_factory=list)
    #: ... those requests: [Range header or None, bytes of the response] each
    image_requests: list[list[tuple[str | None, int]]] = field(default_factory=list)
    #: ... to GET /images/V2.img.zst.toml (the manifest with the block index)
    manifest_sent: list[int] = field(default_factory=list)
    #: ... to every request (the API calls, events and receipt too)
    all_sent: list[int] = field(default_factory=list)
    #: the receipts' differential.mode, differential.source_bytes_read and download.bytes
    modes: list[str] = field(default_factory=list)
    source_bytes_read: list[int] = field(default_factory=list)
    download_bytes: list[int] = field(default_factory=list)
    server_cpu_s: float = 0.0
    note: str = ""

    @property
    def worst_share(self) -> float:
        return max(self.image_sent, default=0) / self.packed_size


def measure_reflash(out: Path, scenario: str, refl: ReflashImages, agents: int, image_size: int,
                    verify: str) -> ReflashResult:
    """`agents` machines whose disks hold v1 ("reflash") or nothing ("blank") are given v2 at once."""
    targets = ImageTargets(out, image_size)
    image_line = re.compile(rf"^GET /images/{re.escape(refl.v2_packed.name)} ")
    manifest_line = re.compile(rf"^GET /images/{re.escape(manifest_of(refl.v2_packed).name)} ")
    macs = [f"02:b7:00:00:01:{i:02x}" for i in range(agents)]
    result = ReflashResult(scenario=scenario, agents=agents, ok=False, wall=0.0,
                           packed_size=refl.v2_packed.stat().st_size)
    failures: list[str] = []
    server: Server | None = None
    proxies: list[CountingProxy] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        server = Server(out, verify)
        host, port = server.url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
        devices = [targets.create_holding(f"agent{i}", refl.v1_raw) if scenario == "reflash"
                   else targets.create(f"agent{i}") for i in range(agents)]
        for mac, device in zip(macs, devices, strict=True):
            server.assign(mac, refl.v2_packed.name, device)
        proxies = [CountingProxy((host, int(port))) for _ in macs]
        step(f"{scenario}: {agents} agent(s) given {refl.v2_packed.name}, disks {', '.join(devices)} holding "
             f"{refl.v1_raw.name if scenario == 'reflash' else 'zeros'}")
        cpu0 = server.cpu()
        started = time.perf_counter()
        procs = [subprocess.Popen([PY, "-m", "bty_live.commands.agent", "--server", proxy.url, "--token-file",
                                   str(server.token_file), "--mac", mac, "--no-reboot", "--wait-limit", "60"],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for mac, proxy in zip(macs, proxies, strict=True)]
        for mac, proc in zip(macs, procs, strict=True):
            _, err = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"{mac}: exit {proc.returncode}: {err.strip().splitlines()[-1:]}")
        result.wall = time.perf_counter() - started
        result.server_cpu_s = server.cpu() - cpu0
        receipts = server.receipts()
        for mac, proxy, device in zip(macs, proxies, devices, strict=True):
            proxy.settle()
            result.image_sent.append(proxy.sent(image_line))
            result.image_requests.append([(e.range, e.sent) for e in proxy.requests(image_line)])
            result.manifest_sent.append(proxy.sent(manifest_line))
            result.all_sent.append(proxy.sent())
            record = receipts.get(mac) or {}
            receipt = record.get("receipt") or {}
            diff = receipt.get("differential") or {}
            result.modes.append(str(diff.get("mode")))
            result.source_bytes_read.append(int(diff.get("source_bytes_read") or 0))
            result.download_bytes.append(int((receipt.get("download") or {}).get("bytes") or 0))
            if record.get("result") != "ok":
                failures.append(f"{mac}: no ok receipt on the server")
            elif scenario == "reflash" and diff.get("mode") != "differential":
                failures.append(f"{mac}: mode {diff.get('mode')!r} ({diff.get('reason')})")
            differs = target_matches(refl.v2_raw, device, image_size, gpt_fixups=False)
            if differs:
                failures.append(f"{mac}: {device} does not hold {refl.v2_raw.name}: {differs}")
    except Exception as exc:  # noqa: BLE001 - a run that cannot finish is a FAILED row, not a crash
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for proxy in proxies:
            proxy.close()
        if server is not None:
            server.stop()
        targets.release_all()
    result.ok = not failures
    result.note = "; ".join(failures)
    return result


def spread(values: Sequence[int], unit: float, digits: int = 1) -> str:
    """One machine's figure, or the smallest-largest of several."""
    if not values:
        return "-"
    low, high = min(values) / unit, max(values) / unit
    return f"{high:.{digits}f}" if round(low, digits) == round(high, digits) else f"{low:.{digits}f}-{high:.{digits}f}"


def print_reflash(refl: ReflashImages, results: Sequence[ReflashResult]) -> None:
    packed = refl.v2_packed.stat().st_size if refl.v2_packed.exists() else results[0].packed_size
    print()
    print(f"reflash: v2 = v1 with {len(refl.changes)} ranges of {CHANGE_MIN // KIB}-{CHANGE_MAX // KIB} KiB rewritten: "
          f"{refl.changed_bytes / MIB:.2f} MiB changed ({refl.changed_bytes:,} bytes) in {len(refl.changed_blocks)} "
          f"of {refl.blocks} blocks of {refl.block_size / MIB:g} MiB (v2's block index)")
    print(f"  {refl.v2_packed.name}: {packed / MIB:.1f} MiB ({refl.v1_packed.name}: "
          f"{refl.v1_packed.stat().st_size / MIB:.1f} MiB); v2's frames of the changed blocks: "
          f"{refl.changed_frames_bytes / MIB:.1f} MiB ({refl.changed_frames_bytes / packed:.1%} of the file), "
          "what fetching only the blocks that differ costs")
    print()
    header = ["scenario", "agents", "wall s", "v2 sent MiB", "of file %", "GETs", ".toml KiB", "all MiB",
              "src read MiB", "server CPU s", "mode", "status"]
    rows = []
    for r in results:
        rows.append([r.scenario, str(r.agents), f"{r.wall:.2f}", spread(r.image_sent, MIB),
                     spread(r.image_sent, r.packed_size / 100) if r.image_sent else "-",
                     spread([len(x) for x in r.image_requests], 1, 0), spread(r.manifest_sent, KIB),
                     spread(r.all_sent, MIB), spread(r.source_bytes_read, MIB), f"{r.server_cpu_s:.2f}",
                     ",".join(sorted(set(r.modes))) or "-", "ok" if r.ok else "FAILED: " + r.note])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) if i in (0, len(widths) - 1) else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=False))]
        print("  ".join(cells) + "  " + row[-1])
    print("\nper machine (a-b: the least and the most of the machines); v2 sent: the server's responses to "
          f"GET /images/{refl.v2_packed.name} (status line, headers, body), counted per request by a proxy in "
          "front of the server, one per agent; .toml: the manifest; all: every response (API, events, receipt)")
    for r in results:
        if r.scenario != "reflash":
            continue
        verdict = "PASS" if r.ok and r.image_sent and r.worst_share < REFLASH_GOAL else "FAIL"
        print(f"goal: a reflash sends < {REFLASH_GOAL:.0%} of the packed file to each machine; {r.agents} agent(s): "
              f"{r.worst_share:.1%} at most: {verdict}" + ("" if r.ok else " (the run FAILED)")
              + f" (v2's frames of the changed blocks alone: {refl.changed_frames_bytes / r.packed_size:.1%})")


def run_reflash(args: argparse.Namespace, v1_raw: Path) -> list[ReflashResult]:
    refl = prepare_reflash(args.out, v1_raw, args.size, args.changes, args.seed)
    results: list[ReflashResult] = []
    try:
        scenarios = ["reflash"] + ([] if args.no_blank else ["blank"])
        for scenario in scenarios:
            for agents in args.agents:
                results.append(measure_reflash(args.out, scenario, refl, agents, args.size, args.verify))
        print_reflash(refl, results)
        (args.out / "reflash.json").write_text(json.dumps({
            "image_size": args.size, "v2_packed_size": refl.v2_packed.stat().st_size,
            "changes": [asdict(c) for c in refl.changes], "changed_bytes": refl.changed_bytes,
            "block_size": refl.block_size, "changed_blocks": refl.changed_blocks,
            "changed_frames_bytes": refl.changed_frames_bytes,
            "goal_share": REFLASH_GOAL,
            "runs": [asdict(r) | {"worst_share": r.worst_share} for r in results]}, indent=2) + "\n")
    finally:
        refl.remove_v2()
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="image size (default 1G)")
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 4], help="agent counts (default: 1 4)")
    parser.add_argument("--formats", nargs="+", choices=["raw", "zst"], default=["raw", "zst"],
                        help="image formats (default: raw zst)")
    parser.add_argument("--verify", choices=["readback", "stream", "off"], default="stream",
                        help="the agents' verify mode (default stream: the read-back measures disks, not the server)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "server", help="artifacts directory")
    parser.add_argument("--reflash", action="store_true",
                        help="after the format runs, the reflash runs: disks holding v1 given v2 (see above)")
    parser.add_argument("--reflash-only", action="store_true", help="the reflash runs only")
    parser.add_argument("--changes", type=int, default=24, help="ranges of v1 rewritten to make v2 (default 24)")
    parser.add_argument("--seed", type=int, default=14, help="seed of the ranges and their bytes (default 14)")
    parser.add_argument("--no-blank", action="store_true",
                        help="skip the comparison runs that give v2 to blank disks (a full flash)")
    args = parser.parse_args(argv)
    if args.changes < 1:
        parser.error("--changes must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_server: needs root (loop devices)", file=sys.stderr)
        return 1
    # a SIGTERM unwinds like Ctrl-C: the finally blocks stop agents, servers, and detach loop devices
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    images = prepare(args.out, args.size)
    if not args.reflash_only:
        results = []
        for fmt in args.formats:
            for agents in args.agents:
                results.append(measure(args.out, fmt, images[fmt], agents, args.size, args.verify))
        print_table(results)
        print(f"\n{os.cpu_count()} CPUs; image {args.size // MIB} MiB raw, {images['zst'].stat().st_size // MIB} MiB "
              f"zst; agents verify {args.verify}; server and agents share this machine")
        (args.out / "results.json").write_text(json.dumps([asdict(r) | {"wire_mbps": r.wire_mbps,
                                                                         "disk_mbps": r.disk_mbps,
                                                                         "server_cpu_s_per_gb": r.cpu_per_gb}
                                                           for r in results], indent=2) + "\n")
    if args.reflash or args.reflash_only:
        run_reflash(args, images["raw"])
        print(f"\n{os.cpu_count()} CPUs; image {args.size // MIB} MiB; agents verify {args.verify}; disks: loop "
              "--direct-io=on over sparse files (copies of v1, or empty), exactly the image's size; server, "
              "proxies and agents share this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
