"""The skip-or-fail rule for missing programs: skip on a developer machine, fail under CI."""

from __future__ import annotations

import pytest

from tests.helpers import tools


def test_missing_program_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-program-x"):
        tools.require_tools("no-such-program-x")


@pytest.mark.parametrize("value", ["true", "1", "TRUE", "yes"])
def test_missing_program_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI=true and missing programs"):
        tools.require_tools("no-such-program-x")


def test_present_program_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert tools.require_tools("sh")["sh"].endswith("/sh")


def test_missing_reason_names_the_package() -> None:
    assert "install Debian packages postfix" in tools.missing_reason(["smtp-source"])
