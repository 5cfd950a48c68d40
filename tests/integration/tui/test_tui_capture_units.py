"""The Capture action's plain-Python parts: the image's name, the progress of a capture, the
space verdict and the advice when a capture fails."""

from __future__ import annotations

from pathlib import Path

from bty_live import errors
from bty_live.capture.plan import Space
from bty_live.disk.model import Disk
from bty_live.events import Event, Kind, Phase
from bty_live.tui.capture_name import default_image_name, name_problem, output_for
from bty_live.tui.capture_text import space_verdict_text
from bty_live.tui.progress import FlashProgress
from bty_live.tui.text import error_heading, next_steps, progress_parts

GiB = 1 << 30
T0 = 1_795_608_000.0  # 2026-11-25 12:00:00 UTC


def disk(**fields: object) -> Disk:
    return Disk(name="sda", path="/dev/sda", devnum=(8, 0), size=500 * GiB, transport="sata", **fields)  # type: ignore[arg-type]


def test_the_default_name_is_the_model_the_serial_and_the_date_as_a_safe_file_name() -> None:
    assert default_image_name(disk(model="Samsung SSD 870/EVO", serial="S5Y1"), T0) == \
        "Samsung_SSD_870_EVO-S5Y1-2026-11-25"
    assert default_image_name(disk(), T0) == "sda-2026-11-25"  # no model, no serial: the disk's name
    assert name_problem(default_image_name(disk(model=".." + "x" * 90), T0), Path("/nonexistent")) is None


def test_a_name_becomes_name_img_zst_and_unsafe_or_taken_names_are_refused(tmp_path: Path) -> None:
    assert output_for(tmp_path, "ref") == tmp_path / "ref.img.zst"
    assert output_for(tmp_path, "ref.img.zst") == tmp_path / "ref.img.zst"  # the suffix is not doubled
    assert name_problem("ref-1.2_b", tmp_path) is None
    assert name_problem("", tmp_path) == "Type a name for the image."
    for unsafe in ("../etc", "a b", ".hidden", "x/y"):
        assert "Use letters, digits" in (name_problem(unsafe, tmp_path) or ""), unsafe
    (tmp_path / "ref.img.zst.toml").write_text("name = 'ref'\n")  # a manifest left alone counts too
    assert name_problem("ref", tmp_path) == f"ref.img.zst.toml already exists in {tmp_path}: choose another name."


def test_a_capture_folds_into_one_step_with_its_rate_eta_and_image_file_size() -> None:
    state = FlashProgress(capture=True)
    for event in (Event(Phase.CAPTURE, Kind.START, total=100 * GiB, timestamp=T0),
                  Event(Phase.CAPTURE, Kind.PROGRESS, bytes_in=4 * GiB, bytes_out=25 * GiB, total=100 * GiB,
                        zero_bytes=10 * GiB, rate=1e9, eta=80.0, timestamp=T0 + 25)):
        state = state.apply(event)
    parts = progress_parts(state, now=T0 + 25)
    assert state.steps == (Phase.CAPTURE,) and state.fraction == 0.25
    assert parts.heading == "Capturing: reading the disk into the image"
    assert parts.numbers.splitlines() == ["25 GiB of 100 GiB   1,000 MB/s   ETA 1:20   elapsed 0:25",
                                          "image file 4 GiB   all-zero MiB 10 GiB"]
    assert parts.steps == "[>] capture"
    cancelling = progress_parts(FlashProgress(capture=True, cancelling=True, phase=Phase.CAPTURE), now=T0)
    assert cancelling.heading == "Cancelling: stopping, then removing the partial image"
    state = state.apply(Event(Phase.CAPTURE, Kind.END, bytes_in=9 * GiB, bytes_out=100 * GiB, total=100 * GiB,
                              elapsed=100.0))
    assert progress_parts(state, now=T0 + 100).steps == "[x] capture 1:40"


def test_the_space_verdict_refuses_below_what_the_filesystems_hold_and_warns_below_the_worst_case() -> None:
    where = Path("/run/bty/images")
    refused = space_verdict_text(Space(free=5 * GiB, worst_case=101 * GiB, in_use=8 * GiB), "no room", where)
    assert refused.plain.startswith("  Not enough space: only 5 GiB free in /run/bty/images, less than the 8 GiB")
    warned = space_verdict_text(Space(free=50 * GiB, worst_case=101 * GiB, in_use=8 * GiB), None, where)
    assert warned.plain.startswith("  It may not fit: 50 GiB free, 101 GiB if nothing compresses.")
    fits = space_verdict_text(Space(free=200 * GiB, worst_case=101 * GiB, in_use=8 * GiB), None, where)
    assert fits.plain.strip() == "Enough space, even if nothing compresses."


def test_a_failed_capture_is_explained_as_a_capture_not_as_a_flash() -> None:
    cancelled = errors.Cancelled("cancelled by the user")
    assert next_steps(cancelled, capture=True) == ("The capture stopped and its partial image was removed; the "
                                                   "disk was not changed.")
    assert "wipe" not in next_steps(cancelled, capture=True).lower()
    assert error_heading(errors.TargetRefusedError("refusing to capture /dev/sda"), capture=True) == \
        "This disk may not be captured"
    assert error_heading(errors.TargetIOError("no space left"), capture=True) == \
        "Reading the disk or writing the image failed"
