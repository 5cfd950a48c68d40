#!/usr/bin/env python3
"""Benchmark: `bty flash` against dd, zstd|dd and bmaptool, side by side on loop devices.

A benchmark, not a test: it prints a table and PASS/FAIL lines for the performance targets and
always exits 0 (unless it cannot run at all). `make bench` runs it.

    .venv/bin/python tools/bench.py [--size 2G] [--runs 3] [--only NAME ...] [--rebuild]

Artifacts are cached in bench-out/ and rebuilt only when missing: a realistic image made by
tools/mkdiskimage.py (GPT, ESP, ext4 half full of this host's files), two zstd files of it,
each with its bty manifest, and a bmap (`bmaptool create`):
  single  X.img.zst from `zstd -T0 -3`: one frame, which only one core can decompress
  packed  X.packed.img.zst from `bty images pack`: independent 8 MiB frames (still plain zstd)
Every tool runs on both files. Every run that writes gets a fresh sparse backing file attached as
a loop device with --direct-io=on, so writes reach the storage as on a real disk (no page cache
in between that a final fsync must drain; dd does not fsync, bty and bmaptool do); the sources
are read once beforehand so every tool starts from a warm page cache. After every write, the
target is compared with the image, so a fast but wrong tool is caught. Results go to
bench-out/results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python tools/bench.py`: make `tools` importable
    sys.path.insert(0, str(REPO))

from tools.mkdiskimage import MIB, build_disk_image, parse_size  # noqa: E402

TARGET = "{target}"  # placeholder in a command for the loop device of the run
TARGET_SLACK = 64 * MIB  # the target is this much larger than the image
READ_CHUNK = 4 << 20
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None  # the `time` package

#: the stage "zstandard decompression alone": what bty's reader does, minus hashing and writing
PY_DECOMPRESS = """\
import sys, zstandard
path, expected = sys.argv[1], int(sys.argv[2])
buf = memoryview(bytearray(4 << 20))
total = 0
with open(path, "rb", buffering=0) as raw:
    reader = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(
        raw, read_size=4 << 20, read_across_frames=True)
    while n := reader.readinto(buf):
        total += n
if total != expected:
    sys.exit(f"decompressed {total} bytes, expected {expected}")
"""


@dataclass(frozen=True)
class Artifacts:
    image: Path
    zst: Path
    manifest: Path
    bmap: Path
    image_size: int
    zst_size: int
    build_seconds: dict[str, float]  # only for what was (re)built this time
    packed: Path | None = None  # multi-frame zstd from `bty images pack`
    packed_size: int = 0


#: the two compressed files every tool runs on: (key suffix, label suffix)
VARIANTS = (("", "single-frame .zst"), ("-packed", "packed .zst"))


@dataclass(frozen=True)
class Contender:
    """One row of the table: a command (or pipeline) run the same way every time."""

    key: str  # short name for --only and the JSON
    label: str  # shown in the table
    stages: tuple[tuple[str, ...], ...]  # argv of each process of the pipeline
    kind: str  # "bty", "peer" or "stage"
    needs_target: bool = True
    stdout_to_null: bool = False  # the last process writes its output to /dev/null
    gpt_fixups: bool = False  # moves the backup GPT to the end of the larger target (see target_matches)


@dataclass
class RunResult:
    run: int
    wall: float
    peak_rss_kib: int
    exit_codes: list[int]
    wait4_rss_kib: int = 0
    error: str | None = None  # the tool failed, timed out, or wrote the wrong bytes
    mismatch: bool = False


@dataclass
class Row:
    contender: Contender
    runs: list[RunResult] = field(default_factory=list)
    unavailable: str | None = None

    @property
    def good_runs(self) -> list[RunResult]:
        return [r for r in self.runs if r.error is None]

    @property
    def ok(self) -> bool:
        return self.unavailable is None and bool(self.runs) and len(self.good_runs) == len(self.runs)

    @property
    def median_wall(self) -> float | None:
        good = self.good_runs
        return statistics.median(r.wall for r in good) if good else None

    @property
    def peak_rss_mib(self) -> float | None:
        good = self.good_runs
        return max(r.peak_rss_kib for r in good) / 1024 if good else None

    @property
    def status(self) -> str:
        if self.unavailable:
            return "UNAVAILABLE"
        if any(r.mismatch for r in self.runs):
            return "WRONG OUTPUT"
        if any(r.error for r in self.runs):
            return "FAILED"
        return "ok"


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


# --- output ---------------------------------------------------------------------------------------


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def loud(message: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!!! {message}\n{bar}\n", flush=True)


# --- subprocesses ---------------------------------------------------------------------------------


def run_quiet(argv: Sequence[str], *, stdout: Path | None = None, timeout: float = 1800) -> None:
    """Run a preparation tool; raise RuntimeError with its stderr on failure."""
    with open(stdout, "wb") if stdout else open(os.devnull, "wb") as out:
        proc = subprocess.run(list(argv), stdout=out, stderr=subprocess.PIPE, timeout=timeout, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{' '.join(argv)} failed (exit {proc.returncode}): {' / '.join(lines[-3:])}")


@dataclass(frozen=True)
class PipelineResult:
    wall: float
    peak_rss_kib: int  # max over the pipeline's processes (GNU time's %M when available)
    wait4_rss_kib: int  # max ru_maxrss os.wait4 gave the bench itself (see rss_note())
    exit_codes: list[int]
    timed_out: bool


def rss_note() -> str:
    if GNU_TIME:
        return ("peak RSS: ru_maxrss from wait4, taken by GNU time around each process; the bench's own "
                "os.wait4 figure is kept as wait4_rss_kib but includes the bench's RSS inherited at fork")
    return "peak RSS: os.wait4 ru_maxrss in the bench (floor: the bench's own RSS, inherited at fork)"


def run_pipeline(stages: Sequence[Sequence[str]], log_path: Path, *, stdout_to_null: bool,
                 timeout: float) -> PipelineResult:
    """Start the pipeline, reap every process with os.wait4, time it all with perf_counter.

    A process execed straight from the bench starts with the bench's own RSS as its ru_maxrss
    (Linux carries the pre-exec high-water mark over), so each process runs under GNU time, a
    small parent whose wait4 sees only the tool. Each process gets its own session so a timeout
    (or Ctrl-C) can kill it with all its children.
    """
    procs: list[subprocess.Popen[bytes]] = []
    rss_files = [log_path.with_name(f"{log_path.stem}.rss{i}") for i in range(len(stages))]
    timed_out = threading.Event()

    def kill_all() -> None:
        timed_out.set()
        kill_groups(procs)

    watchdog = threading.Timer(timeout, kill_all)
    with open(log_path, "ab") as log, open(os.devnull, "wb") as null:
        started = time.perf_counter()
        try:
            previous = None
            for i, argv in enumerate(stages):
                last = i == len(stages) - 1
                stdout = (null if stdout_to_null else log) if last else subprocess.PIPE
                wrapped = [GNU_TIME, "-f", "%M", "-o", str(rss_files[i]), *argv] if GNU_TIME else list(argv)
                proc = subprocess.Popen(wrapped, stdin=previous if previous else subprocess.DEVNULL,
                                        stdout=stdout, stderr=log, start_new_session=True)
                if previous is not None:
                    previous.close()  # the next process holds the read end now
                previous = proc.stdout
                procs.append(proc)
            watchdog.start()
            wait4_peak, codes = 0, []
            for proc in procs:
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait again
                codes.append(proc.returncode)
                wait4_peak = max(wait4_peak, usage.ru_maxrss)
            wall = time.perf_counter() - started
        finally:
            watchdog.cancel()
            kill_groups([p for p in procs if p.returncode is None])
    measured = [read_rss(path) for path in rss_files] if GNU_TIME else []
    known = [m for m in measured if m is not None]
    peak = max(known) if known and len(known) == len(measured) else None
    for path in rss_files:
        path.unlink(missing_ok=True)
    return PipelineResult(wall=wall, peak_rss_kib=peak if peak is not None else wait4_peak,
                          wait4_rss_kib=wait4_peak, exit_codes=codes, timed_out=timed_out.is_set())


def read_rss(path: Path) -> int | None:
    """GNU time's -o file: maybe "Command exited with non-zero status N", then %M (KiB)."""
    try:
        lines = path.read_text().split()
        return int(lines[-1])
    except (OSError, ValueError, IndexError):
        return None


def kill_groups(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


# --- loop devices ---------------------------------------------------------------------------------


class LoopTargets:
    """Fresh sparse backing files attached as loop devices; remembers only what it attached itself."""

    def __init__(self, directory: Path, size: int, direct_io: bool = True) -> None:
        self.directory = directory
        self.size = size
        self.direct_io = direct_io
        self.attached: dict[str, Path] = {}

    def create(self, name: str) -> str:
        backing = self.directory / f"target-{name}.img"
        backing.unlink(missing_ok=True)
        with open(backing, "wb") as f:
            f.truncate(self.size)
        device = subprocess.run(["losetup", "-f", "--show", f"--direct-io={'on' if self.direct_io else 'off'}",
                                 str(backing)], check=True, capture_output=True, text=True).stdout.strip()
        self.attached[device] = backing
        return device

    def release(self, device: str) -> None:
        backing = self.attached.pop(device, None)
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
        if backing is not None:
            backing.unlink(missing_ok=True)

    def release_all(self) -> None:
        for device in list(self.attached):
            self.release(device)


SECTOR = 512
GPT_TAIL = 33 * SECTOR  # backup partition entries + backup header at the end of a GPT disk


def target_matches(image: Path, device: str, size: int, *, gpt_fixups: bool) -> str | None:
    """None when the device holds the image, else what differs.

    Exact tools must leave the first `size` bytes equal to the image. A tool that fixes up the
    GPT for a larger disk (bty moves the backup GPT to the disk's end) legitimately changes the
    protective MBR's partition entry, the primary GPT header and the image's old backup GPT;
    everything else must be equal, the partition entries must be unchanged and sgdisk -v clean.
    """
    subprocess.run(["blockdev", "--flushbufs", device], check=False, capture_output=True)
    if not gpt_fixups:
        return cmp_range(image, device, 0, size)
    for start, end in ((0, 446), (2 * SECTOR, size - GPT_TAIL)):  # skip MBR entries+LBA 1, the old tail
        differs = cmp_range(image, device, start, end - start)
        if differs:
            return differs
    if partition_entries(str(image)) != partition_entries(device):
        return "the partition entries differ from the image's"
    verify = subprocess.run(["sgdisk", "-v", device], capture_output=True, text=True, check=False)
    if verify.returncode != 0 or "No problems found" not in verify.stdout:
        return "sgdisk -v: " + " ".join(verify.stdout.split())
    return None


def cmp_range(image: Path, device: str, start: int, length: int) -> str | None:
    proc = subprocess.run(["cmp", "-n", str(length), "-i", f"{start}:{start}", str(image), device],
                          capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return None
    return (proc.stdout + proc.stderr).strip() or f"cmp exit {proc.returncode}"


def partition_entries(disk: str) -> list[tuple[object, ...]]:
    proc = subprocess.run(["sfdisk", "--json", disk], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return []
    parts = json.loads(proc.stdout)["partitiontable"].get("partitions", [])
    return [(p["start"], p["size"], p["type"], p.get("uuid"), p.get("name")) for p in parts]


# --- artifacts ------------------------------------------------------------------------------------


def prepare_artifacts(out_dir: Path, size: int, fill: float, bty: Path, rebuild: bool) -> Artifacts:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{size // MIB}M-fill{round(fill * 100)}"
    image = out_dir / f"{stem}.img"
    zst = out_dir / f"{stem}.img.zst"
    manifest = out_dir / f"{stem}.img.zst.toml"
    bmap = out_dir / f"{stem}.img.bmap"
    built: dict[str, float] = {}
    if rebuild or not image.exists():
        for stale in (image, zst, manifest, bmap):
            stale.unlink(missing_ok=True)
        step(f"building {image.name}: {size / MIB:.0f} MiB GPT + ESP + ext4 {fill:.0%} full of host files")
        info = build_disk_image(image, size, fill=fill)
        built["image"] = info.build_seconds
        print(f"    {info.file_count} files, {info.data_bytes / MIB:.0f} MiB of data, "
              f"built in {info.build_seconds:.1f} s")
    else:
        step(f"using cached {image}")
    if not zst.exists():
        manifest.unlink(missing_ok=True)
        step(f"compressing: zstd -T0 -3 {image.name}")
        built["zstd"] = timed(lambda: compress(image, zst))
    if not bmap.exists():
        step(f"bmaptool create {image.name} > {bmap.name}")
        partial = bmap.with_name(f".{bmap.name}.partial")
        built["bmap"] = timed(lambda: run_quiet(["bmaptool", "create", str(image)], stdout=partial))
        os.replace(partial, bmap)
    if not manifest.exists():
        step(f"bty images add {zst.name}")
        try:
            built["manifest"] = timed(lambda: run_quiet([str(bty), "images", "add", str(zst)]))
        except (RuntimeError, OSError) as exc:
            print(f"    WARNING: no manifest: {exc}", flush=True)
    packed = out_dir / f"{stem}.packed.img.zst"
    if not packed.exists() or not packed.with_name(packed.name + ".toml").exists():
        step(f"bty images pack {image.name} -o {packed.name}")
        try:
            built["pack"] = timed(lambda: run_quiet([str(bty), "images", "pack", str(image), "-o", str(packed)]))
        except (RuntimeError, OSError) as exc:
            print(f"    WARNING: no packed image: {exc}", flush=True)
    return Artifacts(image=image, zst=zst, manifest=manifest, bmap=bmap, image_size=image.stat().st_size,
                     zst_size=zst.stat().st_size, build_seconds=built,
                     packed=packed if packed.exists() else None,
                     packed_size=packed.stat().st_size if packed.exists() else 0)


def compress(image: Path, zst: Path) -> None:
    partial = zst.with_name(f".{zst.name}.partial")
    run_quiet(["zstd", "-T0", "-3", "-q", "-f", str(image), "-o", str(partial)])
    os.replace(partial, zst)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def warm(paths: Sequence[Path]) -> None:
    """Read the sources once so every tool starts with them in the page cache."""
    buf = bytearray(READ_CHUNK)
    for path in paths:
        if path.exists():
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


# --- the contenders -------------------------------------------------------------------------------


def contenders(art: Artifacts, bty: Path) -> list[Contender]:
    image, size = str(art.image), str(art.image_size)
    rows = [Contender("dd-raw", "dd raw image, O_DIRECT (stage: write)",
                      (("dd", f"if={image}", f"of={TARGET}", "bs=4M", "oflag=direct", "status=none"),), "peer")]
    for suffix, variant in VARIANTS:
        zst = str(art.zst) if not suffix else str(art.packed) if art.packed else None
        if zst is None:
            continue
        flash = (str(bty), "flash", zst, TARGET, "--yes", "--verify")
        zstd_dd = (("zstd", "-dc", zst),
                   ("dd", f"of={TARGET}", "bs=4M", "iflag=fullblock", "oflag=direct", "status=none"))
        bmap = ("bmaptool", "copy", "--bmap", str(art.bmap), zst, TARGET)
        rows += [
            Contender(f"bty-readback{suffix}", f"bty --verify readback, {variant}", ((*flash, "readback"),), "bty",
                      gpt_fixups=True),
            Contender(f"bty-stream{suffix}", f"bty --verify stream, {variant}", ((*flash, "stream"),), "bty",
                      gpt_fixups=True),
            Contender(f"bty-off{suffix}", f"bty --verify off, {variant}", ((*flash, "off"),), "bty",
                      gpt_fixups=True),
            Contender(f"zstd-dd{suffix}", f"zstd -dc | dd, {variant}", zstd_dd, "peer"),
            Contender(f"bmaptool{suffix}", f"bmaptool copy, {variant}", (bmap,), "peer"),
            Contender(f"bmaptool-noverify{suffix}", f"bmaptool --no-verify, {variant}",
                      ((*bmap[:2], "--no-verify", *bmap[2:]),), "peer"),
            Contender(f"py-decompress{suffix}", f"stage: zstandard decompress, {variant}",
                      ((sys.executable, "-c", PY_DECOMPRESS, zst, size),), "stage", needs_target=False),
            Contender(f"zstd-null{suffix}", f"stage: zstd -dc > /dev/null, {variant}", (("zstd", "-dc", zst),),
                      "stage", needs_target=False, stdout_to_null=True),
        ]
    return rows


def bty_flash_usable(bty: Path) -> str | None:
    """None when `bty flash --help` works, else why not."""
    if not bty.exists():
        return f"{bty} does not exist (run `make setup`)"
    try:
        proc = subprocess.run([str(bty), "flash", "--help"], capture_output=True, text=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`bty flash --help` did not run: {exc}"
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        return f"`bty flash --help` failed: {detail[-1] if detail else proc.returncode}"
    return None


# --- running --------------------------------------------------------------------------------------


def measure(row: Row, run: int, art: Artifacts, targets: LoopTargets, logs: Path,
            timeout: float) -> RunResult:
    contender = row.contender
    device = targets.create(f"{contender.key}-{run}") if contender.needs_target else None
    log_path = logs / f"{contender.key}-run{run}.log"
    log_path.unlink(missing_ok=True)
    stages = [tuple(arg.replace(TARGET, device) if device else arg for arg in argv)
              for argv in contender.stages]
    try:
        os.sync()
        try:
            ran = run_pipeline(stages, log_path, stdout_to_null=contender.stdout_to_null, timeout=timeout)
        except OSError as exc:  # a tool of the pipeline could not be started
            return RunResult(run=run, wall=0.0, peak_rss_kib=0, exit_codes=[], error=f"cannot run: {exc}")
        result = RunResult(run=run, wall=ran.wall, peak_rss_kib=ran.peak_rss_kib,
                           wait4_rss_kib=ran.wait4_rss_kib, exit_codes=ran.exit_codes)
        codes, timed_out = ran.exit_codes, ran.timed_out
        if timed_out:
            result.error = f"timed out after {timeout:.0f} s"
        elif any(codes):
            result.error = f"exit codes {codes}: {last_line(log_path)}"
        elif device is not None:
            mismatch = target_matches(art.image, device, art.image_size, gpt_fixups=contender.gpt_fixups)
            if mismatch:
                result.error, result.mismatch = f"target differs from the image: {mismatch}", True
                loud(f"MISMATCH: {contender.label} (run {run}) wrote the wrong bytes: {mismatch}")
    finally:
        if device is not None:
            targets.release(device)
    return result


def run_all(rows: list[Row], runs: int, art: Artifacts, targets: LoopTargets, logs: Path,
            timeout: float) -> None:
    active = [row for row in rows if row.unavailable is None]
    for run in range(1, runs + 1):
        order = active[(run - 1) % len(active):] + active[:(run - 1) % len(active)]  # rotate each round
        for row in order:
            print(f"    run {run}/{runs}  {row.contender.label:<38}", end="", flush=True)
            result = measure(row, run, art, targets, logs, timeout)
            row.runs.append(result)
            mbps = art.image_size / result.wall / 1e6 if result.wall else 0.0
            status = "ok" if result.error is None else f"ERROR: {result.error}"
            print(f"{result.wall:7.2f} s {mbps:7.0f} MB/s {result.peak_rss_kib / 1024:7.1f} MiB  {status}",
                  flush=True)


# --- report ---------------------------------------------------------------------------------------


def row_by_key(rows: Sequence[Row], key: str) -> Row | None:
    return next((row for row in rows if row.contender.key == key), None)


def ratio(row: Row, base: Row | None) -> float | None:
    if base is None or row.median_wall is None or base.median_wall is None:
        return None
    return row.median_wall / base.median_wall


def fmt(value: float | None, width: int, decimals: int) -> str:
    return "-".rjust(width) if value is None else f"{value:{width}.{decimals}f}"


def variant_of(row: Row) -> str:
    return "-packed" if row.contender.key.endswith("-packed") else ""


def print_table(rows: Sequence[Row], image_size: int) -> None:
    header = (f"{'tool':<40} {'median s':>9} {'MB/s':>7} {'RSS MiB':>8} {'/stream':>8} {'/readback':>10}"
              f"  status")
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        suffix = variant_of(row)
        stream, readback = row_by_key(rows, f"bty-stream{suffix}"), row_by_key(rows, f"bty-readback{suffix}")
        wall = row.median_wall
        mbps = image_size / wall / 1e6 if wall else None
        print(f"{row.contender.label:<40} {fmt(wall, 9, 2)} {fmt(mbps, 7, 0)} {fmt(row.peak_rss_mib, 8, 1)} "
              f"{fmt(ratio(row, stream), 8, 2)} {fmt(ratio(row, readback), 10, 2)}  {row.status}")
    print("ratios: median time / bty median time on the same file (above 1: bty is faster)")


def evaluate(rows: Sequence[Row]) -> list[Check]:
    def get(key: str) -> Row | None:
        row = row_by_key(rows, key)
        return row if row is not None and row.ok else None

    def faster(name: str, bty_key: str, peer_key: str, factor: float) -> Check:
        bty, peer = get(bty_key), get(peer_key)
        if bty is None or peer is None or bty.median_wall is None or peer.median_wall is None:
            return Check(name, False, "no clean measurement of " + " and ".join(
                k for k, r in ((bty_key, bty), (peer_key, peer)) if r is None))
        speedup = peer.median_wall / bty.median_wall
        detail = f"{bty.median_wall:.2f} s vs {peer.median_wall:.2f} s: {speedup:.2f}x (want >= {factor}x)"
        return Check(name, speedup >= factor, detail)

    checks = []
    for suffix, variant in VARIANTS:
        if row_by_key(rows, f"bty-stream{suffix}") is None:
            continue
        checks += [
            faster(f"[{variant}] bty --verify stream >= 1.5x faster than zstd|dd", f"bty-stream{suffix}",
                   f"zstd-dd{suffix}", 1.5),
            faster(f"[{variant}] bty --verify stream >= 2x faster than bmaptool copy", f"bty-stream{suffix}",
                   f"bmaptool{suffix}", 2.0),
            faster(f"[{variant}] bty --verify readback no slower than zstd|dd", f"bty-readback{suffix}",
                   f"zstd-dd{suffix}", 1.0),
        ]
        stream, decompress, write = get(f"bty-stream{suffix}"), get(f"py-decompress{suffix}"), get("dd-raw")
        name = f"[{variant}] bty stream within 15% of its slowest stage alone"
        if stream is None or decompress is None or write is None:
            missing = [k for k, r in ((f"bty-stream{suffix}", stream), (f"py-decompress{suffix}", decompress),
                                      ("dd-raw", write)) if r is None]
            checks.append(Check(name, False, "no clean measurement of " + ", ".join(missing)))
        else:
            slowest = max((decompress, write), key=lambda r: r.median_wall or 0.0)
            limit = (slowest.median_wall or 0.0) * 1.15
            wall = stream.median_wall or 0.0
            checks.append(Check(name, wall <= limit, f"{wall:.2f} s vs {slowest.contender.label} "
                                                     f"{slowest.median_wall:.2f} s (limit {limit:.2f} s)"))
    bty_rows = [r for r in rows if r.contender.kind == "bty"]
    rss = [r.peak_rss_mib for r in bty_rows if r.ok and r.peak_rss_mib is not None]
    if len(rss) == len(bty_rows) and rss:
        checks.append(Check("bty peak RSS <= 200 MiB", max(rss) <= 200, f"max {max(rss):.1f} MiB"))
    else:
        checks.append(Check("bty peak RSS <= 200 MiB", False, "no clean measurement of every bty row"))
    return checks


def print_checks(checks: Sequence[Check], rows: Sequence[Row]) -> None:
    print("\ntargets:")
    for check in checks:
        print(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    for row in rows:
        if row.unavailable:
            print(f"  NOTE  {row.contender.label}: {row.unavailable}")
        for result in row.runs:
            if result.error:
                print(f"  {'WRONG' if result.mismatch else 'ERROR'} {row.contender.label} run {result.run}: "
                      f"{result.error}")


def write_json(path: Path, art: Artifacts, rows: Sequence[Row], checks: Sequence[Check], runs: int) -> None:
    def ratio_to(row: Row, key: str) -> float | None:
        return ratio(row, row_by_key(rows, f"{key}{variant_of(row)}"))

    data = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "image": {"path": str(art.image), "size": art.image_size, "zst": str(art.zst),
                  "zst_size": art.zst_size, "bmap": str(art.bmap),
                  "packed": str(art.packed) if art.packed else None, "packed_size": art.packed_size,
                  "manifest": str(art.manifest) if art.manifest.exists() else None,
                  "build_seconds": art.build_seconds},
        "runs": runs,
        "rss_method": rss_note(),
        "tools": [
            {"key": row.contender.key, "label": row.contender.label, "kind": row.contender.kind,
             "commands": [list(argv) for argv in row.contender.stages], "status": row.status,
             "target_check": "equal outside the GPT headers, same entries, sgdisk -v clean"
             if row.contender.gpt_fixups else "first image-size bytes equal",
             "unavailable": row.unavailable, "median_wall_s": row.median_wall,
             "mb_per_s": art.image_size / row.median_wall / 1e6 if row.median_wall else None,
             "peak_rss_mib": row.peak_rss_mib, "ratio_to_bty_stream": ratio_to(row, "bty-stream"),
             "ratio_to_bty_readback": ratio_to(row, "bty-readback"), "runs": [asdict(r) for r in row.runs]}
            for row in rows
        ],
        "checks": [asdict(c) for c in checks],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"), help="image size (default 2G)")
    parser.add_argument("--fill", type=float, default=0.5, help="root filesystem fill (default 0.5)")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool, interleaved (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out", help="cache and results directory")
    parser.add_argument("--only", nargs="+", metavar="KEY",
                        help="run only these rows (keys as in results.json)")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild the cached image and its derivatives")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a run is killed")
    parser.add_argument("--buffered-loop", action="store_true",
                        help="attach targets without --direct-io (writes land in the page cache of the backing "
                        "file; tools that fsync then pay for draining it, dd does not)")
    parser.add_argument("--bty", type=Path, default=REPO / ".venv" / "bin" / "bty", help="the bty to measure")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (loop devices, O_DIRECT to block devices)", file=sys.stderr)
        return 2
    os.environ.setdefault("BTY_RECEIPTS", str(args.out / "receipts"))  # keep bty's receipts with the results
    art = prepare_artifacts(args.out, args.size, args.fill, args.bty, args.rebuild)
    print(f"    image {art.image_size / MIB:.0f} MiB, zst {art.zst_size / MIB:.0f} MiB "
          f"({art.zst_size / art.image_size:.1%}), packed {art.packed_size / MIB:.0f} MiB")
    rows = [Row(c) for c in contenders(art, args.bty) if not args.only or c.key in args.only]
    if not rows:
        print(f"bench: --only matched nothing; keys: {[c.key for c in contenders(art, args.bty)]}",
              file=sys.stderr)
        return 2
    why_not = bty_flash_usable(args.bty) if any(r.contender.kind == "bty" for r in rows) else None
    for row in rows:
        if row.contender.kind == "bty" and why_not:
            row.unavailable = f"bty flash not usable: {why_not}"
    if why_not:
        loud(f"bty rows skipped: {why_not}")
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    step("warming the page cache with the sources")
    warm([art.image, art.zst, art.bmap, art.manifest])
    targets = LoopTargets(args.out, art.image_size + TARGET_SLACK, direct_io=not args.buffered_loop)
    step(f"{args.runs} interleaved runs of {sum(r.unavailable is None for r in rows)} tools "
         f"(fresh {targets.size / MIB:.0f} MiB loop target per write; logs in {logs})")
    try:
        if any(r.unavailable is None for r in rows):
            run_all(rows, args.runs, art, targets, logs, args.timeout)
    finally:
        targets.release_all()
    print_table(rows, art.image_size)
    checks = evaluate(rows)
    print_checks(checks, rows)
    results = args.out / "results.json"
    write_json(results, art, rows, checks, args.runs)
    print(f"\nresults: {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
