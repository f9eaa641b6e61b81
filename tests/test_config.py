"""Config loading: the two sets of defaults, parsing, and an error naming the key for every
bad key or value."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from mailhouse.config import (
    LISTENER_KINDS,
    Config,
    LimitsConfig,
    config_path,
    load_config,
    parse_endpoint,
)
from mailhouse.errors import ConfigError

FULL_EXAMPLE = """
hostname = "mx.example.test"
data_dir = "/var/lib/mailhouse"
user = "mailhouse"
[listen]
smtp = ["0.0.0.0:25"]
submission = ["0.0.0.0:587"]
submissions = ["0.0.0.0:465"]
imap = ["0.0.0.0:143"]
imaps = ["0.0.0.0:993"]
pop3 = ["0.0.0.0:110"]
pop3s = ["0.0.0.0:995"]
[tls]
cert = "/path/fullchain.pem"
key = "/path/privkey.pem"
[dns]
nameservers = ["127.0.0.1:5353"]
[limits]
max_message_size = 52428800
max_recipients = 100
max_connections = 1000
max_connections_per_ip = 100
max_command_line = 512
max_text_line = 1000
idle_timeout = 300
data_timeout = 180
session_lifetime = 3600
max_errors = 20
[smtp]
plus_separator = "+"
max_received_headers = 50
[log]
level = "info"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailhouse.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


# --- defaults ---------------------------------------------------------------------------------

def test_try_it_now_defaults_without_a_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.demo is True
    assert config.hostname == "localhost"
    assert config.data_dir == (tmp_path / "mailhouse-data").resolve()
    assert config.data_dir.is_absolute()
    assert config.user is None
    assert config.source is None
    ports = {kind: config.listen_endpoints(kind) for kind in LISTENER_KINDS}
    assert ports == {
        "smtp": [("127.0.0.1", 10025)], "submission": [("127.0.0.1", 10587)],
        "submissions": [("127.0.0.1", 10465)], "imap": [("127.0.0.1", 10143)],
        "imaps": [("127.0.0.1", 10993)], "pop3": [("127.0.0.1", 10110)],
        "pop3s": [("127.0.0.1", 10995)],
    }
    assert config.limits == LimitsConfig()
    assert config.warnings == ()


def test_production_defaults_with_an_empty_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.getfqdn", lambda: "Host.Example.NET")
    config = load_config(write(tmp_path, ""))
    assert config.demo is False
    assert config.hostname == "host.example.net"
    assert config.data_dir == Path("/var/lib/mailhouse")
    assert config.user == "mailhouse"
    assert config.source == (tmp_path / "mailhouse.toml").resolve()
    assert config.listen_endpoints("smtp") == [("0.0.0.0", 25)]
    assert config.listen_endpoints("submissions") == [("0.0.0.0", 465)]
    assert config.listen_endpoints("pop3s") == [("0.0.0.0", 995)]
    assert (config.tls.cert, config.tls.key) == (None, None)
    assert config.dns.nameservers == ()
    limits = config.limits
    assert (limits.max_message_size, limits.max_recipients, limits.max_connections,
            limits.max_connections_per_ip, limits.max_command_line, limits.max_text_line,
            limits.idle_timeout, limits.data_timeout, limits.session_lifetime,
            limits.max_errors) == (52428800, 100, 1000, 100, 512, 1000, 300, 180, 3600, 20)
    assert (config.smtp.plus_separator, config.smtp.max_received_headers) == ("+", 50)
    assert config.log.level == "info"


def test_unusable_system_hostname_falls_back(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.getfqdn", lambda: "weird_name")
    assert load_config(write(tmp_path, "")).hostname == "localhost"


def test_full_example_from_the_docs(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_EXAMPLE))
    assert config.hostname == "mx.example.test"
    assert config.tls.cert == Path("/path/fullchain.pem")
    assert config.dns.addresses() == [("127.0.0.1", 5353)]
    assert config.limits.idle_timeout == 300.0
    assert config.warnings == ()


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hostname = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.max_errors = 1  # type: ignore[misc]


def test_relative_paths_are_relative_to_the_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    monkeypatch.chdir("/")
    path = tmp_path / "etc" / "m.toml"
    path.write_text('data_dir = "../data"\n[tls]\ncert = "c.pem"\nkey = "~/k.pem"\n')
    config = load_config(path)
    assert config.data_dir == (tmp_path / "data").resolve()
    assert config.tls.cert == (tmp_path / "etc" / "c.pem").resolve()
    assert config.tls.key == (Path.home() / "k.pem").resolve()


def test_listeners_parse_and_may_be_disabled(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
[listen]
smtp = ["[::1]:25", "127.0.0.1:2525", "Localhost:0", "[::]:0"]
imap = []
"""))
    assert config.listen_endpoints("smtp") == [("::1", 25), ("127.0.0.1", 2525),
                                               ("localhost", 0), ("::", 0)]
    assert config.listen_endpoints("imap") == []
    with pytest.raises(ValueError):
        config.listen_endpoints("lmtp")


def test_nameserver_forms(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[dns]\nnameservers = ["1.1.1.1", "::1", '
                                         '"[2001:db8::1]:5353", "[::1]", "10.0.0.1:53"]\n'))
    assert config.dns.addresses() == [("1.1.1.1", 53), ("::1", 53), ("2001:db8::1", 5353),
                                      ("::1", 53), ("10.0.0.1", 53)]


def test_warnings_for_legal_but_dubious_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[limits]\nmax_recipients = 5\nidle_timeout = 2.5\n"
                                         "max_connections = 10\n"))
    assert config.limits.max_recipients == 5
    assert len(config.warnings) == 3
    assert config.warnings[0].startswith("limits.max_recipients")
    assert config.warnings[1].startswith("limits.idle_timeout")
    assert config.warnings[2].startswith("limits.max_connections_per_ip")


def test_demo_may_be_enabled_in_a_file(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "demo = true\n")).demo is True


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, '[log]\nlevel = "DEBUG"\n')).log.level == "debug"


def test_queue_process_defaults_to_separate(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).queue.process == "separate"
    assert load_config(write(tmp_path, '[queue]\nprocess = "inline"\n')).queue.process == "inline"


def test_pop3_workers_default_to_the_cpus(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).pop3.workers == max(1, os.cpu_count() or 1)
    assert load_config(write(tmp_path, "[pop3]\nworkers = 1\n")).pop3.workers == 1
    with pytest.raises(ConfigError, match=r"pop3\.workers"):
        load_config(write(tmp_path, "[pop3]\nworkers = 0\n"))


def test_imap_section_defaults_and_keys(tmp_path: Path) -> None:
    imap = load_config(write(tmp_path, "")).imap
    assert imap.workers == max(1, os.cpu_count() or 1)
    assert imap.idle_timeout == 1800.0  # RFC 9051 §5.4: at least 30 minutes
    assert imap.allow_plaintext_auth is False
    assert imap.append_limit is None  # limits.max_message_size
    assert (imap.fetch_batch, imap.search_content_limit) == (500, 100_000)
    config = load_config(write(tmp_path, (
        "[imap]\nworkers = 1\nidle_timeout = 3600\nallow_plaintext_auth = true\n"
        "append_limit = 1048576\nfetch_batch = 50\nsearch_content_limit = 10\n"
        "max_search_updates = 3\n"
        "[limits]\nimap_max_connections = 40\nimap_max_connections_per_ip = 4\n")))
    assert dataclasses.astuple(config.imap) == (3600.0, True, 1, 1_048_576, 50, 10, 3)
    assert (config.limits.imap_max_connections,
            config.limits.imap_max_connections_per_ip) == (40, 4)
    assert load_config(write(tmp_path, "[imap]\nidle_timeout = 1800\n")).imap.idle_timeout == 1800


def test_plus_separator_may_be_disabled(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, '[smtp]\nplus_separator = ""\n')).smtp.plus_separator == ""


# --- where the config comes from --------------------------------------------------------------

def test_config_path_precedence() -> None:
    assert config_path("a.toml", {"MAILHOUSE_CONFIG": "b.toml"}) == Path("a.toml")
    assert config_path(None, {"MAILHOUSE_CONFIG": "b.toml"}) == Path("b.toml")
    assert config_path(None, {"MAILHOUSE_CONFIG": ""}) is None
    assert config_path(None, {}) is None


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)
    assert "invalid TOML" in error_for(tmp_path, "hostname = \n")
    (tmp_path / "latin1.toml").write_bytes(b'hostname = "\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "latin1.toml")


# --- every bad key or value names the key -----------------------------------------------------

BAD = [
    # (toml, key the message must start with, a fragment it must contain)
    ('[limits]\nmax_recipients = "abc"', "limits.max_recipients",
     "expected an integer >= 1, got 'abc'"),
    ("[limits]\nmax_recipients = 0", "limits.max_recipients", "got 0"),
    ("[limits]\nmax_recipients = true", "limits.max_recipients", "got true"),
    ("[limits]\nmax_recipients = 1.5", "limits.max_recipients", "got 1.5"),
    ("[limits]\nmax_command_line = 511", "limits.max_command_line", ">= 512"),
    ("[limits]\nmax_text_line = 999", "limits.max_text_line", ">= 1000"),
    ("[limits]\nidle_timeout = 0", "limits.idle_timeout", "seconds > 0"),
    ("[limits]\ndata_timeout = -1", "limits.data_timeout", "seconds > 0"),
    ('[limits]\nsession_lifetime = "1h"', "limits.session_lifetime", "seconds"),
    ("[limits]\nsession_lifetime = inf", "limits.session_lifetime", "seconds"),
    ("[limits]\nmax_recipent = 5", "limits.max_recipent", "did you mean limits.max_recipients"),
    ("[limits]\nzzz = 5", "limits.zzz", "known keys in [limits]"),
    ("limits = 5", "limits", "expected a table"),
    ("[[limits]]\nmax_errors = 1", "limits", "expected a table"),
    ("colour = 1", "colour", "unknown key"),
    ("hostnme = 'x'", "hostnme", "did you mean hostname"),
    ("[listener]\nsmtp = []", "listener", "did you mean listen"),
    ("hostname = 'bad_host'", "hostname", "host name"),
    ("hostname = '[127.0.0.1]'", "hostname", "host name"),
    ("hostname = 5", "hostname", "got 5"),
    ("data_dir = ''", "data_dir", "a path"),
    ("data_dir = 5", "data_dir", "a path"),
    ("user = ''", "user", "system user"),
    ("user = 'a:b'", "user", "system user"),
    ("demo = 'yes'", "demo", "true or false"),
    ("[listen]\nsmtp = '0.0.0.0:25'", "listen.smtp", "a list"),
    ("[listen]\nsmtp = [25]", "listen.smtp[0]", "host:port"),
    ("[listen]\nsmtp = ['0.0.0.0']", "listen.smtp[0]", "host:port"),
    ("[listen]\nsmtp = ['0.0.0.0:99999']", "listen.smtp[0]", "port number"),
    ("[listen]\nsmtp = ['0.0.0.0:-1']", "listen.smtp[0]", "port number"),
    ("[listen]\nsmtp = [':25']", "listen.smtp[0]", "host:port"),
    ("[listen]\nimap = ['::1:143']", "listen.imap[0]", "brackets"),
    ("[listen]\nimap = ['[::1]143']", "listen.imap[0]", "[::1]:25"),
    ("[listen]\nimap = ['[nope]:143']", "listen.imap[0]", "not an IPv6 address"),
    ("[listen]\npop3 = ['300.1.1.1:110']", "listen.pop3[0]", "not an IPv4 address"),
    ("[listen]\npop3 = ['bad_host:110']", "listen.pop3[0]", "not a host name"),
    ("[listen]\nlmtp = []", "listen.lmtp", "unknown key"),
    ("[listen]\nimap = ['0.0.0.0:25']", "listen.imap", "already used by listen.smtp"),
    ("[listen]\nsmtp = ['[::1]:25', '[::1]:25']", "listen.smtp", "[::1]:25 is already used"),
    ("[tls]\ncert = 'c.pem'", "tls.key", "set both"),
    ("[tls]\nkey = 'k.pem'", "tls.cert", "set both"),
    ("[tls]\ncert = 5\nkey = 'k'", "tls.cert", "a path"),
    ("[tls]\nchain = 'x'", "tls.chain", "unknown key"),
    ("[dns]\nnameservers = ['ns.example.net']", "dns.nameservers[0]", "ns.example.net"),
    ("[dns]\nnameservers = ['1.1.1.1:0']", "dns.nameservers[0]", "port 0"),
    ("[dns]\nnameservers = '1.1.1.1'", "dns.nameservers", "a list"),
    ("[smtp]\nplus_separator = 'ab'", "smtp.plus_separator", "one character"),
    ("[smtp]\nplus_separator = 'a'", "smtp.plus_separator", "one character"),
    ("[smtp]\nplus_separator = '@'", "smtp.plus_separator", "one character"),
    ("[smtp]\nmax_received_headers = 0", "smtp.max_received_headers", ">= 1"),
    ("[log]\nlevel = 'loud'", "log.level", '"debug", "info"'),
    ("[queue]\nprocess = 'thread'", "queue.process", '"separate", "inline"'),
    ("[queue]\nprocess = true", "queue.process", '"separate", "inline"'),
    ("[log]\nformat = 'xml'", "log.format", '"auto", "text", "json"'),
    ("[log]\ncolour = true", "log.colour", "unknown key"),
    ("[imap]\nidle_timeout = 1799", "imap.idle_timeout", ">= 1800 (RFC 9051 §5.4)"),
    ("[imap]\nidle_timeout = 'long'", "imap.idle_timeout", "seconds"),
    ("[imap]\nworkers = 0", "imap.workers", ">= 1"),
    ("[imap]\nallow_plaintext_auth = 1", "imap.allow_plaintext_auth", "true or false"),
    ("[imap]\nappend_limit = 0", "imap.append_limit", ">= 1"),
    ("[imap]\nappend_limit = '50M'", "imap.append_limit", ">= 1"),
    ("[imap]\nfetch_batch = 0", "imap.fetch_batch", ">= 1"),
    ("[imap]\nsearch_content_limit = -1", "imap.search_content_limit", ">= 1"),
    ("[imap]\nmax_search_updates = 0", "imap.max_search_updates", ">= 1"),
    ("[imap]\nidle_timout = 5", "imap.idle_timout", "did you mean imap.idle_timeout"),
    ("[limits]\nimap_max_connections = 0", "limits.imap_max_connections", ">= 1"),
    ("[limits]\nimap_max_connections_per_ip = 0", "limits.imap_max_connections_per_ip",
     ">= 1"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), BAD, ids=[b[1] for b in BAD])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    message = error_for(tmp_path, text)
    assert message.startswith(f"{key}:"), message
    assert fragment in message, message


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(LimitsConfig)])
def test_every_limit_rejects_text_and_booleans(tmp_path: Path, field: str) -> None:
    for value in ('"abc"', "true", "[]"):
        message = error_for(tmp_path, f"[limits]\n{field} = {value}")
        assert message.startswith(f"limits.{field}: expected "), message


def test_endpoint_parser_directly() -> None:
    assert parse_endpoint("[::1]:25") == ("::1", 25)
    assert parse_endpoint("mx.example.test:587") == ("mx.example.test", 587)
    # The last one has fullwidth digits, which str.isdigit() accepts.
    for bad in ("", ":", "host:", "host:ab", "[::1]", "[::1]:", "host:\uff12\uff15"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_public_addresses_are_canonical_and_reachable(tmp_path: Path) -> None:
    path = tmp_path / "mailhouse.toml"
    path.write_text('public_addresses = ["192.0.2.10", "2001:0db8::0010", "192.0.2.10"]\n')
    assert load_config(path).public_addresses == ("192.0.2.10", "2001:db8::10")
    for bad in ('["127.0.0.1"]', '["::"]', '["not-an-ip"]', '"192.0.2.10"', '[10]'):
        path.write_text(f"public_addresses = {bad}\n")
        with pytest.raises(ConfigError, match="public_addresses"):
            load_config(path)
