"""Disk selectors: "serial=S3Z*,size>=100G" picks exactly one eligible disk, or nothing.

Grammar: comma-separated terms, all of which must match (commas cannot appear in values):

    serial=GLOB  wwn=WWN  path=NODE-OR-LINK  model=GLOB  vendor=GLOB  tran=T (or transport=T)
    name=NAME  size=SIZE  size>=SIZE  size<=SIZE  largest  smallest

Matching is exact, case-insensitive and whitespace-trimmed; serial, model and vendor accept
`*` and `?` globs. WWNs compare without their 0x/naa./eui. prefixes. Sizes use
`bty_live.units.parse_size` (100G, 1.5TiB, 500GB). `largest`/`smallest` choose among the
eligible disks matching the other terms.

Pure: the only outside knowledge, resolving a path= link to its device node, is a function
the caller passes in (os.path.realpath by default).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from bty_live.disk.eligibility import Assessed
from bty_live.disk.model import Disk
from bty_live.errors import SelectorError, UsageError
from bty_live.units import format_size, parse_size

#: resolves a path (a /dev/disk/by-* link, say) to the device node it points at
Resolver = Callable[[str], str]
Pick = Literal["largest", "smallest"]
Op = Literal["=", ">=", "<="]

#: accepted key -> canonical key
KEYS: dict[str, str] = {
    "serial": "serial",
    "wwn": "wwn",
    "path": "path",
    "model": "model",
    "vendor": "vendor",
    "tran": "tran",
    "transport": "tran",
    "name": "name",
    "size": "size",
}
PICKS: tuple[Pick, ...] = ("largest", "smallest")
ALLOWED = ("serial=, wwn=, path=, model=, vendor=, tran= (or transport=), name=, "
           "size=, size>=, size<=, largest, smallest")

_OPS: dict[str, Op] = {"=": "=", ">=": ">=", "<=": "<="}
_TERM_RE = re.compile(r"^([A-Za-z_]+)\s*(>=|<=|=)\s*(.*)$")
_WWN_PREFIXES = ("0x", "naa.", "eui.")


@dataclass(frozen=True)
class Term:
    """One KEY OP VALUE term; `size` holds the parsed bytes of size terms."""

    key: str
    op: Op
    value: str
    size: int | None = None

    def matches(self, disk: Disk, resolve: Resolver) -> bool:
        return _MATCHERS[self.key](self, disk, resolve)


@dataclass(frozen=True)
class Selector:
    text: str
    terms: tuple[Term, ...]
    pick: Pick | None = None

    def matches(self, disk: Disk, resolve: Resolver = os.path.realpath) -> bool:
        """Whether every term matches `disk` (largest/smallest are applied by `select_disk`)."""
        return all(term.matches(disk, resolve) for term in self.terms)

    def __str__(self) -> str:
        return self.text


# --------------------------------------------------------------------------- parsing


def _error(text: str, problem: str) -> UsageError:
    """A selector that does not parse is a usage error (exit 2), not a disk that was not found."""
    return UsageError(f"bad disk selector '{text}': {problem}; allowed: {ALLOWED}")


def _parse_term(word: str, text: str) -> Term:
    match = _TERM_RE.match(word)
    if match is None:
        hint = f" (did you mean path={word}?)" if word.startswith("/") else ""
        raise _error(text, f"cannot parse {word!r}{hint}")
    key, op, value = match.group(1).lower(), match.group(2), match.group(3).strip()
    if key not in KEYS:
        raise _error(text, f"unknown key {key!r}")
    if not value:
        raise _error(text, f"{word!r} has no value")
    canonical = KEYS[key]
    if canonical != "size":
        if op != "=":
            raise _error(text, f"only size takes {op}")
        return Term(canonical, "=", value)
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise _error(text, str(exc)) from exc
    return Term(canonical, _OPS[op], value, size)


def parse_selector(text: str) -> Selector:
    """Parse a selector; raises UsageError naming the allowed keys on any mistake."""
    if not text.strip():
        raise _error(text, "it is empty")
    terms: list[Term] = []
    picks: list[Pick] = []
    for raw in text.split(","):
        word = raw.strip()
        if not word:
            raise _error(text, "empty term (terms are separated by single commas)")
        pick = next((p for p in PICKS if p == word.lower()), None)
        if pick is not None:
            picks.append(pick)
        else:
            terms.append(_parse_term(word, text))
    if len(set(picks)) > 1:
        raise _error(text, "largest and smallest exclude each other")
    return Selector(text=text.strip(), terms=tuple(terms), pick=picks[0] if picks else None)


# --------------------------------------------------------------------------- matching


def normalize_wwn(text: str) -> str:
    """"0x5000C500A1B2C3D4", "naa.5000c500a1b2c3d4" and " 5000c500a1b2c3d4 " all compare equal."""
    value = text.strip().lower()
    while value.startswith(_WWN_PREFIXES):
        value = value.removeprefix(next(p for p in _WWN_PREFIXES if value.startswith(p)))
    return value


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` and `?` globs only: brackets and the rest match themselves (serials contain anything)."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.strip().casefold()]
    return re.compile("".join(parts), re.DOTALL)


def _glob(attribute: str) -> Callable[[Term, Disk, Resolver], bool]:
    def match(term: Term, disk: Disk, resolve: Resolver) -> bool:
        value: str | None = getattr(disk, attribute)
        return value is not None and _glob_regex(term.value).fullmatch(value.strip().casefold()) is not None

    return match


def _match_wwn(term: Term, disk: Disk, resolve: Resolver) -> bool:
    return disk.wwn is not None and normalize_wwn(disk.wwn) == normalize_wwn(term.value)


def _match_path(term: Term, disk: Disk, resolve: Resolver) -> bool:
    if term.value in (disk.path, *disk.by_id, *disk.by_path):
        return True
    return resolve(term.value) == resolve(disk.path)


def _match_tran(term: Term, disk: Disk, resolve: Resolver) -> bool:
    return disk.transport.casefold() == term.value.casefold()


def _match_name(term: Term, disk: Disk, resolve: Resolver) -> bool:
    return disk.name.casefold() == term.value.removeprefix("/dev/").casefold()


def _match_size(term: Term, disk: Disk, resolve: Resolver) -> bool:
    assert term.size is not None
    if term.op == ">=":
        return disk.size >= term.size
    if term.op == "<=":
        return disk.size <= term.size
    return disk.size == term.size


_MATCHERS: dict[str, Callable[[Term, Disk, Resolver], bool]] = {
    "serial": _glob("serial"),
    "model": _glob("model"),
    "vendor": _glob("vendor"),
    "wwn": _match_wwn,
    "path": _match_path,
    "tran": _match_tran,
    "name": _match_name,
    "size": _match_size,
}


# --------------------------------------------------------------------------- choosing one disk


def describe_candidate(disk: Disk) -> str:
    """"loop3 (2 GiB, loop, serial -)": enough to tell candidates apart in an error message."""
    bits = [format_size(disk.size), disk.transport]
    if disk.model:
        bits.append(disk.model)
    bits.append(f"serial {disk.serial or '-'}")
    return f"{disk.name} ({', '.join(bits)})"


def _apply_pick(disks: list[Disk], pick: Pick | None) -> list[Disk]:
    """The largest (or smallest) disks; several when they tie, so that a tie is refused."""
    if pick is None or not disks:
        return disks
    best = max(d.size for d in disks) if pick == "largest" else min(d.size for d in disks)
    return [d for d in disks if d.size == best]


def _no_match_message(selector: Selector, matched: Sequence[Assessed], assessed: Sequence[Assessed]) -> str:
    parts = [f"selector '{selector}' matches no eligible disk"]
    parts += [f"{a.disk.name} matches but is not eligible ({'; '.join(a.reasons)})"
              for a in matched if not a.eligible]
    eligible = [describe_candidate(a.disk) for a in assessed if a.eligible]
    parts.append("eligible disks: " + ", ".join(eligible) if eligible else "there are no eligible disks")
    return "; ".join(parts)


def _ambiguous_message(selector: Selector, disks: Sequence[Disk]) -> str:
    tie = f" of the same {selector.pick} size" if selector.pick else ""
    listed = ", ".join(describe_candidate(d) for d in disks)
    return (f"selector '{selector}' matches {len(disks)} eligible disks{tie}: {listed}; "
            "add serial= or path= to pick one")


def select_disk(selector: Selector, assessed: Sequence[Assessed], *,
                resolve: Resolver = os.path.realpath) -> Disk:
    """The one eligible disk `selector` matches. Fail-closed: zero or several raise SelectorError
    listing the candidates (and, for zero, the ineligible disks that matched and why)."""
    matched = [a for a in assessed if selector.matches(a.disk, resolve)]
    chosen = _apply_pick([a.disk for a in matched if a.eligible], selector.pick)
    if len(chosen) == 1:
        return chosen[0]
    if not chosen:
        raise SelectorError(_no_match_message(selector, matched, assessed))
    raise SelectorError(_ambiguous_message(selector, chosen))
