"""Exit codes: one per outcome, listed in `bty --help`, the same for every front-end."""

from __future__ import annotations

import signal

import pytest

from bty_live import cli, errors
from bty_live.errors import EXIT_CODES, INTERNAL_ERROR, SHELL_EXIT_CODE, exit_code_for


def test_no_two_error_classes_share_an_exit_code() -> None:
    codes = [code for _, code, _ in EXIT_CODES]
    assert len(codes) == len(set(codes)), codes


def test_the_shell_request_is_no_error_code_so_a_failed_tui_never_opens_a_root_shell() -> None:
    assert SHELL_EXIT_CODE not in {code for _, code, _ in EXIT_CODES}
    assert SHELL_EXIT_CODE not in (0, INTERNAL_ERROR)
    assert exit_code_for(errors.ImageError("image x is missing")) != SHELL_EXIT_CODE


def test_every_error_class_bty_raises_lives_in_errors_and_has_a_code_other_than_internal() -> None:
    classes = [value for value in vars(errors).values()
               if isinstance(value, type) and issubclass(value, errors.BtyError)]
    assert len(classes) >= 20
    for cls in classes:
        error = cls("x") if cls is not errors.Cancelled else cls("x", signum=None)
        assert exit_code_for(error) != INTERNAL_ERROR, cls


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_run_a_signal_stopped_exits_128_plus_the_signal(signum: int, code: int) -> None:
    assert exit_code_for(errors.stopped_by(signum)) == code


def test_bty_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listed = capsys.readouterr().out
    for code in [0, SHELL_EXIT_CODE, INTERNAL_ERROR, *(code for _, code, _ in EXIT_CODES)]:
        assert f"\n  {code:<4} " in listed, code
