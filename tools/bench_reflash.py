#!/usr/bin/env python3
"""Benchmark, the reflash scenario: a disk that already holds image v1 gets v2, a few scattered
MiB different from v1 (a package update). bty's differential flash reads the disk back block by
block and writes only the blocks that differ; against it: bty's full write, casync extracting
in place with the disk itself as its seed, and `zstd -dc | dd`.

A benchmark, not a test: it prints a table per setup and PASS/FAIL lines for the goals and always
exits 0 (unless it cannot run at all). `make bench-reflash` (and `make bench`, after
tools/bench.py) runs `tools/bench_reflash.py --size 2G --loop both --runs 3 --markdown
bench-out/reflash/table.md`.

    .venv/bin/python tools/bench_reflash.py [--size 2G] [--loop direct|buffered|both] [--runs 3]
        [--changes 24] [--seed 14] [--markdown FILE] [--rebuild]
    .venv/bin/python tools/bench_reflash.py --size 512M --runs 1      # a quick look at the bench

The images (cached; tools/benchkit/reflash.py):
  v1   tools/bench.py's image (tools/mkdiskimage.py: GPT, ESP, ext4 --fill full of this host's
       files) in bench-out/, packed too (`bty images pack`, for the record: the targets get v1 by
       a copy, never by a flash)
  v2   v1 with --changes ranges (default 24) of 64-512 KiB (4 KiB multiples) overwritten with
       random bytes, at 4 KiB-aligned offsets inside the root filesystem's file data (every
       4 KiB page of a range is non-zero in v1), drawn with random.Random(--seed); the output
       lists every range and the blocks of v2's block index it touches. Packed with `bty images pack` (which
       writes the manifest; with a bty that has the differential flash, its block index), in
       bench-out/reflash/; repacked whenever the bty_live sources the measured bty imports change.
  casync: `casync make --store=v2.castr v2.caibx v2.img` once (not timed), and v1's index alone
       (its chunk ids: which chunks the seed cannot give).

Targets (--loop, as tools/bench.py: direct = `losetup --direct-io=on`, buffered = plain): before
every run a backing file of exactly the image's size is written with a full copy of v1
(`cp --sparse=never`: every block allocated, as on a disk flashed with v1), fsynced, dropped from
the page cache (so a tool reading the target reads storage), then attached. None of that is timed.

Rows, interleaved (order rotated each round), --runs times each, medians:
  bty-diff     `bty flash v2.packed.img.zst DEV --yes --receipt R` (the default read-back verify)
  bty-full     the same with --full (a bty without --full: the same command, a full flash today)
  casync-seed  `casync -v extract --store=v2.castr --seed=DEV --seed-output=no --reflink=no v2.caibx DEV`:
               in place, the device holding v1 as the one seed (--seed-output=yes, casync's default,
               would add the same device as the seed; =no with an explicit --seed names it once);
               TMPDIR points at a per-run scratch directory for casync's seed cache. casync indexes
               the whole seed first (reads and chunks the device) and then writes every byte of
               the image, taking each chunk from the seed when it can: it saves transfer from the
               store, not writes to the disk
  zstd-dd      `zstd -dc v2.packed.img.zst | dd of=DEV bs=4M iflag=fullblock oflag=direct`
Every run ends with the device and its backing file fsynced, timed (casync writes through the
device's page cache; a plain loop device's writes sit in the backing file's page cache); then the
whole device must equal v2.img (cmp), else the run is WRONG and its row's check FAILs.

Measured per run: seconds; bytes the device wrote and read: the run's delta of
/sys/block/loopN/stat (sectors x 512; the counters outlive a loop attachment, hence deltas; on this
kernel (6.x) a write-zeroes request (BLKZEROOUT, what bty sends for all-zero ranges) is counted as a
write of its whole length, so a full bty write counts the zeroed half too, like dd's written zeroes);
bytes read from the source: bty, its receipt's differential.source_bytes_read (no such key: the
packed file's size); zstd | dd, the packed file; casync, the chunk files it opened in the store
(compressed .cacnk files, summed once per open) plus v2.caibx. casync runs under
`strace -f --seccomp-bpf -e trace=openat` for that: only openat stops the process, and casync
opens a file per store chunk, a few per run. Without strace the figure is v2's index entries whose
chunk id is not among v1's: a lower bound, since extracting in place overwrites seed chunks that
casync then finds stale (it re-hashes every seed chunk) and takes from the store. casync -v's own
counts (chunks from the seed and the store, seeding and decoding time) are printed beside it.
bty's receipt "differential" (mode, reason, bytes compared/skipped/written/zeroed) is printed and
kept; without it the run was a full flash. "fell back" means bty took the disk for another image
(it judges from the first data blocks it compares; with v2's changes dense there, as in a small
image, it can) and wrote it whole.

Goals (PASS/FAIL per setup): bty-diff >= 1.5x faster than bty-full; bty-diff faster than
casync-seed; bty-diff writes < 15 % of the image (the device's write counter).

Results: bench-out/reflash/results.json (logs in bench-out/reflash/logs/, bty receipts in
bench-out/reflash/receipts/); --markdown FILE: one row per setup. Loop devices and target files
are removed in every path; only the cached images stay in bench-out/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python tools/bench_reflash.py`: make `tools` importable
    sys.path.insert(0, str(REPO))

from tools.bench import default_bty, size_label  # noqa: E402
from tools.benchkit.artifacts import prepare_artifacts, warm  # noqa: E402
from tools.benchkit.contenders import bty_flash_usable  # noqa: E402
from tools.benchkit.loop_targets import SETUPS, Setup  # noqa: E402
from tools.benchkit.output import loud, step  # noqa: E402
from tools.benchkit.reflash import (  # noqa: E402
    KIB,
    SeededTargets,
    bty_has_full,
    describe_changes,
    evaluate,
    make_images,
    markdown,
    print_table,
    reflash_contenders,
    run_rows,
    write_json,
)
from tools.benchkit.report import Check, print_checks  # noqa: E402
from tools.benchkit.runs import Row  # noqa: E402
from tools.mkdiskimage import MIB, parse_size  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"), help="image size (default 2G)")
    parser.add_argument("--fill", type=float, default=0.5, help="root filesystem fill (default 0.5)")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool, interleaved (default 3)")
    parser.add_argument("--loop", choices=("direct", "buffered", "both"), default="both",
                        help="targets: loop devices with --direct-io=on, plain ones, or both (default both)")
    parser.add_argument("--changes", type=int, default=24, help="ranges changed in v2 (default 24)")
    parser.add_argument("--change-size", type=parse_size, nargs=2, default=[64 * KIB, 512 * KIB],
                        metavar=("MIN", "MAX"), help="a range's length (default 64K 512K; 4 KiB multiples)")
    parser.add_argument("--seed", type=int, default=14, help="seed of the changes (default 14)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out",
                        help="cache directory (v1 as tools/bench.py builds it); results in OUT/reflash/")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the results as a Markdown table")
    parser.add_argument("--rebuild", action="store_true", help="rebuild v1, v2 and everything made from them")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a run is killed")
    parser.add_argument("--bty", type=Path, default=default_bty(),
                        help="the bty to measure (default: as tools/bench.py)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    low, high = args.change_size
    if low % 4096 or high % 4096 or not 0 < low <= high:
        parser.error("--change-size: 4 KiB multiples, MIN <= MAX")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_reflash: needs root (loop devices, O_DIRECT to block devices)", file=sys.stderr)
        return 2
    out = args.out / "reflash"
    logs, receipts = out / "logs", out / "receipts"
    for directory in (out, logs, receipts):
        directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BTY_RECEIPTS", str(receipts))  # as tools/bench.py: bty's receipts with the results
    why_not = bty_flash_usable(args.bty)
    if why_not:  # the packed v2 and its manifest need bty too
        print(f"bench_reflash: bty is not usable: {why_not}", file=sys.stderr)
        return 2
    casync = shutil.which("casync") is not None
    if not casync:
        loud("casync is not installed (scripts/setup-host.sh installs it): the casync-seed row is skipped")
    setups = [SETUPS[name] for name in (("direct", "buffered") if args.loop == "both" else (args.loop,))]

    art = prepare_artifacts(args.out, args.size, args.fill, args.bty, args.rebuild, formats=("packed",))
    img = make_images(out, art.image, art.packed, args.bty, seed=args.seed, count=args.changes,
                      min_len=args.change_size[0], max_len=args.change_size[1], casync=casync, rebuild=args.rebuild)
    print("\n".join(describe_changes(img)))
    sizes = [f"v2 packed {img.v2_packed.stat().st_size / MIB:.0f} MiB"]
    if img.v1_packed is not None:
        sizes.insert(0, f"v1 packed {img.v1_packed.stat().st_size / MIB:.0f} MiB")
    if img.caibx is not None:
        sizes.append(f"v2.caibx {img.caibx.stat().st_size / MIB:.2f} MiB, {img.casync_chunks} chunks; "
                     f"{img.casync_fetch_chunks} not in v1 ({img.casync_fetch_bytes / MIB:.2f} MiB in the store)")
    print(f"    image {img.size / MIB:.0f} MiB; " + "; ".join(sizes))
    has_full = bty_has_full(args.bty)
    if not has_full:
        loud("this bty has no `flash --full`: bty-full runs a plain `bty flash` (a full flash before the "
             "differential flash)")
    contenders = reflash_contenders(img, args.bty, has_full)
    sources = [img.v1, img.v2_packed, img.v2_manifest]
    if img.caibx is not None and img.store is not None:
        sources += [img.caibx, *sorted(p for p in img.store.rglob("*.cacnk"))]
    label = size_label(img.size)
    cells: list[tuple[Setup, list[Row], list[Check]]] = []
    for setup in setups:
        rows = [Row(c) for c in contenders]
        heading = f"reflash, {label} image ({img.size >> 20} MiB), {setup.label}"
        step(f"{heading}: warming the page cache with the sources")
        warm(sources)
        targets = SeededTargets(out, img.v1, direct_io=setup.direct_io)
        step(f"{heading}: {args.runs} interleaved runs of {len(rows)} tools (a fresh {img.size / MIB:.0f} MiB target "
             f"holding v1 per run; logs in {logs})")
        try:
            run_rows(rows, args.runs, img, targets, logs, receipts, f"{label}-{setup.name}", args.timeout)
        finally:
            targets.release_all()
        print_table(heading, rows, img)
        checks = evaluate(f"{label} {setup.name} loop", rows, img)
        print_checks(heading, checks, rows)
        cells.append((setup, rows, checks))
    results = out / "results.json"
    write_json(results, img, cells, args.runs)
    print(f"\nresults: {results}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(img, cells, args.fill))
        print(f"Markdown table: {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
