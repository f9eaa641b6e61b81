"""Connection caps (net/listener.py): per service, per address with IPv6 per /64, within the
process-wide total; and how the config splits them (app.service_limits, pop3 workers)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mailhouse.app import service_limits
from mailhouse.config import Config, ListenConfig, config_from_table
from mailhouse.errors import ConfigError
from mailhouse.net.listener import ConnectionLimits, ConnectionTracker
from mailhouse.worker_process import worker_limits


def test_ipv6_peers_are_counted_per_64() -> None:
    pool = ConnectionTracker(100).pool("smtp", ConnectionLimits(100, 2))
    first = pool.admit("2001:db8::1")
    assert first is not None
    assert pool.admit("2001:db8::2:3") is not None
    assert pool.admit("2001:db8::ffff:1") is None  # same /64: a fresh address changes nothing
    assert pool.admit("2001:db8:0:1::1") is not None  # the next /64 is another client
    first.release()
    first.release()  # idempotent: the listener and the session may both give it back
    assert pool.per_ip["ip:2001:db8::/64"] == 1
    assert pool.admit("2001:db8::9") is not None
    assert pool.admit("2001:db8::a") is None


def test_ipv4_mapped_counts_as_ipv4() -> None:
    pool = ConnectionTracker(100).pool("pop3", ConnectionLimits(100, 2))
    assert pool.admit("192.0.2.1") is not None
    assert pool.admit("::ffff:192.0.2.1") is not None
    assert pool.admit("192.0.2.1") is None
    assert pool.admit("192.0.2.2") is not None


def test_each_service_has_its_own_total_within_the_process_total() -> None:
    tracker = ConnectionTracker(3)
    mx = tracker.pool("smtp", ConnectionLimits(2, 100))
    submission = tracker.pool("submission", ConnectionLimits(2, 100))
    held = [mx.admit(f"192.0.2.{i}") for i in range(2)]
    assert all(held)
    assert mx.admit("192.0.2.9") is None  # MX is full …
    assert submission.admit("198.51.100.1") is not None  # … submission is not
    assert submission.admit("198.51.100.2") is None  # the process-wide total is
    assert (tracker.total, mx.total, submission.total) == (3, 2, 1)
    for slot in held:
        assert slot is not None
        slot.release()
    assert (tracker.total, mx.total, dict(mx.per_ip)) == (1, 0, {})
    tracker.closing = True
    assert mx.admit("192.0.2.1") is None


def config(tmp_path: Path, limits: dict[str, object], listen: dict[str, list[str]] | None = None,
           workers: int = 1) -> Config:
    base = config_from_table({"hostname": "mx.example.test", "data_dir": str(tmp_path),
                              "limits": limits, "pop3": {"workers": workers}},
                             base_dir=tmp_path)
    if listen is not None:
        empty = dict.fromkeys(("smtp", "submission", "submissions", "imap", "imaps", "pop3",
                               "pop3s"), ())
        empty.update({k: tuple(v) for k, v in listen.items()})
        base = replace(base, listen=replace(ListenConfig(), **empty))
    return base


def test_max_connections_is_split_between_the_enabled_services(tmp_path: Path) -> None:
    every = config(tmp_path, {})  # production defaults: every listener (weights 2:1:1:4)
    assert service_limits(every, "smtp") == ConnectionLimits(250, 100)
    assert service_limits(every, "submission") == ConnectionLimits(125, 100)
    assert service_limits(every, "pop3") == ConnectionLimits(125, 100)
    assert service_limits(every, "imap") == ConnectionLimits(500, 100)
    no_imap = config(tmp_path, {}, {"smtp": ["127.0.0.1:0"], "submission": ["127.0.0.1:0"],
                                    "pop3": ["127.0.0.1:0"]})
    assert service_limits(no_imap, "smtp") == ConnectionLimits(500, 100)
    assert service_limits(no_imap, "pop3") == ConnectionLimits(250, 100)
    mx_only = config(tmp_path, {"max_connections": 10}, {"smtp": ["127.0.0.1:0"]})
    assert service_limits(mx_only, "smtp") == ConnectionLimits(10, 100)
    mx_pop = config(tmp_path, {"max_connections": 9},
                    {"smtp": ["127.0.0.1:0"], "pop3s": ["127.0.0.1:0"]})
    assert service_limits(mx_pop, "smtp") == ConnectionLimits(6, 100)
    assert service_limits(mx_pop, "pop3") == ConnectionLimits(3, 100)


def test_per_service_keys_override_the_split(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"smtp_max_connections": 700, "smtp_max_connections_per_ip": 5,
                            "pop3_max_connections": 40, "pop3_max_connections_per_ip": 7},
                 workers=4)
    assert service_limits(cfg, "smtp") == ConnectionLimits(700, 5)
    assert service_limits(cfg, "submission") == ConnectionLimits(125, 100)
    # Each of 4 POP3 worker processes admits a quarter (at least 1).
    assert worker_limits(cfg, 4) == ConnectionLimits(10, 1)
    imap = config(tmp_path, {"imap_max_connections": 30, "imap_max_connections_per_ip": 9})
    assert service_limits(imap, "imap") == ConnectionLimits(30, 9)
    assert worker_limits(imap, 2, "imap") == ConnectionLimits(15, 4)


@pytest.mark.parametrize("key", [
    "write_stall_timeout", "tls_handshake_timeout", "command_line_timeout", "helo_timeout",
    "login_timeout", "smtp_max_connections", "submission_max_connections_per_ip",
    "imap_max_connections", "imap_max_connections_per_ip",
])
def test_new_limits_keys_are_checked(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"limits.{key}"):
        config_from_table({"limits": {key: 0}}, base_dir=tmp_path)
