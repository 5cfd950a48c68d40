"""What a QEMU guest's VGA screen shows: QMP `screendump` (a PPM file), then OCR with Debian's
tesseract, which reads a Linux console screenshot well once it is inverted (dark text on white)
and scaled up 2x."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

INVERT = bytes(255 - i for i in range(256))


class Qmp:
    """A QMP client on QEMU's unix socket (`-qmp unix:PATH,server=on,wait=off`)."""

    def __init__(self, path: Path, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.sock.settimeout(30)
        self.reader = self.sock.makefile("rb")
        self._reply()  # the greeting
        self.command("qmp_capabilities")

    def _reply(self) -> dict[str, object]:
        while True:
            line = self.reader.readline()
            if not line:
                raise ConnectionError("QEMU closed the QMP socket")
            message: dict[str, object] = json.loads(line)
            if "event" not in message:
                return message

    def command(self, name: str, **arguments: object) -> object:
        self.sock.sendall(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        reply = self._reply()
        if "error" in reply:
            raise RuntimeError(f"QMP {name}: {reply['error']}")
        return reply.get("return")

    def screendump(self, path: Path) -> Path:
        self.command("screendump", filename=str(path))
        return path

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@dataclass(frozen=True)
class Ppm:
    width: int
    height: int
    rgb: bytes

    @classmethod
    def read(cls, path: Path) -> Ppm:
        data = path.read_bytes()
        fields: list[bytes] = []
        pos = 0
        while len(fields) < 4:  # P6 WIDTH HEIGHT MAXVAL, whitespace separated (QEMU writes no comments)
            while data[pos:pos + 1].isspace():
                pos += 1
            end = pos
            while not data[end:end + 1].isspace():
                end += 1
            fields.append(data[pos:end])
            pos = end
        if fields[0] != b"P6" or fields[3] != b"255":
            raise ValueError(f"{path}: not an 8-bit binary PPM")
        width, height = int(fields[1]), int(fields[2])
        return cls(width, height, data[pos + 1:pos + 1 + width * height * 3])

    def blue_fraction(self, y: int) -> float:
        """The share of row y's pixels that are blue (the TUI's title bar), a check cheap enough
        to run on every screendump: OCR is kept for the few that matter, and never steals the
        CPU of the guest being timed."""
        row = self.rgb[y * self.width * 3:(y + 1) * self.width * 3]
        reds, greens, blues = row[0::3], row[1::3], row[2::3]
        blue = sum(1 for r, g, b in zip(reds, greens, blues, strict=True) if b >= 120 and r < 80 and g < 80)
        return blue / self.width

    def for_ocr(self) -> bytes:
        """A P6 PPM of this screen inverted and scaled up 2x."""
        rgb = self.rgb.translate(INVERT)
        row_bytes = self.width * 3
        out = bytearray(f"P6 {self.width * 2} {self.height * 2} 255\n".encode())
        wide = bytearray(row_bytes * 2)
        for y in range(self.height):
            row = rgb[y * row_bytes:(y + 1) * row_bytes]
            for channel in range(3):
                wide[channel::6] = row[channel::3]
                wide[3 + channel::6] = row[channel::3]
            out += wide
            out += wide
        return bytes(out)


@dataclass(frozen=True)
class Word:
    text: str
    height: float  # pixels on the guest's screen (not the 2x image)


def ocr(screenshot: Path) -> list[Word]:
    """The words tesseract reads on a screendump, with their heights on the guest's screen."""
    ppm = Ppm.read(screenshot)
    scaled = screenshot.with_suffix(".ocr.ppm")
    scaled.write_bytes(ppm.for_ocr())
    try:
        # one thread: the guest being timed runs on the same two cores
        proc = subprocess.run(["tesseract", str(scaled), "stdout", "tsv"], capture_output=True, text=True,
                              timeout=120, check=True, env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    finally:
        scaled.unlink()
    words = []
    for line in proc.stdout.splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) == 12 and cols[0] == "5" and cols[11].strip():
            words.append(Word(cols[11].strip(), int(cols[9]) / 2))
    return words


def text_of(words: list[Word]) -> str:
    return " ".join(w.text for w in words)


def median_height(words: list[Word], min_length: int = 4) -> float:
    """The median height of the longer words (short ones are often box-drawing misreads)."""
    heights = [w.height for w in words if len(w.text) >= min_length and w.text.isalpha()]
    return median(heights) if heights else 0.0
