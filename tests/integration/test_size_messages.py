"""Two sizes compared in one message never read alike: when they round to the same text
("16 MiB ... but the plan announced 16 MiB"), both are also given in exact bytes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.errors import ImageFetchError
from bty_live.image.http_source import HttpSource
from bty_live.server.runner import ServerThread
from tests.netkit import TOKEN, make_config, running_server

SIZE = 16 << 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    images = tmp_path / "images"
    images.mkdir()
    (images / "blob.img").write_bytes(os.urandom(SIZE))
    assert cli.main(["images", "add", str(images / "blob.img")]) == 0
    with running_server(make_config(tmp_path, images)) as running:
        yield running


def test_a_one_byte_difference_from_the_announced_size_is_shown_in_exact_bytes(server: ServerThread) -> None:
    source = HttpSource(f"{server.url}/images/blob.img", TOKEN, SIZE + 1)
    with pytest.raises(ImageFetchError) as caught:
        source.open()
    message = str(caught.value)
    assert "16 MiB (16,777,216 bytes) on the server but the plan announced 16 MiB (16,777,217 bytes)" in message


def test_sizes_that_read_differently_stay_short(server: ServerThread) -> None:
    source = HttpSource(f"{server.url}/images/blob.img", TOKEN, 2 * SIZE)
    with pytest.raises(ImageFetchError, match=r"is 16 MiB on the server but the plan announced 32 MiB:"):
        source.open()


def test_a_ranged_first_request_checks_the_announced_size_too(server: ServerThread) -> None:
    source = HttpSource(f"{server.url}/images/blob.img", TOKEN, SIZE + 1)
    with pytest.raises(ImageFetchError, match=r"on the server but the plan announced .*changed after the plan"):
        source.read_range(0, 512)  # a head read, or a differential flash's first frame
