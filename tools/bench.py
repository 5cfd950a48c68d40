#!/usr/bin/env python3
"""Benchmark: `bty flash` against dd, zstd|dd and bmaptool, side by side on loop devices;
`bty capture` against dd | zstd reading the image back from one.

A benchmark, not a test: it prints a table and PASS/FAIL lines for the performance targets and
always exits 0 (unless it cannot run at all). `make bench` runs it.

    .venv/bin/python tools/bench.py [--size 2G] [--runs 3] [--only NAME ...] [--rebuild]
    .venv/bin/python tools/bench.py --only capture-bty capture-dd-zstd   # the capture scenario alone

Artifacts are cached in bench-out/ and rebuilt only when missing: a realistic image made by
tools/mkdiskimage.py (GPT, ESP, ext4 half full of this host's files), two zstd files of it,
each with its bty manifest, and a bmap (`bmaptool create`):
  single  X.img.zst from `zstd -T0 -3`: one frame, which only one core can decompress
  packed  X.packed.img.zst from `bty images pack`: independent 8 MiB frames (still plain zstd)
Every tool runs on both files. The capture rows (capture-bty, capture-dd-zstd) read a loop device
over the image (read-only, --direct-io=on) into a fresh file, checked by decompressing it.
Every run that writes gets a fresh sparse backing file attached as
a loop device with --direct-io=on, so writes reach the storage as on a real disk (no page cache
in between that a final fsync must drain; dd does not fsync, bty and bmaptool do); the sources
are read once beforehand so every tool starts from a warm page cache. After every write, the
target is compared with the image, so a fast but wrong tool is caught. Results go to
bench-out/results.json.

This file is the entry point (options, the order of the work); the work itself is done by the
modules of tools/benchkit/.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python tools/bench.py`: make `tools` importable
    sys.path.insert(0, str(REPO))

from tools.benchkit.artifacts import prepare_artifacts, warm  # noqa: E402
from tools.benchkit.capture import capture_checks, capture_contenders, print_capture_table, run_capture  # noqa: E402
from tools.benchkit.contenders import bty_flash_usable, contenders  # noqa: E402
from tools.benchkit.loop_targets import TARGET_SLACK, LoopTargets  # noqa: E402
from tools.benchkit.output import loud, step  # noqa: E402
from tools.benchkit.report import evaluate, print_checks, print_table, write_json  # noqa: E402
from tools.benchkit.runs import Row, run_all  # noqa: E402
from tools.mkdiskimage import MIB, parse_size  # noqa: E402


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
    every = contenders(art, args.bty) + capture_contenders(args.bty)
    rows = [Row(c) for c in every if not args.only or c.key in args.only]
    if not rows:
        print(f"bench: --only matched nothing; keys: {[c.key for c in every]}", file=sys.stderr)
        return 2
    why_not = bty_flash_usable(args.bty) if any(r.contender.kind in ("bty", "capture") for r in rows) else None
    for row in rows:
        if row.contender.kind in ("bty", "capture") and why_not:
            row.unavailable = f"bty flash not usable: {why_not}"
    if why_not:
        loud(f"bty rows skipped: {why_not}")
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    step("warming the page cache with the sources")
    warm([art.image, art.zst, art.bmap, art.manifest])
    flash_rows = [r for r in rows if r.contender.kind != "capture"]
    capture_rows = [r for r in rows if r.contender.kind == "capture"]
    checks = []
    if flash_rows:
        targets = LoopTargets(args.out, art.image_size + TARGET_SLACK, direct_io=not args.buffered_loop)
        step(f"{args.runs} interleaved runs of {sum(r.unavailable is None for r in flash_rows)} tools "
             f"(fresh {targets.size / MIB:.0f} MiB loop target per write; logs in {logs})")
        try:
            if any(r.unavailable is None for r in flash_rows):
                run_all(flash_rows, args.runs, art, targets, logs, args.timeout)
        finally:
            targets.release_all()
        print_table(flash_rows, art.image_size)
        checks += evaluate(flash_rows)
    if capture_rows:
        step(f"capture: {args.runs} interleaved runs of {len(capture_rows)} tools reading a "
             f"{'buffered' if args.buffered_loop else '--direct-io=on'} loop device over {art.image.name}")
        run_capture(capture_rows, args.runs, art, args.out, logs, args.timeout, direct_io=not args.buffered_loop)
        print_capture_table(capture_rows, art.image_size)
        checks += capture_checks(capture_rows)
    print_checks(checks, rows)
    results = args.out / "results.json"
    write_json(results, art, rows, checks, args.runs)
    print(f"\nresults: {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
