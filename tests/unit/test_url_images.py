"""An image given by URL: what is shown of the URL, its file name, and where its manifest is."""

from __future__ import annotations

import pytest

from bty_live.errors import UsageError
from bty_live.image.remote import check_blake3, file_name_of, is_image_url, manifest_url_for
from bty_live.protocol.httpconn import shown_url

PRESIGNED = "https://user:pw@Bucket.s3.example.com:8443/os/debian%2012.img.zst?X-Amz-Signature=SECRET&a=b/c.img#top"


def test_the_shown_url_has_no_query_string_fragment_or_credentials() -> None:
    assert shown_url(PRESIGNED) == "https://bucket.s3.example.com:8443/os/debian%2012.img.zst"
    assert shown_url("http://[::1]:8080/disk.img?sig=x") == "http://[::1]:8080/disk.img"


def test_the_file_name_comes_from_the_path_not_the_query() -> None:
    assert file_name_of(PRESIGNED) == "debian 12.img.zst"
    assert file_name_of("https://host/") == ""


def test_the_manifest_is_the_path_plus_toml_without_the_query_string() -> None:
    assert manifest_url_for(PRESIGNED) == "https://user:pw@Bucket.s3.example.com:8443/os/debian%2012.img.zst.toml"
    assert manifest_url_for("http://host/disk.img") == "http://host/disk.img.toml"


@pytest.mark.parametrize(("spec", "url"), [("https://host/a.img", True), ("HTTP://host/a.img", True),
                                           ("images/a.img", False), ("ftp://host/a.img", False),
                                           ("http.img", False)])
def test_only_http_and_https_specs_are_urls(spec: str, url: bool) -> None:
    assert is_image_url(spec) is url


def test_blake3_must_be_64_hex_digits_and_is_lowered() -> None:
    assert check_blake3("AB" * 32) == "ab" * 32
    with pytest.raises(UsageError, match="not 64 hexadecimal characters"):
        check_blake3("ab" * 31)
