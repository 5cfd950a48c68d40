#!/usr/bin/env python3
"""Benchmark: the TUI's first paint on a Linux console, and its flash throughput against the CLI's.

A benchmark, not a test: it prints figures and ratios against the goals and always exits 0
(unless it cannot run at all). `make bench` runs it after tools/bench.py.

    .venv/bin/python tools/bench_tui.py [--paint-runs 7] [--flash-runs 3] [--paint-only] [--size 2G]

1. First paint. `bty tui` starts in a pseudo-terminal of 80x24 with TERM=linux (the Linux
   console: 16 colours) and no COLORTERM, as on the stick, once per run. Measured from the spawn
   (Python start-up and imports included) to the first full frame: the title bar and the key-hint
   footer (the frame's first and last rows) have been drawn; then to the images list being drawn.
   The bytes sent until then say what a slow console has to draw: at 115200 baud a serial console
   takes ~87 us per byte, and a framebuffer console's cost grows with the same bytes.
   Goal: first paint <= 1 s.
2. Throughput. The same image (tools/bench.py's cached 2 GiB disk image, zstd single-frame and
   packed) is flashed onto fresh loop devices (--direct-io=on) by `bty flash IMAGE DISK --yes` and
   through the TUI in a pty, driven with the keys a person presses (Enter, arrows, the disk's name,
   Enter), interleaved. Throughput is image bytes over the engine's own write + read-back seconds
   from each receipt (the part of the run the UI could slow down); the wall time from the
   confirming Enter to the Done screen is shown beside it. Goal: TUI >= 95% of the CLI.
   The CLI's progress goes to a file (no terminal), its cheapest case: the TUI is compared with
   the CLI at its fastest. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pexpect

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python tools/bench_tui.py`: make `tools` and the package importable
    sys.path.insert(0, str(REPO))

from tools.mkdiskimage import MIB, parse_size  # noqa: E402

COLUMNS, LINES = 80, 24
PAINT_GOAL = 1.0  # seconds to the first full frame
THROUGHPUT_GOAL = 0.95  # TUI / CLI
SERIAL_SECONDS_PER_BYTE = 10 / 115200  # 8N1 at 115200 baud
DOWN, ESCAPE, CTRL_Q = "\x1b[B", "\x1b", "\x11"


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def tui_env(**extra: str) -> dict[str, str]:
    """The stick's console: TERM=linux, no truecolor hint, no inherited Textual settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEXTUAL") and k != "COLORTERM"}
    env.update(TERM="linux", LINES=str(LINES), COLUMNS=str(COLUMNS), **extra)
    return env


def tui_command(python: Path, bty: Path) -> list[str]:
    """`bty tui` once it is registered in bty's command list; until then the same code by module."""
    probe = subprocess.run([str(bty), "tui", "--help"], capture_output=True, text=True, check=False)
    if probe.returncode == 0:
        return [str(bty), "tui"]
    return [str(python), "-m", "bty_live.tui"]


class ByteCounter:
    """A pexpect logfile_read that counts what the app wrote to the terminal."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes) -> None:
        self.count += len(data)

    def flush(self) -> None:
        pass


def spawn(command: Sequence[str], images: Path, env: dict[str, str]) -> tuple[pexpect.spawn, ByteCounter]:
    counter = ByteCounter()
    child = pexpect.spawn(command[0], [*command[1:], "--images", str(images)], env=env,
                          dimensions=(LINES, COLUMNS), cwd=str(REPO), timeout=60)
    child.logfile_read = counter
    return child, counter


def quit_app(child: pexpect.spawn) -> None:
    try:
        child.send(CTRL_Q)
        child.expect(pexpect.EOF, timeout=30)
    except (pexpect.TIMEOUT, pexpect.EOF):
        pass
    finally:
        child.close(force=True)


# --- 1. first paint ----------------------------------------------------------------------------


@dataclass
class Paint:
    first_frame: float  # seconds from spawn to title and footer drawn
    listed: float  # seconds from spawn to the first image's name drawn
    frame_bytes: int  # bytes sent until the first full frame
    listed_bytes: int  # bytes sent until the list was drawn


def measure_paint(command: Sequence[str], images: Path, first_name: str) -> Paint:
    env = tui_env()
    started = time.perf_counter()
    child, counter = spawn(command, images, env)
    seen = b""
    first_frame = listed = 0.0
    frame_bytes = listed_bytes = 0
    try:
        while not (first_frame and listed):
            seen += child.read_nonblocking(65536, timeout=30)
            now = time.perf_counter() - started
            if not first_frame and b"bty-live" in seen and b" Help" in seen:
                first_frame, frame_bytes = now, len(seen)
            if not listed and first_name.encode() in seen:
                listed, listed_bytes = now, len(seen)
    finally:
        quit_app(child)
    return Paint(first_frame, listed, frame_bytes, listed_bytes)


def paint_images_dir(root: Path) -> tuple[Path, str]:
    """A small images directory: three raw images, one with a manifest."""
    from bty_live import cli

    images = root / "paint-images"
    images.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("alpine-3.20.img", "debian-12.img", "ubuntu-24.04.img")):
        path = images / name
        if not path.exists():
            path.write_bytes(bytes([i + 1]) * (4 * MIB))
    manifest = images / "debian-12.img.toml"
    if not manifest.exists():
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            cli.main(["images", "add", str(images / "debian-12.img")])
    return images, "alpine-3.20"


def bench_paint(command: Sequence[str], root: Path, runs: int) -> dict[str, object]:
    images, first_name = paint_images_dir(root)
    step(f"first paint: {runs} starts of `{' '.join(command)}` in a {COLUMNS}x{LINES} pty, TERM=linux")
    paints = [measure_paint(command, images, first_name) for _ in range(runs)]
    first = statistics.median(p.first_frame for p in paints)
    listed = statistics.median(p.listed for p in paints)
    frame_bytes = statistics.median(p.frame_bytes for p in paints)
    listed_bytes = statistics.median(p.listed_bytes for p in paints)
    fastest, slowest = min(p.first_frame for p in paints), max(p.first_frame for p in paints)
    print(f"    first full frame (title + key hints): median {first:.3f} s, min {fastest:.3f}, max {slowest:.3f}"
          f"  [goal <= {PAINT_GOAL:.1f} s: "
          f"{'met' if first <= PAINT_GOAL else 'NOT MET'}]")
    print(f"    images listed:                        median {listed:.3f} s")
    print(f"    bytes to the terminal: {frame_bytes:,.0f} until the first frame, {listed_bytes:,.0f} until listed "
          f"(~{listed_bytes * SERIAL_SECONDS_PER_BYTE:.2f} s of drawing on a 115200-baud serial console)")
    return {"runs": [asdict(p) for p in paints], "first_frame_median": first, "listed_median": listed,
            "frame_bytes_median": frame_bytes, "listed_bytes_median": listed_bytes, "goal_seconds": PAINT_GOAL}


# --- 2. throughput -----------------------------------------------------------------------------


@dataclass
class Flash:
    front: str  # "cli" or "tui"
    variant: str
    engine_seconds: float  # write + verify, from the receipt
    wall: float  # CLI: the whole process; TUI: confirming Enter -> Done screen
    throughput: float  # image bytes per engine second
    terminal_bytes: int = 0  # TUI: bytes drawn during the flash
    #: TUI: CPU seconds of the app's main thread (event loop, layout, rendering) during the flash,
    #: and of the whole process (engine included): what the UI costs, whatever the machine's load
    ui_cpu: float = 0.0
    process_cpu: float = 0.0
    error: str | None = None


@dataclass
class Variant:
    key: str
    label: str
    image: Path
    flashes: list[Flash] = field(default_factory=list)


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or one of its threads), from /proc."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def receipt_seconds(path: Path) -> float:
    phases = json.loads(path.read_text())["phases"]
    return float(phases.get("write", 0.0) + phases.get("verify", 0.0))


def flash_cli(bty: Path, variant: Variant, target: str, image_size: int, work: Path) -> Flash:
    receipt = work / "receipt-cli.json"
    receipt.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(work / "cli.log", "ab") as log:
        proc = subprocess.run([str(bty), "flash", str(variant.image), target, "--yes", "--receipt", str(receipt)],
                              stdout=log, stderr=log, check=False, timeout=1800)
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not receipt.exists():
        return Flash("cli", variant.key, 0.0, wall, 0.0, error=f"bty flash exited {proc.returncode}")
    seconds = receipt_seconds(receipt)
    return Flash("cli", variant.key, seconds, wall, image_size / seconds)


def disk_index(images: Path, target: str) -> int:
    """How many Down presses from the first choosable disk to `target`, as the Disks screen orders them."""
    from bty_live.image.catalog import list_images
    from bty_live.tui.backend import assess_disks

    [entry] = list_images(images)
    eligible = [item.disk.path for item in assess_disks(entry, images) if item.eligible]
    return eligible.index(target)


def flash_tui(command: Sequence[str], variant: Variant, target: str, image_size: int, work: Path) -> Flash:
    images = work / f"tui-images-{variant.key}"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    for source in (variant.image, variant.image.with_name(variant.image.name + ".toml")):
        (images / source.name).symlink_to(source)
    receipts = work / "receipts-tui"
    shutil.rmtree(receipts, ignore_errors=True)
    child, counter = spawn(command, images, tui_env(BTY_RECEIPTS=str(receipts)))
    name = os.path.basename(target)
    try:
        child.expect("can be flashed")  # the images list is drawn
        child.send("\r")
        for _attempt in range(3):
            child.expect(["can take this image", "can take the image"], timeout=120)
            child.send(DOWN * disk_index(images, target) + "\r")
            if child.expect([f"Type {name} and press", "Type [a-z0-9]+ and press"]) == 0:
                break
            child.send(ESCAPE)  # a disk came or went meanwhile: back, and count again
        else:
            return Flash("tui", variant.key, 0.0, 0.0, 0.0, error=f"could not highlight {target}")
        time.sleep(0.3)  # the confirmation screen settles before the name is typed
        child.send(name)
        drawn_before = counter.count
        ui_before, process_before = cpu_seconds(child.pid, child.pid), cpu_seconds(child.pid)
        started = time.perf_counter()
        child.send("\r")
        outcome = child.expect(["Flashed and verified", "What to do"], timeout=1800)
        wall = time.perf_counter() - started
        drawn = counter.count - drawn_before
        ui_cpu = cpu_seconds(child.pid, child.pid) - ui_before
        process_cpu = cpu_seconds(child.pid) - process_before
    except (pexpect.TIMEOUT, pexpect.EOF) as exc:
        return Flash("tui", variant.key, 0.0, 0.0, 0.0, error=f"the TUI did not get through: {type(exc).__name__}")
    finally:
        quit_app(child)
    saved = sorted(receipts.glob("*.json"))
    if outcome != 0 or not saved:
        return Flash("tui", variant.key, 0.0, wall, 0.0, error="the flash failed (the TUI showed the Error screen)")
    seconds = receipt_seconds(saved[-1])
    return Flash("tui", variant.key, seconds, wall, image_size / seconds, terminal_bytes=drawn, ui_cpu=ui_cpu,
                 process_cpu=process_cpu)


def bench_throughput(args: argparse.Namespace, command: Sequence[str]) -> dict[str, object]:
    from tools.benchkit.artifacts import prepare_artifacts, warm
    from tools.benchkit.loop_targets import TARGET_SLACK, LoopTargets

    art = prepare_artifacts(args.out, args.size, args.fill, args.bty, rebuild=False)
    variants = [Variant("single", "single-frame .zst", art.zst)]
    if art.packed is not None:
        variants.append(Variant("packed", "packed .zst", art.packed))
    warm([v.image for v in variants])
    work = Path(tempfile.mkdtemp(prefix="bench-tui-", dir=args.out))
    targets = LoopTargets(work, art.image_size + TARGET_SLACK)
    step(f"throughput: {args.flash_runs} interleaved runs of `bty flash` and the TUI per file, "
         f"{art.image_size / MIB:.0f} MiB image, fresh loop target each")
    try:
        for run in range(args.flash_runs):
            for variant in variants:
                order = ("cli", "tui") if run % 2 == 0 else ("tui", "cli")
                for front in order:
                    target = targets.create(f"{front}-{variant.key}-{run}")
                    try:
                        if front == "cli":
                            result = flash_cli(args.bty, variant, target, art.image_size, work)
                        else:
                            result = flash_tui(command, variant, target, art.image_size, work)
                    finally:
                        targets.release(target)
                    variant.flashes.append(result)
                    shown = result.error or (f"{result.engine_seconds:.2f} s engine, {result.wall:.2f} s wall, "
                                             f"{result.throughput / 1e6:,.0f} MB/s")
                    print(f"    run {run + 1} {variant.label:<18} {front}: {shown}", flush=True)
    finally:
        targets.release_all()
        shutil.rmtree(work, ignore_errors=True)
    return report_throughput(variants)


def met(ratio: float) -> str:
    return "met" if ratio >= THROUGHPUT_GOAL else "NOT MET"


def report_throughput(variants: Sequence[Variant]) -> dict[str, object]:
    """Medians per front-end, and the TUI/CLI ratio of the median and of the best run: on a shared
    machine the best of N is the steadier estimate of what each could do."""
    print(f"\n{'file':<18} {'front':<5} {'engine s':>9} {'best s':>7} {'MB/s':>6} {'wall s':>7} "
          f"{'drawn':>9} {'UI CPU':>7}")
    summary: dict[str, object] = {}
    for variant in variants:
        medians: dict[str, float] = {}
        best: dict[str, float] = {}
        for front in ("cli", "tui"):
            good = [f for f in variant.flashes if f.front == front and f.error is None]
            if not good:
                print(f"{variant.label:<18} {front:<5} {'failed':>9}")
                continue
            seconds = statistics.median(f.engine_seconds for f in good)
            medians[front] = statistics.median(f.throughput for f in good)
            best[front] = max(f.throughput for f in good)
            extra = ""
            if front == "tui":
                ui = statistics.median(f.ui_cpu / f.wall for f in good if f.wall)
                extra = f"{statistics.median(f.terminal_bytes for f in good):>7,.0f} B {ui:>6.1%}"
            print(f"{variant.label:<18} {front:<5} {seconds:>9.2f} {min(f.engine_seconds for f in good):>7.2f} "
                  f"{medians[front] / 1e6:>6,.0f} {statistics.median(f.wall for f in good):>7.2f} {extra}")
        ratio = medians["tui"] / medians["cli"] if len(medians) == 2 else None
        best_ratio = best["tui"] / best["cli"] if len(best) == 2 else None
        summary[variant.key] = {"ratio_median": ratio, "ratio_best": best_ratio,
                                "flashes": [asdict(f) for f in variant.flashes]}
        if ratio is not None and best_ratio is not None:
            print(f"    {variant.label}: TUI/CLI throughput {ratio:.3f} of the medians ({met(ratio)}), "
                  f"{best_ratio:.3f} of the best runs ({met(best_ratio)}); goal >= {THROUGHPUT_GOAL:.2f}")
    print("    UI CPU: the TUI's main thread (event loop, layout, drawing) as a share of one core while flashing")
    return summary


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--paint-runs", type=int, default=7, help="starts for the first-paint median (default 7)")
    parser.add_argument("--flash-runs", type=int, default=3, help="flashes per front-end and file (default 3)")
    parser.add_argument("--paint-only", action="store_true", help="skip the throughput comparison (no root needed)")
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"),
                        help="image size (default 2G, as bench.py's)")
    parser.add_argument("--fill", type=float, default=0.5, help="root filesystem fill (default 0.5, as bench.py)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out", help="cache and results directory")
    parser.add_argument("--bty", type=Path, default=REPO / ".venv" / "bin" / "bty", help="the bty to measure")
    args = parser.parse_args(argv)
    if args.paint_runs < 1 or args.flash_runs < 1:
        parser.error("--paint-runs and --flash-runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    python = args.bty.parent / "python"
    command = tui_command(python if python.exists() else Path(sys.executable), args.bty)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"command": command, "paint": bench_paint(command, args.out, args.paint_runs)}
    if args.paint_only:
        pass
    elif os.geteuid() != 0:
        print("bench_tui: throughput skipped: needs root (loop devices)", file=sys.stderr)
    else:
        results["throughput"] = bench_throughput(args, command)
    path = args.out / "results-tui.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
