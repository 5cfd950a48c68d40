"""The reflash scenario (tools/bench_reflash.py): a disk that holds image v1 gets v2, which differs
from v1 by a few scattered MiB, as after a package update.

* `make_images`: v2 made from the cached v1 (seeded, the changes listed), v2 packed with
  `bty images pack` (its manifest), and casync's blob index and chunk store of v2; all cached in
  OUT/reflash/ and rebuilt when v1, the change parameters or bty's sources changed.
* `SeededTargets`: loop devices whose backing file holds v1, written fresh for every run.
* `reflash_contenders`, `run_rows`: the rows and the interleaved runs, each measured by its time,
  the device's own I/O counters and what it read from the source.
* `evaluate`, `print_table`, `write_json`, `markdown`: the results.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import shutil
import struct
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tools.benchkit.contenders import PEER_DD, RECEIPT, TARGET, Contender
from tools.benchkit.loop_targets import LoopTargets, Setup, cmp_range
from tools.benchkit.output import loud, step
from tools.benchkit.procs import last_line, rss_note, run_pipeline, run_quiet
from tools.benchkit.report import Check
from tools.benchkit.runs import Row, RunResult, median_of, read_receipt, receipt_timing
from tools.mkdiskimage import MIB, ROOT_X86_64_TYPE

KIB = 1 << 10
PAGE = 4096  # the changes are written at 4 KiB-aligned offsets, in whole 4 KiB pages
#: the block bty's differential flash compares when v2's manifest does not say (its [index]
#: block_size, the packed file's frame size, does: 2 MiB since main packs 2 MiB frames)
DIFF_BLOCK = 8 * MIB
SECTOR = 512  # /sys/block/*/stat counts 512-byte sectors, whatever the device's block size
SCRATCH = "{scratch}"  # placeholder in a command for the run's scratch directory (casync's TMPDIR)

#: the goals (issue 14, item 5)
DIFF_VS_FULL = 1.5  # bty-diff at least this much faster than bty-full
WRITTEN_LIMIT = 0.15  # bty-diff writes less than this share of the image

CASYNC_STAT_RE = re.compile(r"^(Chunk requests fulfilled from|Bytes used from|Time spent) ([^:]+): (\S+)")
CHUNK_OPEN_RE = re.compile(r'openat\([^"]*"([^"]*?([0-9a-f]{64})\.cacnk)"')
#: casync runs under strace when it is installed, stopping only at openat (seccomp-bpf filter): the
#: chunk files it opens in the store are what it read from it
STRACE = ("strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=openat", "-e", "status=successful",
          "-o", f"{SCRATCH}/openat.trace")


# -- v2, its packed file, casync's index and store ---------------------------------------------

@dataclass(frozen=True)
class Change:
    """One range of v2 that differs from v1: `length` random bytes at `offset` (of the image)."""

    offset: int
    length: int

    def blocks(self, block: int = DIFF_BLOCK) -> range:
        return range(self.offset // block, (self.offset + self.length - 1) // block + 1)


@dataclass(frozen=True)
class ReflashImages:
    v1: Path  # the raw image the targets hold before every run
    v2: Path  # the raw image every run must leave on the target
    v2_packed: Path  # `bty images pack v2` (multi-frame zstd) ...
    v2_manifest: Path  # ... and its manifest (the block index, from a bty that writes one)
    v1_packed: Path | None  # v1 packed the same way (not flashed: the targets get v1 by a copy)
    size: int
    root: tuple[int, int]  # the root partition: start, end (bytes)
    changes: tuple[Change, ...]
    seed: int
    caibx: Path | None  # casync's blob index of v2 ...
    store: Path | None  # ... and its chunk store (`casync make`, default chunking and compression)
    #: index entries of v2 whose chunk is not among v1's, and their chunk files' sizes (as stored,
    #: compressed) summed: what casync must take from the store at least (a seed chunk that the
    #: extraction in place overwrote before using it is taken from the store too)
    casync_fetch_chunks: int = 0
    casync_fetch_bytes: int = 0
    casync_chunks: int = 0  # index entries of v2
    block_size: int = DIFF_BLOCK  # of v2's block index (the manifest's [index] block_size)
    build_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def changed_bytes(self) -> int:
        return sum(c.length for c in self.changes)

    @property
    def changed_blocks(self) -> list[int]:
        return sorted({b for c in self.changes for b in c.blocks(self.block_size)})

    @property
    def blocks_text(self) -> str:
        return f"{self.block_size / MIB:g} MiB"


def root_partition(image: Path) -> tuple[int, int]:
    """Start and end (bytes) of the image's Linux root partition."""
    proc = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True)
    table = json.loads(proc.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", SECTOR))
    for part in table.get("partitions", []):
        if str(part.get("type", "")).upper() == ROOT_X86_64_TYPE:
            return part["start"] * sector, (part["start"] + part["size"]) * sector
    raise RuntimeError(f"{image.name}: no Linux root partition ({ROOT_X86_64_TYPE})")


def data_extents(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The allocated ranges of a sparse file between start and end (SEEK_DATA / SEEK_HOLE)."""
    extents, pos = [], start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            break
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        extents.append((data, hole))
        pos = hole
    return extents


def pick_changes(image: Path, start: int, end: int, seed: int, count: int, min_len: int,
                 max_len: int) -> list[Change]:
    """`count` ranges of min_len..max_len bytes (4 KiB multiples) at 4 KiB-aligned offsets, inside
    the root filesystem's data between start and end, not overlapping, every 4 KiB page of them
    non-zero in the image (file contents, not the free half): what updated files look like.
    Drawn with random.Random(seed), weighted by the data's extents."""
    rng = random.Random(seed)
    zero_page = bytes(PAGE)
    fd = os.open(image, os.O_RDONLY)
    try:
        extents = [(a, b) for a, b in data_extents(fd, start, end) if b - a >= min_len]
        total = sum(b - a for a, b in extents)
        if not extents:
            raise RuntimeError(f"{image.name}: no data in the root partition to change")
        picked: list[Change] = []
        for _ in range(count * 500):
            if len(picked) == count:
                break
            length = rng.randrange(min_len, max_len + 1, PAGE)
            at = rng.randrange(total)
            for a, b in extents:
                if at < b - a:
                    offset = (a + at) // PAGE * PAGE
                    break
                at -= b - a
            if offset < a or offset + length > b:
                continue
            if any(offset < c.offset + c.length and c.offset < offset + length for c in picked):
                continue
            data = os.pread(fd, length, offset)
            if any(data[i:i + PAGE] == zero_page for i in range(0, length, PAGE)):
                continue
            picked.append(Change(offset, length))
        if len(picked) < count:
            raise RuntimeError(f"{image.name}: found only {len(picked)} of {count} non-zero ranges to change")
        return sorted(picked, key=lambda c: c.offset)
    finally:
        os.close(fd)


def write_v2(v1: Path, v2: Path, changes: Sequence[Change], seed: int) -> None:
    """v2 = a sparse copy of v1 with every change's range overwritten by random bytes (seeded)."""
    partial = v2.with_name(f".{v2.name}.partial")
    run_quiet(["cp", "--sparse=always", "--reflink=never", str(v1), str(partial)])
    rng = random.Random(f"{seed}-content")
    fd = os.open(partial, os.O_WRONLY)
    try:
        for change in changes:
            os.pwrite(fd, rng.randbytes(change.length), change.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, v2)


def bty_fingerprint(bty: Path) -> str:
    """A digest of the bty_live sources `bty` imports (its interpreter, this environment): a
    manifest written by another bty (say, one without a block index) is rebuilt."""
    python = sys.executable
    try:
        first = bty.read_bytes()[:256].split(b"\n", 1)[0]
        if first.startswith(b"#!") and b"python" in first:
            python = first[2:].decode().strip().split()[0]
    except OSError:
        pass
    code = "import bty_live, pathlib; print(pathlib.Path(bty_live.__file__).parent)"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False, cwd="/")
    if proc.returncode != 0:
        return "unknown"
    root = Path(proc.stdout.strip())
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def timed(argv: Sequence[str]) -> float:
    started = time.perf_counter()
    run_quiet(argv)
    return time.perf_counter() - started


def caibx_entries(path: Path) -> list[tuple[int, bytes]]:
    """A casync blob index: (end offset, chunk id) per chunk. The file is an INDEX object (48
    bytes), a TABLE header (16), 40-byte items (le64 end offset, 32-byte id) and a 40-byte tail."""
    data = path.read_bytes()
    index_size, index_type = struct.unpack_from("<QQ", data, 0)
    table_type = struct.unpack_from("<QQ", data, index_size)[1]
    if index_type != 0x96824D9C7B129FF9 or table_type != 0xE75B9E112F17417D:
        raise RuntimeError(f"{path.name}: not a casync index")
    first, last = index_size + 16, len(data) - 40
    return [(struct.unpack_from("<Q", data, pos)[0], data[pos + 8:pos + 40]) for pos in range(first, last, 40)]


def chunk_file(store: Path, chunk_id: bytes) -> Path:
    name = chunk_id.hex()
    return store / name[:4] / f"{name}.cacnk"


def make_casync(v1: Path, v2: Path, caibx: Path, store: Path, v1_caibx: Path) -> dict[str, float]:
    """`casync make --store=STORE v2.caibx v2.img` (what a server publishes), and v1's index alone
    (its store thrown away): which chunks of v2 the seed cannot give is known from the two."""
    built: dict[str, float] = {}
    if not caibx.exists() or not store.is_dir():
        step(f"casync make --store={store.name} {caibx.name} {v2.name}")
        shutil.rmtree(store, ignore_errors=True)
        partial = caibx.with_name(f".partial-{caibx.name}")  # casync wants the .caibx suffix
        built["casync make v2"] = timed(["casync", "make", f"--store={store}", str(partial), str(v2)])
        os.replace(partial, caibx)
    if not v1_caibx.exists():
        step(f"casync make {v1_caibx.name} {v1.name} (the index only: v1's chunk ids)")
        scratch = v1_caibx.with_name(f".scratch-{v1_caibx.stem}.castr")
        partial = v1_caibx.with_name(f".partial-{v1_caibx.name}")
        try:
            built["casync make v1"] = timed(["casync", "make", f"--store={scratch}", str(partial), str(v1)])
            os.replace(partial, v1_caibx)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return built


def make_images(out: Path, v1: Path, v1_packed: Path | None, bty: Path, *, seed: int, count: int,
                min_len: int, max_len: int, casync: bool, rebuild: bool) -> ReflashImages:
    """v2 and what is made from it, in out/ (cached: see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{v1.name.removesuffix('.img')}.v2"
    v2, spec_path = out / f"{stem}.img", out / f"{stem}.json"
    packed = out / f"{stem}.packed.img.zst"
    manifest = packed.with_name(packed.name + ".toml")
    caibx, store, v1_caibx = out / f"{stem}.caibx", out / f"{stem}.castr", out / f"{stem}.v1.caibx"
    size = v1.stat().st_size
    root = root_partition(v1)
    v1_stat = v1.stat()
    spec: dict[str, Any] = {"v1": v1.name, "v1_size": size, "v1_mtime_ns": v1_stat.st_mtime_ns, "seed": seed,
                            "count": count, "min": min_len, "max": max_len}
    try:
        old = json.loads(spec_path.read_text())
    except (OSError, ValueError):
        old = {}
    built: dict[str, float] = {}
    if rebuild or not v2.exists() or {k: old.get(k) for k in spec} != spec:
        for stale in out.glob(f"{stem}.*"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        step(f"making {v2.name}: {v1.name} with {count} ranges of {min_len // KIB}-{max_len // KIB} KiB "
             f"changed (seed {seed})")
        started = time.perf_counter()
        changes = pick_changes(v1, *root, seed, count, min_len, max_len)
        write_v2(v1, v2, changes, seed)
        built["v2"] = time.perf_counter() - started
        spec["changes"] = [[c.offset, c.length] for c in changes]
        spec_path.write_text(json.dumps(spec, indent=1) + "\n")
    else:
        step(f"using cached {v2.name}")
        changes = [Change(int(o), int(n)) for o, n in old["changes"]]
        spec["changes"] = old["changes"]
    fingerprint = bty_fingerprint(bty)
    if not packed.exists() or not manifest.exists() or old.get("packed_by") != fingerprint:
        step(f"bty images pack {v2.name} -o {packed.name} (bty sources {fingerprint})")
        manifest.unlink(missing_ok=True)
        built["pack v2"] = timed([str(bty), "images", "pack", str(v2), "-o", str(packed)])
    spec["packed_by"] = fingerprint
    spec_path.write_text(json.dumps(spec, indent=1) + "\n")
    fetch_chunks = fetch_bytes = chunks = 0
    if casync:
        built |= make_casync(v1, v2, caibx, store, v1_caibx)
        seeded = {chunk for _, chunk in caibx_entries(v1_caibx)}
        entries = caibx_entries(caibx)
        missing = [chunk for _, chunk in entries if chunk not in seeded]
        chunks, fetch_chunks = len(entries), len(missing)
        fetch_bytes = sum(chunk_file(store, chunk).stat().st_size for chunk in missing)
    return ReflashImages(v1=v1, v2=v2, v2_packed=packed, v2_manifest=manifest, v1_packed=v1_packed, size=size,
                         root=root, changes=tuple(changes), seed=seed, caibx=caibx if casync else None,
                         store=store if casync else None, casync_fetch_chunks=fetch_chunks,
                         casync_fetch_bytes=fetch_bytes, casync_chunks=chunks,
                         block_size=index_block_size(manifest), build_seconds=built)


def index_block_size(manifest: Path) -> int:
    """The block size of the manifest's block index ([index] block_size), else DIFF_BLOCK."""
    try:
        with open(manifest, "rb") as f:
            value = tomllib.load(f).get("index", {}).get("block_size")
    except (OSError, ValueError):
        return DIFF_BLOCK
    return value if isinstance(value, int) and value > 0 else DIFF_BLOCK


def describe_changes(img: ReflashImages) -> list[str]:
    """What v2 changed, exactly: one line per range."""
    blocks = img.changed_blocks
    lines = [f"v2 = v1 with {len(img.changes)} ranges overwritten by random bytes (seed {img.seed}), "
             f"{img.changed_bytes / MIB:.2f} MiB in all, 4 KiB-aligned, inside the root partition's file data "
             f"(every 4 KiB page non-zero in v1); they touch {len(blocks)} of the image's "
             f"{-(-img.size // img.block_size)} {img.blocks_text} blocks (v2's block index; "
             f"{len(blocks) * img.block_size / MIB:.0f} MiB):"]
    root_start = img.root[0]
    for i, c in enumerate(img.changes, 1):
        touched = ",".join(str(b) for b in c.blocks(img.block_size))
        lines.append(f"  {i:2d}. offset {c.offset:#012x} ({c.offset / MIB:9.3f} MiB; root "
                     f"+{(c.offset - root_start) / MIB:8.3f} MiB) length {c.length // KIB:4d} KiB  "
                     f"block {touched}")
    return lines


# -- the targets ----------------------------------------------------------------------------------

class SeededTargets(LoopTargets):
    """Loop devices whose backing file is a full copy of the seed image (v1), exactly its size.

    Written fresh before every run: `cp --sparse=never` (every block allocated, as on a disk that
    was flashed with v1), fsync, then its pages dropped from the page cache (POSIX_FADV_DONTNEED)
    so a tool reading the target reads it from storage, not from the copy's cached pages; then
    attached. The backing file has the image's exact size: bty's GPT fix-up has nothing to move,
    and the whole device must equal v2 afterwards."""

    def __init__(self, directory: Path, seed_image: Path, direct_io: bool) -> None:
        super().__init__(directory, seed_image.stat().st_size, direct_io=direct_io)
        self.seed_image = seed_image
        self.prepare_s = 0.0  # the last create()'s copy + fsync + attach (not part of any run's time)

    def create(self, name: str) -> str:
        started = time.perf_counter()
        backing = self.directory / f"target-{name}.img"
        backing.unlink(missing_ok=True)
        try:
            run_quiet(["cp", "--sparse=never", "--reflink=never", str(self.seed_image), str(backing)])
            fd = os.open(backing, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except BaseException:
            backing.unlink(missing_ok=True)
            raise
        device = self.attach(backing)
        self.prepare_s = time.perf_counter() - started
        return device

    def make_durable(self, device: str) -> float:
        """fsync the device (a tool that wrote through its page cache, casync) and then its
        backing file (a plain loop device's writes sit in the file's page cache); the seconds."""
        started = time.perf_counter()
        for path in (device, self.attached[device]):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return time.perf_counter() - started


def disk_io(device: str) -> tuple[int, int]:
    """Bytes read and written so far by the device, from /sys/block/NAME/stat (fields 3 and 7:
    sectors of 512 bytes). The counters live as long as the loop device node, not its attachment:
    use deltas. Write-zeroes requests (BLKZEROOUT) are counted as writes there (see the docstring
    of tools/bench_reflash.py)."""
    fields = Path(f"/sys/block/{Path(device).name}/stat").read_text().split()
    return int(fields[2]) * SECTOR, int(fields[6]) * SECTOR


# -- the rows and the runs ---------------------------------------------------------------------

def bty_has_full(bty: Path) -> bool:
    proc = subprocess.run([str(bty), "flash", "--help"], capture_output=True, text=True, check=False, timeout=60)
    return "--full" in proc.stdout


def reflash_contenders(img: ReflashImages, bty: Path, has_full: bool) -> list[Contender]:
    packed = str(img.v2_packed)
    flash = (str(bty), "flash", packed, TARGET, "--yes", "--receipt", RECEIPT)  # as tools/benchkit/contenders.py
    full = (str(bty), "flash", "--full", *flash[2:]) if has_full else flash
    rows = [
        Contender("bty-diff", "bty flash (differential), packed v2", (flash,), "bty", fmt="packed"),
        Contender("bty-full", "bty flash --full, packed v2" if has_full
                  else "bty flash (no --full yet: full), packed v2", (full,), "bty", fmt="packed"),
    ]
    if img.caibx is not None and img.store is not None:
        traced = STRACE if shutil.which("strace") else ()
        rows.append(Contender(
            "casync-seed", "casync extract --seed=DEV onto DEV (v2.caibx)",
            (("env", f"TMPDIR={SCRATCH}", *traced, "casync", "-v", "extract", f"--store={img.store}",
              f"--seed={TARGET}", "--seed-output=no", "--reflink=no", str(img.caibx), TARGET),), "peer"))
    rows.append(Contender("zstd-dd", "zstd -dc | dd oflag=direct, packed v2", (("zstd", "-dc", packed), PEER_DD),
                          "peer", fmt="packed"))
    return rows


@dataclass
class ReflashRun(RunResult):
    dev_read: int | None = None  # bytes the device read during the run (/sys/block/NAME/stat delta)
    dev_written: int | None = None  # bytes the device wrote, write-zeroes included
    source_read: int | None = None  # bytes of the image's files the tool read (see source_note)
    differential: dict[str, Any] | None = None  # bty: the receipt's "differential", when there is one
    casync: dict[str, Any] | None = None  # casync -v's closing statistics, and the chunk files it opened
    prepare_s: float | None = None  # copying v1 onto the target before the run (not timed)


def casync_stats(log_path: Path) -> dict[str, Any]:
    """casync -v's last lines: requests and bytes from the store and the seed, seeding and decoding time."""
    stats: dict[str, Any] = {}
    try:
        lines = log_path.read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        return {}
    for line in lines:
        match = CASYNC_STAT_RE.match(line.strip().lstrip("-\\|/"))
        if match:
            stats[f"{match.group(1)} {match.group(2)}".lower().replace(" ", "_")] = match.group(3)
    return stats


def store_reads(trace: Path, img: ReflashImages) -> dict[str, Any]:
    """The chunk files casync opened in the store (strace's openat log): how many, and their sizes
    summed (one whole read of the file per open). Empty without a trace (strace not installed)."""
    try:
        text = trace.read_text(errors="replace")
    except OSError:
        return {}
    ids = [match.group(2) for match in CHUNK_OPEN_RE.finditer(text)]
    if img.store is None:
        return {}
    return {"store_chunk_files_opened": len(ids),
            "store_bytes_opened": sum(chunk_file(img.store, bytes.fromhex(i)).stat().st_size for i in ids)}


def measure(row: Row, run: int, img: ReflashImages, targets: SeededTargets, logs: Path, receipts: Path,
            tag: str, timeout: float) -> ReflashRun:
    contender = row.contender
    name = f"{tag}-{contender.key}-run{run}"
    log_path, receipt = logs / f"{name}.log", receipts / f"{name}.json"
    log_path.unlink(missing_ok=True)
    receipt.unlink(missing_ok=True)
    scratch = targets.directory / f"scratch-{name}"
    device = targets.create(name)
    try:
        scratch.mkdir(exist_ok=True)
        stages = [tuple(arg.replace(TARGET, device).replace(RECEIPT, str(receipt)).replace(SCRATCH, str(scratch))
                        for arg in argv) for argv in contender.stages]
        os.sync()
        read0, written0 = disk_io(device)
        try:
            ran = run_pipeline(stages, log_path, stdout_to_null=False, timeout=timeout)
        except OSError as exc:
            return ReflashRun(run=run, wall=0.0, peak_rss_kib=0, exit_codes=[], error=f"cannot run: {exc}")
        durable = targets.make_durable(device)
        read1, written1 = disk_io(device)
        result = ReflashRun(run=run, wall=ran.wall + durable, peak_rss_kib=ran.peak_rss_kib, exit_codes=ran.exit_codes,
                            wait4_rss_kib=ran.wait4_rss_kib, tool_wall=ran.wall, durable_s=durable,
                            dev_read=read1 - read0, dev_written=written1 - written0, prepare_s=targets.prepare_s)
        packed_size = img.v2_packed.stat().st_size
        if contender.kind == "bty":
            result.receipt = str(receipt)
            data = read_receipt(receipt) or {}
            result.phases, result.profile = receipt_timing(data)
            diff = data.get("differential")
            result.differential = diff if isinstance(diff, dict) else None
            source = (result.differential or {}).get("source_bytes_read")
            result.source_read = source if isinstance(source, int) else packed_size
        elif contender.key == "casync-seed" and img.caibx is not None:
            result.casync = casync_stats(log_path) | store_reads(scratch / "openat.trace", img)
            opened = result.casync.get("store_bytes_opened")
            result.source_read = (opened if isinstance(opened, int) else img.casync_fetch_bytes) \
                + img.caibx.stat().st_size
        else:
            result.source_read = packed_size
        if ran.timed_out:
            result.error = f"timed out after {timeout:.0f} s"
        elif any(ran.exit_codes):
            result.error = f"exit codes {ran.exit_codes}: {last_line(log_path)}"
        else:
            subprocess.run(["blockdev", "--flushbufs", device], check=False, capture_output=True)
            mismatch = cmp_range(img.v2, device, 0, img.size)
            if mismatch:
                result.error, result.mismatch = f"target differs from v2: {mismatch}", True
                loud(f"MISMATCH: {contender.label} (run {run}) left the wrong bytes: {mismatch}")
        return result
    finally:
        targets.release(device)
        shutil.rmtree(scratch, ignore_errors=True)


def run_rows(rows: list[Row], runs: int, img: ReflashImages, targets: SeededTargets, logs: Path, receipts: Path,
             tag: str, timeout: float) -> None:
    """Every row `runs` times, interleaved, the order rotated each round (as tools/benchkit/runs.py)."""
    active = [row for row in rows if row.unavailable is None]
    for run in range(1, runs + 1):
        shift = (run - 1) % len(active) if active else 0
        for row in active[shift:] + active[:shift]:
            print(f"    run {run}/{runs}  {row.contender.label:<50}", end="", flush=True)
            result = measure(row, run, img, targets, logs, receipts, tag, timeout)
            row.runs.append(result)
            status = "ok" if result.error is None else f"ERROR: {result.error}"
            mode = (result.differential or {}).get("mode") if row.contender.kind == "bty" else None
            print(f"{result.wall:7.2f} s (fsync {result.durable_s or 0:.2f}) written {mib(result.dev_written):>7} MiB "
                  f"read {mib(result.dev_read):>7} MiB{f'  [{mode}]' if mode else ''}  {status}", flush=True)


# -- the results ---------------------------------------------------------------------------------

def mib(value: float | None, decimals: int = 1) -> str:
    return "-" if value is None else f"{value / MIB:.{decimals}f}"


def runs_of(row: Row) -> list[ReflashRun]:
    return [r for r in row.good_runs if isinstance(r, ReflashRun)]


def median_field(row: Row, name: str) -> float | None:
    return median_of([getattr(r, name) for r in runs_of(row)])


def median_diff(row: Row, key: str) -> float | None:
    return median_of([(r.differential or {}).get(key) for r in runs_of(row)
                      if isinstance((r.differential or {}).get(key), int | float)])


def modes(row: Row) -> str:
    """The differential modes of a bty row's runs ("full (no key)" when the receipt has none)."""
    seen = []
    for r in runs_of(row):
        d = r.differential
        text = f"{d.get('mode')} ({d.get('reason')})" if d and d.get("reason") else str(d.get("mode")) if d \
            else "no \"differential\" in the receipt: a full flash"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen) or "-"


def by_key(rows: Sequence[Row], key: str) -> Row | None:
    return next((r for r in rows if r.contender.key == key and r.ok), None)


SOURCE_NOTE = ("source MiB: bty, the receipt's differential.source_bytes_read (without it: the packed file's "
               "size); zstd | dd: the packed file; casync: the chunk files (compressed, as stored) it opened in the "
               "store, from strace's openat log, plus v2.caibx (without strace: v2's index entries whose chunk id is "
               "not among v1's, a lower bound)")


def print_table(heading: str, rows: Sequence[Row], img: ReflashImages) -> None:
    diff = by_key(rows, "bty-diff")
    print(f"\n{heading}")
    header = (f"{'tool':<50} {'median s':>9} {'fsync s':>8} {'written MiB':>12} {'% image':>8} {'dev read MiB':>13} "
              f"{'source MiB':>11} {'/ bty-diff':>10}  status")
    print(header + "\n" + "-" * len(header))
    for row in rows:
        wall, written = row.median_wall, median_field(row, "dev_written")
        ratio = wall / diff.median_wall if wall and diff and diff.median_wall else None
        share = f"{written / img.size:8.1%}" if written is not None else f"{'-':>8}"
        print(f"{row.contender.label:<50} {fmt(wall, 9)} {fmt(row.median_durable, 8)} {mib(written):>12} {share} "
              f"{mib(median_field(row, 'dev_read')):>13} {mib(median_field(row, 'source_read'), 2):>11} "
              f"{fmt(ratio, 10)}  {row.status}")
    print("median s: from the tool's start until the target's device and backing file are fsynced (fsync s, its "
          "part)\nwritten / dev read MiB: the loop device's own counters (/sys/block/loopN/stat, sectors x 512, the "
          "run's delta); write-zeroes count as writes\n" + SOURCE_NOTE + "\n/ bty-diff: median time / bty-diff's")
    for row in rows:
        if row.contender.kind == "bty" and runs_of(row):
            print(f"  {row.contender.key}: {modes(row)}; receipt medians: compared "
                  f"{mib(median_diff(row, 'bytes_compared'))} MiB, skipped {mib(median_diff(row, 'bytes_skipped'))}, "
                  f"written {mib(median_diff(row, 'bytes_written'))}, zeroed {mib(median_diff(row, 'bytes_zeroed'))}, "
                  f"source read {mib(median_diff(row, 'source_bytes_read'), 2)} MiB; phases "
                  + ", ".join(f"{p} {row.median_phase(p):.2f} s" for p in ("write", "verify", "fixup")
                              if row.median_phase(p) is not None))
        if row.contender.key == "casync-seed" and runs_of(row):
            stats = runs_of(row)[-1].casync or {}
            print(f"  casync-seed (last run, casync -v): seeding {stats.get('time_spent_seeding', '?')}, decoding "
                  f"{stats.get('time_spent_decoding', '?')}; chunks from the seed "
                  f"{stats.get('chunk_requests_fulfilled_from_local_seed', '?')} "
                  f"({stats.get('bytes_used_from_local_seed', '?')}), from the store "
                  f"{stats.get('chunk_requests_fulfilled_from_local_store', '?')} "
                  f"({stats.get('bytes_used_from_local_store', '?')} uncompressed); chunk files opened in the store "
                  f"{stats.get('store_chunk_files_opened', '? (no strace)')}, "
                  f"{mib(stats.get('store_bytes_opened'), 2)} MiB as stored; v2's chunks not in v1: "
                  f"{img.casync_fetch_chunks}, {img.casync_fetch_bytes / MIB:.2f} MiB as stored")


def fmt(value: float | None, width: int, decimals: int = 2) -> str:
    return "-".rjust(width) if value is None else f"{value:{width}.{decimals}f}"


def evaluate(tag: str, rows: Sequence[Row], img: ReflashImages) -> list[Check]:
    diff, full, casync = by_key(rows, "bty-diff"), by_key(rows, "bty-full"), by_key(rows, "casync-seed")
    checks = []

    def faster(name: str, other: Row | None, other_key: str, factor: float, strictly: bool) -> Check:
        if diff is None or other is None or not diff.median_wall or not other.median_wall:
            missing = [k for k, r in (("bty-diff", diff), (other_key, other)) if r is None]
            return Check(name, False, "no clean measurement of " + " and ".join(missing or ["the times"]))
        speedup = other.median_wall / diff.median_wall
        passed = speedup > factor if strictly else speedup >= factor
        return Check(name, passed, f"{diff.median_wall:.2f} s vs {other.median_wall:.2f} s: {speedup:.2f}x "
                                   f"(want {'>' if strictly else '>='} {factor}x)")

    checks.append(faster(f"[{tag}] bty-diff >= {DIFF_VS_FULL}x faster than bty-full", full, "bty-full",
                         DIFF_VS_FULL, False))
    checks.append(faster(f"[{tag}] bty-diff faster than casync-seed", casync, "casync-seed", 1.0, True))
    name = f"[{tag}] bty-diff writes < {WRITTEN_LIMIT:.0%} of the image to the device"
    written = median_field(diff, "dev_written") if diff else None
    if diff is None or written is None:
        checks.append(Check(name, False, "no clean measurement of bty-diff"))
    else:
        checks.append(Check(name, written / img.size < WRITTEN_LIMIT,
                            f"{written / MIB:.1f} MiB of {img.size / MIB:.0f} MiB: {written / img.size:.1%} (median, "
                            f"/sys/block stat; {modes(diff)})"))
    for row in rows:
        if row.unavailable or not row.runs:
            continue
        wrong = [r.run for r in row.runs if r.mismatch]
        failed = [r.run for r in row.runs if r.error and not r.mismatch]
        detail = f"{len(row.runs)} runs, " + (f"wrong bytes in runs {wrong}" if wrong else "every run's target equals "
                                              "v2.img") + (f"; failed runs {failed}" if failed else "")
        checks.append(Check(f"[{tag}] {row.contender.key} leaves exactly v2 on the target", not wrong and not failed,
                            detail))
    return checks


def row_json(row: Row, img: ReflashImages, diff: Row | None) -> dict[str, Any]:
    c, written = row.contender, median_field(row, "dev_written")
    return {"key": c.key, "label": c.label, "kind": c.kind, "commands": [list(argv) for argv in c.stages],
            "status": row.status, "unavailable": row.unavailable, "median_wall_s": row.median_wall,
            "median_durable_s": row.median_durable, "median_dev_written": written,
            "median_dev_read": median_field(row, "dev_read"), "median_source_read": median_field(row, "source_read"),
            "written_share_of_image": written / img.size if written is not None else None,
            "ratio_to_bty_diff": row.median_wall / diff.median_wall
            if row.median_wall and diff and diff.median_wall else None,
            "differential_modes": modes(row) if c.kind == "bty" else None,
            "peak_rss_mib": row.peak_rss_mib, "runs": [asdict(r) for r in row.runs]}


def images_json(img: ReflashImages) -> dict[str, Any]:
    def size(path: Path | None) -> int | None:
        return path.stat().st_size if path is not None and path.exists() else None

    return {"v1": str(img.v1), "v2": str(img.v2), "size": img.size, "v2_packed": str(img.v2_packed),
            "v2_packed_size": size(img.v2_packed), "v2_manifest": str(img.v2_manifest),
            "v1_packed": str(img.v1_packed) if img.v1_packed else None, "v1_packed_size": size(img.v1_packed),
            "root_partition": list(img.root), "seed": img.seed,
            "changes": [{"offset": c.offset, "length": c.length, "blocks": list(c.blocks(img.block_size))}
                        for c in img.changes],
            "block_size": img.block_size, "changed_bytes": img.changed_bytes, "changed_blocks": img.changed_blocks,
            "casync": {"caibx": str(img.caibx), "caibx_size": size(img.caibx), "store": str(img.store),
                       "chunks": img.casync_chunks, "fetch_chunks": img.casync_fetch_chunks,
                       "fetch_bytes": img.casync_fetch_bytes} if img.caibx else None,
            "build_seconds": img.build_seconds}


def write_json(path: Path, img: ReflashImages, cells: Sequence[tuple[Setup, list[Row], list[Check]]],
               runs: int) -> None:
    data = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": runs, "rss_method": rss_note(),
        "timing": "wall: the tool's time from start to exit plus the fsync of the target device and its backing "
                  "file after it exited (durable_s); copying v1 onto the target before (prepare_s) is not timed",
        "io_method": "dev_read / dev_written: delta of /sys/block/loopN/stat sectors read/written x 512 over the "
                     "run (tool + fsync); write-zeroes requests count as writes",
        "source_method": SOURCE_NOTE,
        "images": images_json(img),
        "setups": [{"setup": setup.name, "setup_label": setup.label, "direct_io": setup.direct_io,
                    "tools": [row_json(r, img, by_key(rows, "bty-diff")) for r in rows],
                    "checks": [asdict(c) for c in checks]} for setup, rows, checks in cells],
        "checks": [asdict(c) for _, _, checks in cells for c in checks],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def markdown(img: ReflashImages, cells: Sequence[tuple[Setup, list[Row], list[Check]]], fill: float) -> str:
    def s(row: Row | None) -> str:
        return "-" if row is None or row.median_wall is None else f"{row.median_wall:.2f}"

    def w(row: Row | None) -> str:
        written = median_field(row, "dev_written") if row else None
        return "-" if written is None else f"{written / MIB:.0f} ({written / img.size:.1%})"

    def x(a: Row | None, b: Row | None) -> str:
        return "-" if not (a and b and a.median_wall and b.median_wall) else f"{b.median_wall / a.median_wall:.2f}x"

    size = f"{img.size / (1 << 30):g} GiB" if img.size >= 1 << 30 else f"{img.size >> 20} MiB"
    lines = ["| setup | bty-diff s | bty-full s | casync-seed s | `zstd -dc \\| dd` s | bty-full / bty-diff "
             "| casync / bty-diff | written MiB (% of image): bty-diff | bty-full | casync | zstd \\| dd |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for setup, rows, _ in cells:
        diff, full = by_key(rows, "bty-diff"), by_key(rows, "bty-full")
        casync, dd = by_key(rows, "casync-seed"), by_key(rows, "zstd-dd")
        text = (f"{size} GPT+ESP+ext4 image {fill:.0%} full; v2: {len(img.changes)} ranges, "
                f"{img.changed_bytes / MIB:.1f} MiB changed; target holds v1, onto a {setup.markdown}")
        lines.append(f"| {text} | {s(diff)} | {s(full)} | {s(casync)} | {s(dd)} | {x(diff, full)} | {x(diff, casync)} "
                     f"| {w(diff)} | {w(full)} | {w(casync)} | {w(dd)} |")
    lines += ["", "Medians of the runs (tools/bench_reflash.py); every run ends with the target fsynced; written: "
              "the loop device's write counter (write-zeroes included)."]
    return "\n".join(lines) + "\n"
