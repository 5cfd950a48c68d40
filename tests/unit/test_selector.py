"""Disk selectors, on plain constructed Disk dataclasses; path resolution is injected or uses tmp links."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bty_live.disk.eligibility import Assessed
from bty_live.disk.model import Disk
from bty_live.disk.selector import Term, normalize_wwn, parse_selector, select_disk
from bty_live.errors import SelectorError, UsageError

GiB = 1 << 30


def make_disk(name: str, size: int = 16 * GiB, **fields: Any) -> Disk:
    fields.setdefault("transport", "usb")
    return Disk(name=name, path=f"/dev/{name}", devnum=(8, 16), size=size, **fields)


def ok(disk: Disk) -> Assessed:
    return Assessed(disk, ())


def refused(disk: Disk, *why: str) -> Assessed:
    return Assessed(disk, why)


def no_links(path: str) -> str:
    return path


def pick(text: str, *assessed: Assessed) -> str:
    return select_disk(parse_selector(text), assessed, resolve=no_links).name


# --------------------------------------------------------------------------- parsing


def test_comma_separated_terms_are_all_parsed() -> None:
    selector = parse_selector(" serial=ABC , size>=100G,largest ")
    assert selector.terms == (Term("serial", "=", "ABC"), Term("size", ">=", "100G", 100 * GiB))
    assert selector.pick == "largest"


def test_transport_is_an_alias_of_tran() -> None:
    assert parse_selector("transport=usb").terms == parse_selector("tran=usb").terms


def test_an_unknown_key_is_refused_listing_the_allowed_keys() -> None:
    with pytest.raises(UsageError, match=r"unknown key 'colour'.*allowed: serial=, wwn=, path=.*largest"):
        parse_selector("colour=red")


@pytest.mark.parametrize("text", [
    "", "  ", "serial", "serial:abc", "serial=", "serial=a,,size=1G", "model>=X", "size>=lots",
    "largest,smallest", "serial=a,",
])
def test_malformed_selectors_are_refused_as_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="bad disk selector"):
        parse_selector(text)


def test_a_bare_path_is_refused_with_a_hint() -> None:
    with pytest.raises(UsageError, match=r"did you mean path=/dev/sdb\?"):
        parse_selector("/dev/sdb")


# --------------------------------------------------------------------------- matching


def test_values_match_case_insensitively_and_trimmed() -> None:
    disk = make_disk("sdb", serial="AA11BB", model="Ultra Fit", vendor="SanDisk")
    assert parse_selector("serial= aa11bb ,model=ULTRA FIT,vendor=sandisk,tran=USB").matches(disk)


def test_matching_is_exact_not_a_substring() -> None:
    disk = make_disk("sdb", serial="AA11BB", model="Ultra Fit")
    assert not parse_selector("serial=AA11").matches(disk)
    assert not parse_selector("model=Ultra").matches(disk)


def test_serial_model_and_vendor_accept_star_and_question_globs() -> None:
    disk = make_disk("sdb", serial="4C530001230517", model="Ultra Fit", vendor="SanDisk")
    assert parse_selector("serial=4C53*,model=Ultra?Fit,vendor=San*").matches(disk)
    assert not parse_selector("serial=4C54*").matches(disk)


def test_brackets_in_a_glob_match_themselves() -> None:
    assert parse_selector("model=Disk [A]*").matches(make_disk("sdb", model="Disk [A] 2"))
    assert not parse_selector("model=Disk [A]*").matches(make_disk("sdb", model="Disk A 2"))


def test_a_disk_without_a_serial_never_matches_a_serial_term() -> None:
    assert not parse_selector("serial=*").matches(make_disk("sdb", serial=None))


@pytest.mark.parametrize("typed", ["0x5000C500A1B2C3D4", "naa.5000c500a1b2c3d4", " 5000C500a1b2c3d4 "])
def test_wwn_matches_in_any_of_its_spellings(typed: str) -> None:
    disk = make_disk("sdb", wwn="0x5000c500a1b2c3d4")
    assert parse_selector(f"wwn={typed}").matches(disk)


def test_wwn_normalization_strips_prefixes_and_lowercases() -> None:
    assert normalize_wwn("eui.0025388B91B2E12E") == normalize_wwn("0x0025388b91b2e12e") == "0025388b91b2e12e"


def test_name_matches_with_or_without_dev_prefix() -> None:
    disk = make_disk("loop3")
    assert parse_selector("name=loop3").matches(disk)
    assert parse_selector("name=/dev/loop3").matches(disk)
    assert not parse_selector("name=loop30").matches(disk)


def test_size_ranges_bound_both_ways_inclusively() -> None:
    small, mid, big = make_disk("sdb", 8 * GiB), make_disk("sdc", 64 * GiB), make_disk("sdd", 1 << 40)
    selector = parse_selector("size>=8G,size<=64GiB")
    assert [selector.matches(d) for d in (small, mid, big)] == [True, True, False]


def test_size_equals_is_exact_in_bytes_with_decimal_and_binary_units() -> None:
    vendor_gb = make_disk("sdb", 500_000_000_000)
    assert parse_selector("size=500GB").matches(vendor_gb)
    assert not parse_selector("size=500G").matches(vendor_gb)
    assert parse_selector("size=1.5TiB").matches(make_disk("sdc", 3 * (1 << 39)))


def test_path_matches_the_device_node_itself() -> None:
    assert parse_selector("path=/dev/sdb").matches(make_disk("sdb"), no_links)


def test_path_matches_through_a_symlink(tmp_path: Path) -> None:
    node = tmp_path / "dev" / "sdz"
    node.parent.mkdir()
    node.touch()
    link = tmp_path / "by-id" / "usb-SanDisk_Ultra_Fit_4C53-0:0"
    link.parent.mkdir()
    link.symlink_to(node)
    disk = Disk(name="sdz", path=str(node), devnum=(8, 0), size=GiB, transport="usb")
    other = Disk(name="sdy", path=str(tmp_path / "dev" / "sdy"), devnum=(8, 16), size=GiB, transport="usb")
    selector = parse_selector(f"path={link}")
    assert selector.matches(disk, os.path.realpath)
    assert not selector.matches(other, os.path.realpath)


def test_path_resolution_is_injected() -> None:
    links = {"/dev/disk/by-path/pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0": "/dev/sdc"}
    selector = parse_selector("path=/dev/disk/by-path/pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0")
    assert not selector.matches(make_disk("sdc"), no_links)
    chosen = select_disk(selector, [ok(make_disk("sdb")), ok(make_disk("sdc"))],
                         resolve=lambda p: links.get(p, p))
    assert chosen.name == "sdc"


def test_path_matches_a_by_id_link_the_disk_lists() -> None:
    disk = make_disk("sdb", by_id=("/dev/disk/by-id/usb-Kingston_DT_123-0:0",))
    assert parse_selector("path=/dev/disk/by-id/usb-Kingston_DT_123-0:0").matches(disk, no_links)


# --------------------------------------------------------------------------- choosing exactly one


def test_the_single_eligible_match_is_selected() -> None:
    assert pick("serial=B", ok(make_disk("sdb", serial="A")), ok(make_disk("sdc", serial="B"))) == "sdc"


def test_an_ambiguous_selector_is_refused_listing_the_candidates() -> None:
    disks = [ok(make_disk("loop3", 2 * GiB, transport="loop")), ok(make_disk("loop4", GiB, transport="loop")),
             ok(make_disk("sdb", serial="X"))]
    with pytest.raises(SelectorError) as err:
        pick("tran=loop", *disks)
    assert str(err.value) == (
        "selector 'tran=loop' matches 2 eligible disks: loop3 (2 GiB, loop, serial -), "
        "loop4 (1 GiB, loop, serial -); add serial= or path= to pick one")


def test_no_match_is_refused_listing_the_eligible_disks() -> None:
    disks = [ok(make_disk("sdb", serial="A", model="Ultra Fit")), ok(make_disk("sdc", 32 * GiB, serial="B"))]
    with pytest.raises(SelectorError) as err:
        pick("serial=C", *disks)
    assert str(err.value) == (
        "selector 'serial=C' matches no eligible disk; eligible disks: "
        "sdb (16 GiB, usb, Ultra Fit, serial A), sdc (32 GiB, usb, serial B)")


def test_an_ineligible_disk_that_matches_is_explained_not_selected() -> None:
    disks = [refused(make_disk("sda", serial="C"), "mounted: sda1 at /mnt"), ok(make_disk("sdb", serial="A"))]
    with pytest.raises(SelectorError, match=r"sda matches but is not eligible \(mounted: sda1 at /mnt\)"):
        pick("serial=C", *disks)


def test_with_no_eligible_disk_at_all_the_refusal_says_so() -> None:
    with pytest.raises(SelectorError, match="there are no eligible disks"):
        pick("tran=usb", refused(make_disk("sdb"), "read-only"))


def test_largest_picks_the_biggest_eligible_disk_matching_the_other_terms() -> None:
    disks = [refused(make_disk("sda", 1 << 40), "boot medium"), ok(make_disk("sdb", 64 * GiB)),
             ok(make_disk("sdc", 32 * GiB)), ok(make_disk("nvme0n1", 512 * GiB, transport="nvme"))]
    assert pick("largest,tran=usb", *disks) == "sdb"
    assert pick("largest", *disks) == "nvme0n1"


def test_smallest_picks_the_smallest_eligible_disk() -> None:
    disks = [ok(make_disk("sdb", 64 * GiB)), ok(make_disk("sdc", 32 * GiB)),
             refused(make_disk("sdd", GiB), "read-only")]
    assert pick("smallest", *disks) == "sdc"


def test_largest_refuses_a_tie() -> None:
    disks = [ok(make_disk("sdb", 64 * GiB)), ok(make_disk("sdc", 64 * GiB)), ok(make_disk("sdd", GiB))]
    with pytest.raises(SelectorError, match=r"matches 2 eligible disks of the same largest size: sdb .*sdc"):
        pick("largest", *disks)


def test_size_range_with_largest_selects_within_the_range() -> None:
    disks = [ok(make_disk("sdb", 8 * GiB)), ok(make_disk("sdc", 30 * GiB)), ok(make_disk("sdd", 2 << 40))]
    assert pick("size>=4G,size<=1T,largest", *disks) == "sdc"


# --------------------------------------------------------------------------- through `bty flash`


@pytest.fixture
def small_image(tmp_path: Path) -> Path:
    image = tmp_path / "small.img"
    image.write_bytes(b"\x01" * (1 << 20))
    return image


@pytest.mark.parametrize("text", ["colour=red", "size>=lots", "serial=A,,model=B", "tran=usb,largest,smallest",
                                  "largest,smallest"])
def test_bad_selector_syntax_is_a_usage_error_exit_2_showing_the_accepted_syntax(
        small_image: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bty_live import cli

    assert cli.main(["flash", str(small_image), text, "--yes"]) == 2
    err = capsys.readouterr().err
    assert f"bad disk selector '{text}'" in err and "allowed: serial=, wwn=, path=" in err


def test_a_well_formed_selector_that_matches_nothing_stays_exit_6(
        small_image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bty_live import cli

    assert cli.main(["flash", str(small_image), "serial=NO-SUCH-SERIAL-4711", "--yes"]) == 6
    assert "NO-SUCH-SERIAL-4711" in capsys.readouterr().err
