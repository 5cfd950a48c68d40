"""HttpSource: an image streamed from `bty serve` arrives whole, resumes where a dropped
connection stopped, and refuses to stitch together bytes of two different files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.errors import ImageFetchError, NetworkError, TokenRefusedError
from bty_live.image.http_source import HttpSource, ResumeNotice
from bty_live.protocol.httpconn import Backoff
from bty_live.server.runner import ServerThread
from tests.netkit import TOKEN, CutProxy, FileServer, make_config, running_server, serving_files, serving_redirects

SIZE = 24 << 20
NO_WAIT = Backoff(attempts=4, first=0.0)


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("payload") / "blob.img"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def server(tmp_path: Path, payload: Path) -> Iterator[ServerThread]:
    images = tmp_path / "images"
    images.mkdir()
    os.link(payload, images / "blob.img")
    assert cli.main(["images", "add", str(images / "blob.img")]) == 0  # the server serves images with a manifest
    with running_server(make_config(tmp_path, images)) as running:
        yield running


def upstream(server: ServerThread) -> tuple[str, int]:
    host, port = server.socket.getsockname()[:2]
    return host, port


def read_all(source: HttpSource, buffer_size: int = 1 << 20) -> bytes:
    stream = source.open()
    digest, out = bytearray(), memoryview(bytearray(buffer_size))
    try:
        while n := stream.readinto(out):
            digest += out[:n]
    finally:
        stream.close()
    return bytes(digest)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_stream_delivers_the_file_byte_for_byte(server: ServerThread, payload: Path) -> None:
    source = HttpSource(f"{server.url}/images/blob.img", TOKEN, SIZE)
    assert (source.name, source.size, source.path) == ("blob.img", SIZE, None)
    assert sha(read_all(source)) == sha(payload.read_bytes())
    assert source.resumes == 0


def test_read_returns_exactly_what_was_asked_until_the_end(server: ServerThread, payload: Path) -> None:
    stream = HttpSource(f"{server.url}/images/blob.img", TOKEN, SIZE).open()
    try:
        assert stream.read(512) == payload.read_bytes()[:512]
        rest = stream.read()
    finally:
        stream.close()
    assert len(rest) == SIZE - 512


def test_dropped_connection_resumes_with_a_range_request_where_it_stopped(server: ServerThread,
                                                                         payload: Path) -> None:
    proxy = CutProxy(upstream(server), cut_after=5 << 20)
    notices: list[ResumeNotice] = []
    source = HttpSource(f"{proxy.url}/images/blob.img", TOKEN, SIZE, backoff=NO_WAIT, on_resume=notices.append)

    data = read_all(source)

    assert sha(data) == sha(payload.read_bytes())
    assert proxy.cuts == 1
    assert source.resumes == 1
    ranges = proxy.range_requests()
    assert len(ranges) == 1
    offset = int(ranges[0].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= 5 << 20  # the bytes before the cut were not fetched again
    assert notices == [ResumeNotice(source.url, offset, 1, notices[0].reason)]


def test_image_changed_on_the_server_between_connections_is_refused(server: ServerThread, tmp_path: Path) -> None:
    image = tmp_path / "images" / "blob.img"

    def replace_image() -> None:  # a new file under the same name: new ETag and Last-Modified
        fresh = tmp_path / "new.img"
        fresh.write_bytes(os.urandom(SIZE))
        os.utime(fresh, (time.time() + 10, time.time() + 10))
        os.replace(fresh, image)

    proxy = CutProxy(upstream(server), cut_after=5 << 20, on_cut=replace_image)
    source = HttpSource(f"{proxy.url}/images/blob.img", TOKEN, SIZE, backoff=NO_WAIT)

    with pytest.raises(ImageFetchError, match=r"changed on the server during the download.*flash again"):
        read_all(source)


def test_server_that_ignores_range_is_refused_rather_than_restarted(server: ServerThread) -> None:
    proxy = CutProxy(upstream(server), cut_after=5 << 20, strip_range=True)
    source = HttpSource(f"{proxy.url}/images/blob.img", TOKEN, SIZE, backoff=NO_WAIT)

    with pytest.raises(ImageFetchError, match=r"ignored the Range request .*cannot resume"):
        read_all(source)


def test_retries_are_bounded_then_the_error_names_the_url_and_the_fix(server: ServerThread) -> None:
    proxy = CutProxy(upstream(server), cut_after=5 << 20, die_after_cut=True)
    waits: list[float] = []
    source = HttpSource(f"{proxy.url}/images/blob.img", TOKEN, SIZE,
                        backoff=Backoff(attempts=4, first=0.25, factor=2.0), sleep=waits.append)

    with pytest.raises(ImageFetchError) as caught:
        read_all(source)

    message = str(caught.value)
    assert source.url in message and "after 4 attempts" in message and "connection refused" in message
    assert "check the network and that the server is running" in message
    assert waits == [0.25, 0.5, 1.0]


def test_wrong_token_is_refused_at_open(server: ServerThread) -> None:
    source = HttpSource(f"{server.url}/images/blob.img", "not-the-token-at-all", SIZE)
    with pytest.raises(TokenRefusedError, match=r"refused the token .*403"):
        source.open()


def test_size_other_than_announced_is_refused_at_open(server: ServerThread) -> None:
    source = HttpSource(f"{server.url}/images/blob.img", TOKEN, SIZE + 1)
    with pytest.raises(ImageFetchError, match=r"changed after the plan was made"):
        source.open()


def test_missing_image_is_a_clear_404(server: ServerThread) -> None:
    with pytest.raises(ImageFetchError, match=r"not on the server \(404\)"):
        HttpSource(f"{server.url}/images/gone.img", TOKEN, None).open()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_https_verifies_the_certificate_against_the_given_ca_file(tmp_path: Path, payload: Path,
                                                                   certificate: tuple[Path, Path]) -> None:
    from bty_live.server.runner import Tls

    cert, key = certificate
    images = tmp_path / "images"
    images.mkdir()
    os.link(payload, images / "blob.img")
    assert cli.main(["images", "add", str(images / "blob.img")]) == 0
    server = ServerThread(make_config(tmp_path, images), tls=Tls(cert, key)).start()
    try:
        url = f"{server.url.replace('localhost', '127.0.0.1')}/images/blob.img"
        assert url.startswith("https://")
        assert sha(read_all(HttpSource(url, TOKEN, SIZE, cafile=cert))) == sha(payload.read_bytes())
        with pytest.raises(NetworkError, match=r"certificate of .* is not trusted .*--ca-file"):
            HttpSource(url, TOKEN, SIZE).open()
    finally:
        server.stop()


# -- redirects (a registry's blob in its storage) -------------------------------------------------


@pytest.fixture
def files(tmp_path: Path, payload: Path) -> Iterator[FileServer]:
    site = tmp_path / "site"
    site.mkdir()
    os.link(payload, site / "blob.img")
    with serving_files(site) as running:
        yield running


def test_a_source_that_follows_redirects_reads_the_target_and_keeps_its_token_at_home(
        files: FileServer, payload: Path) -> None:
    storage = files.url.replace("127.0.0.1", "localhost")  # another host: the token stays behind
    with serving_redirects(storage) as registry:
        source = HttpSource(f"{registry.url}/images/blob.img", TOKEN, SIZE, follow_redirects=True)
        assert sha(read_all(source)) == sha(payload.read_bytes())
    assert registry.authorizations == [f"Bearer {TOKEN}"]
    assert files.authorizations == [None] and source.shown_url == f"{registry.url}/images/blob.img"


def test_a_redirect_is_not_followed_unless_asked_and_the_error_names_its_target(files: FileServer) -> None:
    with serving_redirects(files.url) as registry, \
            pytest.raises(ImageFetchError, match=rf"answered 307 .*\(to {files.url}/images/blob.img\)"):
        HttpSource(f"{registry.url}/images/blob.img", TOKEN, SIZE).open()


def test_a_resume_starts_at_the_source_again_and_follows_the_redirect(files: FileServer, payload: Path) -> None:
    proxy = CutProxy(files.address, cut_after=5 << 20)
    with serving_redirects(proxy.url) as registry:
        source = HttpSource(f"{registry.url}/images/blob.img", None, SIZE, backoff=NO_WAIT, follow_redirects=True)
        assert sha(read_all(source)) == sha(payload.read_bytes())
    assert proxy.cuts == 1 and source.resumes == 1 and len(registry.authorizations) == 2
    [resume] = proxy.range_requests()
    assert 0 < int(resume.removeprefix("bytes=").rstrip("-")) <= 5 << 20


def test_an_https_source_is_never_redirected_to_plain_http(files: FileServer, certificate: tuple[Path, Path]) -> None:
    with serving_redirects(files.url, tls=certificate) as registry:
        source = HttpSource(f"{registry.url}/images/blob.img", TOKEN, SIZE, cafile=certificate[0],
                            follow_redirects=True)
        with pytest.raises(ImageFetchError, match=r"redirects to http://127.0.0.1:\d+/images/blob.img: bty follows "
                                                  r"redirects to https:// only"):
            source.open()
    assert files.requests == []


def test_redirects_in_a_loop_are_given_up(files: FileServer) -> None:
    with serving_redirects("") as registry:
        registry.target = registry.url  # to itself, forever
        with pytest.raises(ImageFetchError, match=r"redirected more than 5 times"):
            HttpSource(f"{registry.url}/images/blob.img", None, SIZE, follow_redirects=True).open()
    assert len(registry.authorizations) == 6
