"""`.ci/run` runs the README's test command first, then the linters, and fails if either fails."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _rig(tmp_path: Path, test_rc: int, lint_rc: int) -> Path:
    """A copy of .ci/run beside a Makefile whose `test` and `lint` log their names and exit as told."""
    (tmp_path / ".ci").mkdir()
    shutil.copy2(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "Makefile").write_text(
        f"test:\n\techo test >> order.log; exit {test_rc}\n"
        f"lint:\n\techo lint >> order.log; exit {lint_rc}\n"
    )
    return tmp_path


def _run(rig: Path) -> tuple[int, list[str]]:
    proc = subprocess.run([str(rig / ".ci" / "run")], cwd="/", capture_output=True, text=True, timeout=60)
    return proc.returncode, (rig / "order.log").read_text().split()


def test_ci_runs_make_test_then_make_lint(tmp_path: Path) -> None:
    rc, order = _run(_rig(tmp_path, 0, 0))
    assert (rc, order) == (0, ["test", "lint"])


@pytest.mark.parametrize(("test_rc", "lint_rc"), [(0, 1), (1, 0), (1, 1)])
def test_ci_fails_when_tests_or_linters_fail_and_still_runs_both(tmp_path: Path, test_rc: int, lint_rc: int) -> None:
    rc, order = _run(_rig(tmp_path, test_rc, lint_rc))
    assert rc != 0
    assert order == ["test", "lint"]


def test_the_lint_target_runs_ruff_and_mypy() -> None:
    makefile = (REPO / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check" in lint and "mypy bty_live" in lint
