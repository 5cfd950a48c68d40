"""`bty ledger`: list the known-good ledger, one run per line, and what is known-good where."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from bty_live.flash.ledger import Ledger, LedgerRecord, default_ledger_path, filter_records, read_ledger, summarize
from bty_live.image.catalog import resolve_images_dir
from bty_live.render.tables import print_table

DESCRIPTION = """\
List the ledger: one record per flash run, appended by `bty flash` (and the TUI, unattended
mode, the PXE agent), newest last.

columns:
  WHEN      when the run ended (UTC)
  RESULT    passed, or failed (with the error's class)
  IMAGE     image name and the first digits of its blake3
  TASK      tuning task and the first digits of its blake3, "-" without tuning
  MODEL     the machine's DMI vendor and product; SERIAL its DMI serial
  DISK      the target disk's model and serial
  PHASES    write, verify, fixup, tune: + passed, x failed, - skipped, . not run

An image + task is known-good for a machine model once a run on that model passed write,
verify and tune; the summary under the table lists them.

The ledger is ledger.jsonl in the images directory unless --ledger names another file. A line
that is not a whole record (a write cut short by a power cut) is skipped with a warning.
"""

_MARK = {"passed": "+", "failed": "x", "skipped": "-", "not run": "."}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("ledger", help="list flash runs and which image + task is known-good where",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ledger", metavar="FILE", type=Path,
                        help="ledger file (default: ledger.jsonl in the images directory)")
    parser.add_argument("--images", metavar="DIR", help="images directory (default: $BTY_IMAGES, the stick's "
                        "images partition, else ./images)")
    parser.add_argument("--image", metavar="NAME", help="only runs of this image (name, or blake3 prefix of 8+ "
                        "hex digits)")
    parser.add_argument("--model", metavar="M", help="only runs on this machine model (glob, case-insensitive, "
                        "e.g. 'Dell*R650')")
    parser.add_argument("--failed", action="store_true", help="only runs that failed")
    parser.add_argument("--json", action="store_true",
                        help="print {ledger, records, skipped_lines, known_good} as JSON")
    parser.set_defaults(func=run)


def ledger_path(args: argparse.Namespace) -> Path:
    if args.ledger is not None:
        return Path(args.ledger)
    return default_ledger_path(resolve_images_dir(args.images))


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "-"


def _phases(record: LedgerRecord) -> str:
    return " ".join(f"{name}{_MARK.get(record.phase(name), '?')}" for name in ("write", "verify", "fixup", "tune"))


COLUMNS = ("WHEN", "RESULT", "IMAGE", "TASK", "MODEL", "SERIAL", "DISK", "PHASES")


def _row(r: LedgerRecord) -> list[str | Text]:
    """One run: a table row on a terminal, one plain line into a pipe."""
    result = Text("passed", style="green") if r.result == "passed" else Text.assemble(
        ("failed", "red"), f" {r.error_kind or ''}")
    disk = " ".join(x for x in (r.disk_model, r.disk_serial) if x) or "-"
    return [r.recorded_at.replace("+00:00", "Z"), result, f"{r.image_name} {_short(r.image_blake3)}",
            f"{r.task} {_short(r.task_digest)}" if r.task else "-", r.machine_model, r.machine_serial or "-",
            disk, _phases(r)]


def _warn_skipped(ledger: Ledger) -> None:
    for line in ledger.skipped:
        print(f"bty: warning: ledger {ledger.path} line {line.number} skipped: {line.reason}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    path = ledger_path(args)
    ledger = read_ledger(path)
    records = filter_records(ledger.records, image=args.image, model=args.model, failed=args.failed)
    _warn_skipped(ledger)
    if args.json:
        print(json.dumps({
            "ledger": str(path),
            "records": [r.to_dict() for r in records],
            "skipped_lines": [{"line": s.number, "reason": s.reason, "text": s.text} for s in ledger.skipped],
            "known_good": [c.to_dict() for c in summarize(records) if c.known_good],
        }, indent=2))
        return 0
    console = Console(soft_wrap=True)  # long lines are one line each, into a pipe too
    if not ledger.exists:
        print(f"no ledger at {path} yet: `bty flash` appends one record per run there")
        return 0
    if not records:
        print(f"no runs in {path} match the filters" if ledger.records else f"no runs in {path} yet")
        return 0
    print_table(COLUMNS, [_row(r) for r in records], title=f"ledger {path}")
    for r in records:
        if r.result == "failed" and r.error:
            console.print(f"[red]{r.recorded_at}[/red] " + escape(f"{r.image_name} on {r.machine_model}: {r.error}"),
                          highlight=False)
    good = [c for c in summarize(records) if c.known_good]
    if good:
        console.print("known-good:")
        for c in good:
            task = f" + {c.task} {_short(c.task_digest)}" if c.task else " (no tuning)"
            console.print(escape(f"  {c.image_name} {_short(c.image_blake3)}{task} on {c.model} "
                                 f"({c.passed} passed, {c.failed} failed)"), highlight=False)
    return 0
