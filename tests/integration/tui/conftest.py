"""Fixtures for the TUI's tests: a real image with its manifest, receipts kept in the test's
directory, and reboot/power-off recorders instead of systemctl."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.imagekit import MiB, build_gpt_image, images_dir_with
from tests.integration.tui.tui_helpers import RecordedActions

IMAGE_SIZE = 64 * MiB


@pytest.fixture(scope="session")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("tui-img") / "disk.img", IMAGE_SIZE)


@pytest.fixture
def images_dir(tmp_path: Path, raw_image: Path) -> Path:
    """An images directory holding demo.img (a GPT + ext4 image) with its manifest."""
    return images_dir_with(tmp_path, raw_image, "demo.img", manifest=True)


@pytest.fixture
def receipts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "receipts"
    monkeypatch.setenv("BTY_RECEIPTS", str(directory))
    return directory


@pytest.fixture
def actions() -> RecordedActions:
    return RecordedActions()
