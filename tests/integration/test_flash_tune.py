"""The engine runs the manifest's tuning task after writing and verifying, records every run
in the ledger, and treats a failing step like any other failure: exit 13, the disk wiped."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.flash.ledger import read_ledger
from bty_live.image.manifest import load_manifest, write_manifest
from tests.conftest import LoopDevice
from tests.imagekit import MiB, looks_blank
from tests.tunedata.targetkit import build_disk_image, build_target_tree

SIZE = 64 * MiB

TASK = """\
doc: name the machine
steps:
- name: hostname
  uses: bty.hostname
  with:
    name: flashed-by-bty
"""

FAILING_TASK = TASK + """\
- name: break on purpose
  run: exit 7
"""


@pytest.fixture
def images(tmp_path: Path) -> Path:
    directory = tmp_path / "images"
    directory.mkdir()
    tree = build_target_tree(tmp_path / "tree")
    image = build_disk_image(directory / "debian.img", tree, SIZE)
    assert cli.main(["images", "add", str(image)]) == 0
    manifest = load_manifest(image)
    assert manifest is not None
    (directory / "name.yaml").write_text(TASK)
    (directory / "broken.yaml").write_text(FAILING_TASK)
    from dataclasses import replace

    from bty_live.image.manifest import TuneSpec

    write_manifest(image, replace(manifest, tune=TuneSpec(task="name.yaml")))
    return directory


def _root_file(loop: LoopDevice, tmp_path: Path, path: str) -> str:
    """Read a file from the flashed root filesystem (partition 2) without mounting it."""
    table = json.loads(subprocess.run(["sfdisk", "--json", loop.path], check=True, capture_output=True,
                                      text=True).stdout)["partitiontable"]
    start = table["partitions"][-1]["start"] * 512
    fs = tmp_path / "root.fs"
    subprocess.run(["dd", f"if={loop.path}", f"of={fs}", "bs=1M", f"skip={start}", "iflag=skip_bytes",
                    "status=none"], check=True)
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(fs)], check=True, capture_output=True,
                          text=True).stdout


def test_the_manifest_task_tunes_the_flashed_system_and_the_run_is_known_good(
        images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice],
        capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(SIZE)
    receipt = tmp_path / "receipt.json"
    assert cli.main(["flash", "debian", loop.path, "--images", str(images), "--yes", "--receipt", str(receipt)]) == 0
    assert _root_file(loop, tmp_path, "/etc/hostname").strip() == "flashed-by-bty"
    tune = json.loads(receipt.read_text())["tune"]
    assert tune["status"] == "passed" and [s["status"] for s in tune["steps"]] == ["passed"]
    assert Path(tune["report_dir"]).is_relative_to(images / "reports")
    [record] = read_ledger(images / "ledger.jsonl").records
    assert record.result == "passed" and record.task_digest
    capsys.readouterr()
    assert cli.main(["images", "--images", str(images), "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["known_good_on"] == [record.machine_model]


def test_tune_off_skips_the_manifest_task(images: Path, tmp_path: Path,
                                          make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(SIZE)
    receipt = tmp_path / "receipt.json"
    assert cli.main(["flash", "debian", loop.path, "--images", str(images), "--yes", "--tune", "off",
                     "--receipt", str(receipt)]) == 0
    assert json.loads(receipt.read_text())["tune"] is None
    assert _root_file(loop, tmp_path, "/etc/hostname").strip() != "flashed-by-bty"


def test_a_failing_step_exits_13_names_the_step_wipes_the_disk_and_is_recorded(
        images: Path, make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(SIZE)
    code = cli.main(["flash", "debian", loop.path, "--images", str(images), "--yes",
                     "--tune", str(images / "broken.yaml")])
    err = capsys.readouterr().err
    assert code == 13, err
    assert "break on purpose" in err and "wiped" in err
    assert looks_blank(loop.path, SIZE)
    [record] = read_ledger(images / "ledger.jsonl").records
    assert record.result == "failed" and record.error_kind == "tune"
    assert record.phases["write"].result == "passed" and record.phases["tune"].result == "failed"


def test_a_missing_task_refuses_before_anything_is_written(images: Path, make_loop: Callable[..., LoopDevice],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(SIZE, fill=b"\x33")
    assert cli.main(["flash", "debian", loop.path, "--images", str(images), "--yes", "--tune", "nope.yaml"]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err
    with open(loop.path, "rb") as dev:
        assert dev.read(4096) == b"\x33" * 4096



def _shadowing_cijoe(base: Path) -> Path:
    """A directory holding a `cijoe` package that is not CIJOE: its CLI exits 0 and runs nothing,
    as the checkout's cijoe/ folder once did when it shadowed the installed package."""
    package = base / "cijoe"
    (package / "cli").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli" / "__init__.py").write_text("")
    (package / "cli" / "cli.py").write_text("def main():\n    return 0\n")
    return base


def test_tuning_does_not_depend_on_the_directory_bty_was_started_in(
        images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The README runs `.venv/bin/bty` from the checkout: a cijoe/ folder there must not shadow CIJOE."""
    loop = make_loop(SIZE)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    monkeypatch.chdir(_shadowing_cijoe(tmp_path / "checkout"))
    code = cli.main(["flash", "debian", loop.path, "--images", str(images), "--yes", "--tune", "name.yaml"])
    assert code == 0, capsys.readouterr().err
    assert _root_file(loop, tmp_path, "/etc/hostname").strip() == "flashed-by-bty"


def test_a_cijoe_that_exits_0_without_running_the_task_is_named_as_such(
        images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(SIZE)
    monkeypatch.setenv("PYTHONPATH", str(_shadowing_cijoe(tmp_path / "shadow")))
    code = cli.main(["flash", "debian", loop.path, "--images", str(images), "--yes", "--tune", "name.yaml"])
    err = capsys.readouterr().err
    assert code == 13, err
    assert "exit status 0" not in err
    assert "cijoe exited without running the task" in err, err
