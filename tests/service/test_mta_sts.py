"""service/mta_sts.py: the policy's text (RFC 8461 §3.2), its id (§3.1), and which requests
name a policy of ours."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhouse.config import Config, config_from_table
from mailhouse.errors import ConfigError
from mailhouse.service import mta_sts

HOSTED = frozenset({"example.org"})


def config(**tables: dict[str, object]) -> Config:
    return config_from_table({"hostname": "mx.example.org", **tables}, base_dir=Path("."))


def test_policy_text_and_an_id_that_follows_it() -> None:
    served = config(web={"listen": ["127.0.0.1:8443"]})
    assert mta_sts.policy(served) == (
        b"version: STSv1\r\nmode: testing\r\nmx: mx.example.org\r\nmax_age: 604800\r\n")
    first = mta_sts.policy_id(served)
    assert first is not None and first.isalnum() and 1 <= len(first) <= 32
    enforced = config(web={"listen": ["127.0.0.1:8443"]}, mta_sts={"mode": "enforce"})
    assert mta_sts.policy_id(enforced) not in (None, first)
    assert mta_sts.policy_id(config()) is None  # nothing served


@pytest.mark.parametrize(("table", "key"), [
    ({"mode": "strict"}, "mta_sts.mode"), ({"max_age": 31557601}, "mta_sts.max_age"),
    ({"max_age": 60}, "mta_sts.max_age"), ({"max_age": True}, "mta_sts.max_age")])
def test_config_errors_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config(mta_sts=table)


@pytest.mark.parametrize(("host", "path", "domain"), [
    ("mta-sts.example.org", "/.well-known/mta-sts.txt", "example.org"),
    ("MTA-STS.Example.ORG.:443", "/.well-known/mta-sts.txt", "example.org"),
    ("mta-sts.example.org", "/.well-known/mta-sts.txt/", None),
    ("mta-sts.other.example", "/.well-known/mta-sts.txt", None),
    ("example.org", "/.well-known/mta-sts.txt", None),
    ("[::1]:443", "/.well-known/mta-sts.txt", None),
])
def test_which_requests_name_our_policy(host: str, path: str, domain: str | None) -> None:
    assert mta_sts.policy_domain(host, path, HOSTED) == domain


@given(st.text(max_size=80), st.text(max_size=40))
def test_only_hosted_domains_ever_answer(host: str, path: str) -> None:
    assert mta_sts.policy_domain(host, path, HOSTED) in (None, "example.org")
