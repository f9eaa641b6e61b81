"""The soft descriptor limit is raised to cover the connection caps (issue 7, finding 5)."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from mailhouse.fdlimit import RESERVE, ensure_fd_limit


@pytest.fixture
def restore_limit() -> Iterator[tuple[int, int]]:
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield saved
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_a_low_soft_limit_is_raised_to_cover_the_caps(restore_limit: tuple[int, int]) -> None:
    _, hard = restore_limit
    if hard != resource.RLIM_INFINITY and hard < 1000 + RESERVE:
        pytest.skip("hard limit too low on this machine")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    assert ensure_fd_limit(1000) == 1000 + RESERVE
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (1000 + RESERVE, hard)


def test_a_high_soft_limit_is_left_alone(restore_limit: tuple[int, int]) -> None:
    soft, _ = restore_limit
    if soft == resource.RLIM_INFINITY or soft < 300 + RESERVE:
        pytest.skip("soft limit unusual on this machine")
    assert ensure_fd_limit(300) == soft
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == restore_limit


def test_a_hard_limit_below_the_caps_is_reported(restore_limit: tuple[int, int],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    _, hard = restore_limit
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no finite hard limit")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, hard), hard))
    with caplog.at_level(logging.WARNING, logger="mailhouse.fdlimit"):
        assert ensure_fd_limit(hard) == hard  # raised as far as allowed
    assert "event=fdlimit.too_low" in caplog.text
