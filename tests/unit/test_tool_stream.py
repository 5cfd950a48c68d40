"""A tool's output read as a stream, with our own bytes fed to its input (`xz -dc` decoding an
image that bty reads, counts and hashes itself)."""

from __future__ import annotations

import io
import os

import pytest

from bty_live.errors import ToolError
from bty_live.system.run import ToolStream


def read_out(tool: ToolStream) -> bytes:
    out = bytearray()
    view = memoryview(bytearray(1 << 16))
    while n := tool.readinto(view):
        out += view[:n]
    return bytes(out)


class FailingFeed:
    """Gives `good` bytes, then fails as a disk or a dropped download would."""

    def __init__(self, good: bytes) -> None:
        self.good = io.BytesIO(good)

    def readinto(self, buffer: memoryview) -> int:
        n = self.good.readinto(buffer)
        if n:
            return n
        raise OSError(5, "Input/output error")


def test_what_is_fed_reaches_the_tool_and_its_output_comes_back_whole() -> None:
    data = os.urandom(3 << 20)  # larger than the pipes: the feed and the reader run together
    with ToolStream(["cat"], feed=io.BytesIO(data)) as tool:
        assert read_out(tool) == data
        tool.finish()


def test_an_error_reading_the_feed_is_raised_as_itself_not_as_the_tools_complaint() -> None:
    with ToolStream(["xz", "-dc"], feed=FailingFeed(b"\xfd7zXZ\x00" + bytes(100))) as tool:
        read_out(tool)
        with pytest.raises(OSError, match="Input/output error"):
            tool.finish()


def test_a_failing_tool_raises_tool_error_with_its_last_words() -> None:
    with ToolStream(["xz", "-dc"], feed=io.BytesIO(b"not xz at all")) as tool:
        read_out(tool)
        with pytest.raises(ToolError, match="xz failed .*File format not recognized"):
            tool.finish()


def test_the_tool_runs_in_its_own_session_so_a_terminals_ctrl_c_reaches_bty_first() -> None:
    with ToolStream(["sleep", "30"]) as tool:
        assert os.getsid(tool.pid) == tool.pid != os.getsid(0)


def test_closing_a_running_tool_stops_it_and_its_feed() -> None:
    tool = ToolStream(["sleep", "30"], feed=io.BytesIO(bytes(4 << 20)))  # sleep reads nothing: the feed blocks
    tool.close()
    assert tool.returncode is not None
