"""The results: the tables, the PASS/FAIL checks against the performance targets, the timelines of
bty's stages (--profile), results.json and the Markdown table (--markdown)."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bty_live.image.zstd_frames import PACKED_FRAME_SIZE
from tools.benchkit.artifacts import Artifacts
from tools.benchkit.contenders import Format
from tools.benchkit.procs import rss_note
from tools.benchkit.runs import Cell, Row, RunResult

FIRST_WRITE_LIMIT = 0.3  # seconds from bty's start to the first byte written
RSS_LIMIT = 200  # MiB
WRITE_PHASE_SLACK = 1.15  # the write phase may take this much longer than the slowest stage alone
TIMELINE_WIDTH = 60

#: how each format's file is made, for the Markdown table's setup column
BUILT_WITH = {"zst": "`zstd -T0 -3` (one frame)", "packed": f"`bty images pack` ({PACKED_FRAME_SIZE >> 20} MiB frames)",
              "xz": "`xz -T0 -3`", "qcow2": "`qemu-img convert -O qcow2 -c`"}


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def row_by_key(rows: Sequence[Row], key: str) -> Row | None:
    return next((row for row in rows if row.contender.key == key), None)


def ratio(row: Row, base: Row | None) -> float | None:
    if base is None or row.median_wall is None or base.median_wall is None:
        return None
    return row.median_wall / base.median_wall


def fmt(value: float | None, width: int, decimals: int) -> str:
    return "-".rjust(width) if value is None else f"{value:{width}.{decimals}f}"


def format_suffix(row: Row, formats: Sequence[Format]) -> str | None:
    """The key suffix of the row's format, None for the raw-image rows."""
    return next((f.suffix for f in formats if f.key == row.contender.fmt), None)


def print_table(cell: Cell) -> None:
    rows, size = cell.rows, cell.art.image_size
    print(f"\n{cell.heading}")
    header = (f"{'tool':<52} {'median s':>9} {'MB/s':>6} {'RSS MiB':>8} {'fsync s':>8} {'write s':>8} "
              f"{'1st wr s':>8} {'/stream':>8} {'/readback':>9}  status")
    print(header + "\n" + "-" * len(header))
    previous = rows[0].contender.fmt if rows else None
    for row in rows:
        if row.contender.fmt != previous:  # a thin line between the formats
            print("  " + "." * (len(header) - 2))
            previous = row.contender.fmt
        suffix = format_suffix(row, cell.formats)
        stream = row_by_key(rows, f"bty-stream{suffix}") if suffix is not None else None
        readback = row_by_key(rows, f"bty-readback{suffix}") if suffix is not None else None
        wall = row.median_wall
        mbps = size / wall / 1e6 if wall else None
        print(f"{row.contender.label:<52} {fmt(wall, 9, 2)} {fmt(mbps, 6, 0)} {fmt(row.peak_rss_mib, 8, 1)} "
              f"{fmt(row.median_durable, 8, 2)} {fmt(row.median_phase('write'), 8, 2)} "
              f"{fmt(row.median_first_write, 8, 3)} {fmt(ratio(row, stream), 8, 2)} "
              f"{fmt(ratio(row, readback), 9, 2)}  {row.status}")
    print("median s: the run's time, ending with the target's backing file fsynced (fsync s, its part); "
          "self-timed stages: their own seconds=\nwrite s: bty's write phase (receipt); 1st wr s: from bty's "
          "start to its first byte written (receipt profile)\nratios: median time / bty median time on the "
          "same file (above 1: bty is faster)")


# -- the timeline of a bty run (--profile) -----------------------------------------------------

def bar(start: float, end: float, busy: float, span: float, width: int = TIMELINE_WIDTH) -> str:
    """' ' outside the stage's span, inside it '#' for busy and '.' for waiting, spread evenly
    (the receipt has only the totals, not when the stage waited)."""
    a = min(width - 1, max(0, int(start / span * width)))
    b = min(width, max(a + 1, round(end / span * width)))
    share = min(1.0, max(0.0, busy / (end - start))) if end > start else 1.0
    cells = "".join("#" if math.floor((i + 1) * share) > math.floor(i * share) else "." for i in range(b - a))
    return " " * a + cells + " " * (width - b)


def timeline(result: RunResult) -> list[str]:
    phases = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in (result.phases or {}).items())
    tail = f"phases: {phases or '(none in the receipt)'}; wall {result.tool_wall or 0:.2f} s"
    profile = result.profile
    stages = [s for s in (profile or {}).get("stages") or [] if isinstance(s, dict)]
    if not stages:
        return [f"      no profile in the receipt; {tail}"]

    def num(stage: dict[str, Any], key: str) -> float:
        value = stage.get(key)
        return float(value) if isinstance(value, int | float) else 0.0

    span = max([result.tool_wall or 0.0] + [num(s, "end") for s in stages]) or 1.0
    first = result.first_write
    marker = [" "] * TIMELINE_WIDTH
    if first is not None:
        marker[min(TIMELINE_WIDTH - 1, int(first / span * TIMELINE_WIDTH))] = "v"
    lines = [f"      {'first write':<16} {''.join(marker)}  0 .. {span:.2f} s ('#' busy, '.' waiting)"]
    for stage in stages:
        start, end = num(stage, "start"), num(stage, "end")
        busy = num(stage, "busy") if "busy" in stage else end - start - num(stage, "wait_input") - num(
            stage, "wait_output")
        lines.append(f"      {str(stage.get('name', '?'))[:16]:<16}|{bar(start, end, busy, span)}| busy "
                     f"{busy:5.2f} s, waits in {num(stage, 'wait_input'):5.2f} out {num(stage, 'wait_output'):5.2f}")
    lines.append(f"      first write {first:.3f} s; {tail}" if first is not None else f"      {tail}")
    return lines


def print_timeline(row: Row, result: RunResult) -> None:
    if row.contender.kind == "bty" and result.error is None:
        print("\n".join(timeline(result)), flush=True)


# -- the checks --------------------------------------------------------------------------------

def slowest_stage(cell: Cell, f: Format) -> tuple[Row | None, list[str]]:
    """The slowest of the stages alone for format f (decompress: the in-process decompressor bty
    uses when measured, else the format's CLI; hash; data write; zeroout), and what is missing."""
    rows = cell.rows

    def clean(key: str) -> Row | None:
        row = row_by_key(rows, key)
        return row if row is not None and row.ok and row.median_wall is not None else None

    decompress = clean(f"py-decompress{f.suffix}") or clean(f.null_key)
    stages = {"decompress": decompress, "hash": clean("hash"), "write-data": clean("write-data"),
              "zeroout": clean("zeroout")}
    missing = [name for name, row in stages.items() if row is None]
    known = [row for row in stages.values() if row is not None]
    return (max(known, key=lambda r: r.median_wall or 0.0) if known else None), missing


def evaluate(cell: Cell) -> list[Check]:
    rows = cell.rows

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
    for f in cell.formats:
        tag = f"[{cell.size_label} {cell.setup.name} loop, {f.label}]"
        bty_rows = [r for r in rows if r.contender.kind == "bty" and r.contender.fmt == f.key]
        if not bty_rows:
            continue
        if f.key == "qcow2":
            checks += [
                faster(f"{tag} bty --verify readback no slower than qemu-img convert onto the device",
                       "bty-readback-qcow2", "qemu-img-qcow2", 1.0),
                faster(f"{tag} bty --verify readback no slower than qemu-img convert + dd",
                       "bty-readback-qcow2", "qemu-img-dd-qcow2", 1.0),
            ]
        else:
            peer = f"{f.cli_text} | dd"
            checks += [
                faster(f"{tag} bty --verify stream >= 1.5x faster than {peer}", f"bty-stream{f.suffix}",
                       f.peer_key, 1.5),
                faster(f"{tag} bty --verify stream >= 2x faster than bmaptool copy", f"bty-stream{f.suffix}",
                       f"bmaptool{f.suffix}", 2.0),
                faster(f"{tag} bty --verify readback no slower than {peer}", f"bty-readback{f.suffix}",
                       f.peer_key, 1.0),
                write_phase_check(cell, f, tag),
                first_write_check(bty_rows, tag),
            ]
        rss = [r.peak_rss_mib for r in bty_rows if r.ok and r.peak_rss_mib is not None]
        name = f"{tag} bty peak RSS <= {RSS_LIMIT} MiB"
        if len(rss) == len(bty_rows):
            checks.append(Check(name, max(rss) <= RSS_LIMIT, f"max {max(rss):.1f} MiB"))
        else:
            checks.append(Check(name, False, "no clean measurement of every bty row"))
    return checks


def write_phase_check(cell: Cell, f: Format, tag: str) -> Check:
    name = f"{tag} bty stream's write phase within {WRITE_PHASE_SLACK - 1:.0%} of the slowest stage alone"
    stream = row_by_key(cell.rows, f"bty-stream{f.suffix}")
    phase = stream.median_phase("write") if stream is not None and stream.ok else None
    slowest, missing = slowest_stage(cell, f)
    if phase is None or slowest is None or missing:
        what = ([f"bty-stream{f.suffix} (receipt phases.write)"] if phase is None else []) + missing
        return Check(name, False, "no clean measurement of " + ", ".join(what))
    limit = (slowest.median_wall or 0.0) * WRITE_PHASE_SLACK
    return Check(name, phase <= limit, f"write phase {phase:.2f} s vs the slowest stage alone, "
                                       f"{slowest.contender.label.removeprefix('stage: ')} "
                                       f"{slowest.median_wall:.2f} s (limit {limit:.2f} s)")


def first_write_check(bty_rows: Sequence[Row], tag: str) -> Check:
    name = f"{tag} bty's first byte written < {FIRST_WRITE_LIMIT} s after its start"
    medians = {r.contender.key: r.median_first_write for r in bty_rows if r.ok}
    if len(medians) != len(bty_rows) or any(v is None for v in medians.values()):
        return Check(name, False, "no first_write in the receipts of " + ", ".join(
            r.contender.key for r in bty_rows if medians.get(r.contender.key) is None))
    worst = max(medians, key=lambda k: medians[k] or 0.0)
    value = medians[worst] or 0.0
    return Check(name, value < FIRST_WRITE_LIMIT, f"slowest median {value:.3f} s ({worst})")


def print_checks(title: str, checks: Sequence[Check], rows: Sequence[Row]) -> None:
    print(f"\ntargets, {title}:")
    for check in checks:
        print(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    for row in rows:
        if row.unavailable:
            print(f"  NOTE  {row.contender.label}: {row.unavailable}")
        for result in row.runs:
            if result.error:
                print(f"  {'WRONG' if result.mismatch else 'ERROR'} {row.contender.label} run {result.run}: "
                      f"{result.error}")


def print_first_writes(cell: Cell) -> None:
    """The median first_write of each bty row of the cell, on one line."""
    bty = [r for r in cell.rows if r.contender.kind == "bty"]
    if bty:
        print(f"first byte written (median, s from bty's start), {cell.heading}:\n    " + ", ".join(
            f"{r.contender.key} {fmt(r.median_first_write, 0, 3).strip()}" for r in bty))


# -- results.json and the Markdown table --------------------------------------------------------

def tool_json(row: Row, rows: Sequence[Row], formats: Sequence[Format], image_size: int) -> dict[str, Any]:
    suffix = format_suffix(row, formats)

    def ratio_to(key: str) -> float | None:
        return ratio(row, row_by_key(rows, f"{key}{suffix}")) if suffix is not None else None

    c = row.contender
    return {"key": c.key, "label": c.label, "kind": c.kind, "format": c.fmt,
            "commands": [list(argv) for argv in c.stages], "status": row.status, "self_timed": c.self_timed,
            "target_check": ("none (leaves the target zeroed)" if not c.check_target
                             else "equal outside the GPT headers, same entries, sgdisk -v clean" if c.gpt_fixups
                             else "first image-size bytes equal") if c.needs_target else None,
            "unavailable": row.unavailable, "median_wall_s": row.median_wall,
            "median_durable_s": row.median_durable, "median_write_phase_s": row.median_phase("write"),
            "median_first_write_s": row.median_first_write,
            "mb_per_s": image_size / row.median_wall / 1e6 if row.median_wall else None,
            "peak_rss_mib": row.peak_rss_mib, "ratio_to_bty_stream": ratio_to("bty-stream"),
            "ratio_to_bty_readback": ratio_to("bty-readback"), "runs": [asdict(r) for r in row.runs]}


def image_json(art: Artifacts) -> dict[str, Any]:
    def opt(path: Path | None) -> str | None:
        return str(path) if path else None

    return {"path": str(art.image), "size": art.image_size, "zst": str(art.zst), "zst_size": art.zst_size,
            "bmap": str(art.bmap), "packed": opt(art.packed), "packed_size": art.packed_size,
            "xz": opt(art.xz), "xz_size": art.xz_size, "gz": opt(art.gz), "gz_size": art.gz_size,
            "gz_tool": art.gz_tool, "qcow2": opt(art.qcow2), "qcow2_size": art.qcow2_size,
            "manifest": str(art.manifest) if art.manifest.exists() else None, "build_seconds": art.build_seconds}


def write_json(path: Path, cells: Sequence[Cell], checks: Mapping[str, list[Check]], runs: int,
               capture: Mapping[str, tuple[str, Sequence[Row], list[Check]]]) -> None:
    """checks: per cell tag; capture: per size label, (setup name, rows, checks)."""
    data = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": runs,
        "rss_method": rss_note(),
        "timing": "wall: the tool's time from start to exit (self-timed stages: their own seconds=), plus the "
                  "fsync of the target's backing file after it exited (durable_s)",
        "cells": [
            {"size": cell.size_label, "image_size": cell.art.image_size, "setup": cell.setup.name,
             "setup_label": cell.setup.label, "direct_io": cell.setup.direct_io, "heading": cell.heading,
             "formats": [f.key for f in cell.formats], "image": image_json(cell.art),
             "tools": [tool_json(r, cell.rows, cell.formats, cell.art.image_size) for r in cell.rows],
             "checks": [asdict(c) for c in checks.get(cell.tag, [])]}
            for cell in cells
        ],
        "capture": [
            {"size": size, "setup": setup, "tools": [tool_json(r, rows, [], 0) for r in rows],
             "checks": [asdict(c) for c in capture_checks]}
            for size, (setup, rows, capture_checks) in capture.items()
        ],
        "checks": [asdict(c) for cell_checks in checks.values() for c in cell_checks]
                  + [asdict(c) for _, _, cc in capture.values() for c in cc],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def markdown(cells: Sequence[Cell], fill: float) -> str:
    """One row per size x setup x format: the setup spelled out, then the medians."""
    lines = [
        "| setup | bty --verify stream s | bty (readback) s | `X -dc \\| dd` s | bmaptool copy s "
        "| slowest stage alone s | first write s | bty peak RSS MiB | `X -dc \\| dd` / stream "
        "| bmaptool / stream |",
        "|---|--:|--:|--:|--:|---|--:|--:|--:|--:|",
    ]

    def s(value: float | None, decimals: int = 2) -> str:
        return "-" if value is None else f"{value:.{decimals}f}"

    def x(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    for cell in cells:
        for f in cell.formats:
            rows = cell.rows
            stream, readback = row_by_key(rows, f"bty-stream{f.suffix}"), row_by_key(rows, f"bty-readback{f.suffix}")
            if stream is None and readback is None:
                continue
            peer_key = "qemu-img-dd-qcow2" if f.key == "qcow2" else f.peer_key
            peer, bmap = row_by_key(rows, peer_key), row_by_key(rows, f"bmaptool{f.suffix}")
            peer_text = "qemu-img convert, then dd" if f.key == "qcow2" else f"`{f.cli_text} \\| dd`"
            built = BUILT_WITH.get(f.key) or f"`{cell.art.gz_tool} -6`"
            size = cell.art.image_size
            size_text = f"{size / (1 << 30):g} GiB" if size >= 1 << 30 else f"{size >> 20} MiB"
            setup = (f"{size_text} GPT+ESP+ext4 image {fill:.0%} full, {f.label} from {built}, onto a "
                     f"{cell.setup.markdown}; peer {peer_text}")
            slowest, _ = slowest_stage(cell, f) if f.key != "qcow2" else (None, [])
            slow = f"{s(slowest.median_wall)} ({slowest.contender.label.removeprefix('stage: ')})" if slowest else "-"
            bty = [r for r in rows if r.contender.kind == "bty" and r.contender.fmt == f.key]
            rss = [r.peak_rss_mib for r in bty if r.peak_rss_mib is not None]
            first = [r.median_first_write for r in bty if r.median_first_write is not None]
            lines.append(
                f"| {setup} | {s(stream.median_wall if stream else None)} "
                f"| {s(readback.median_wall if readback else None)} | {s(peer.median_wall if peer else None)} "
                f"| {s(bmap.median_wall if bmap else None)} | {slow} | {s(max(first) if first else None, 3)} "
                f"| {s(max(rss) if rss else None, 0)} "
                f"| {x(ratio(peer, stream) if peer and stream else None)} "
                f"| {x(ratio(bmap, stream) if bmap and stream else None)} |")
    lines.append("")
    lines.append("Medians of the runs (tools/bench.py); every run ends with the target's backing file fsynced. "
                 "Ratios above 1: bty --verify stream is faster. First write (from bty's start to its first byte "
                 "written) and RSS: the worst bty row of the format.")
    return "\n".join(lines) + "\n"
