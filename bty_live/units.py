"""Byte sizes: parse what users type, print what users read."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse "512", "100G", "1.5 TiB", "500GB" into bytes.

    Bare K/M/G/T and KiB/MiB/... are powers of 1024; kB/MB/GB/TB are powers of 1000,
    as disk vendors print them.
    """
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 512M, 100G, 1.5TiB, 500GB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: int | float) -> str:
    """Format bytes with binary units: 1536 -> "1.5 KiB", 2**31 -> "2 GiB"."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_sizes(*sizes: int) -> tuple[str, ...]:
    """Sizes to be compared in one message: as format_size, plus the exact byte count of each when
    two different sizes would read alike ("16 MiB (16,777,217 bytes)" beside "16 MiB (16,777,216 bytes)")."""
    texts = tuple(format_size(n) for n in sizes)
    if len(set(texts)) == len(set(sizes)):
        return texts
    return tuple(f"{text} ({n:,} bytes)" for text, n in zip(texts, sizes, strict=True))


def format_rate(bytes_per_second: float) -> str:
    return f"{bytes_per_second / 1e6:,.0f} MB/s"


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
