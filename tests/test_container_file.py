"""packaging/Containerfile, checked statically (no container runtime or registry is reachable
in the tests): one /data volume, a non-root user, the mail ports, the health check through
`mailhouse healthcheck`, and a config that loads and keeps everything under /data."""

from __future__ import annotations

import shlex
from pathlib import Path

from mailhouse.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = ROOT / "packaging" / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    joined = CONTAINERFILE.read_text().replace("\\\n", " ")
    steps = [line.strip().split(None, 1) for line in joined.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    parsed = [(step[0].upper(), step[1] if len(step) > 1 else "") for step in steps]
    last_from = max(i for i, (word, _) in enumerate(parsed) if word == "FROM")
    return parsed[last_from:]


def test_final_stage_runs_unprivileged_with_one_data_volume() -> None:
    final = instructions()
    values = {word: args for word, args in final}
    assert values["VOLUME"] == "/data"
    assert values["USER"] not in ("root", "0")
    ports = {int(p) for p in values["EXPOSE"].split()}
    assert {25, 587, 465, 143, 993, 110, 995} <= ports
    health = values["HEALTHCHECK"]
    assert health.split("CMD", 1)[1].strip() == '["mailhouse", "healthcheck"]'
    assert values["ENTRYPOINT"] == '["mailhouse"]' and values["CMD"] == '["serve"]'
    assert values["STOPSIGNAL"] == "SIGTERM"
    # the interpreter alone may bind low ports; nothing runs setuid or as root at run time
    assert any("setcap cap_net_bind_service=+ep" in args for word, args in final
               if word == "RUN")
    user_at = [word for word, _ in final].index("USER")
    assert all(word != "RUN" for word, _ in final[user_at:])


def test_the_container_config_keeps_everything_in_the_volume() -> None:
    final = instructions()
    copies = [shlex.split(args) for word, args in final if word == "COPY"]
    assert ["packaging/container.toml", "/etc/mailhouse/mailhouse.toml"] in copies
    assert ("ENV", "MAILHOUSE_CONFIG=/etc/mailhouse/mailhouse.toml") in final
    config = load_config(ROOT / "packaging" / "container.toml")
    assert config.data_dir == Path("/data")
    assert config.admin.endpoints(), "the HEALTHCHECK needs the admin listener"
    assert config.listen_endpoints("smtp") == [("0.0.0.0", 25)]
    assert config.tls.cert is None  # self-signed in /data/tls, or ACME into /data/acme


def test_the_build_context_leaves_out_what_the_image_does_not_need() -> None:
    for name in (".containerignore", ".dockerignore"):
        ignored = (ROOT / name).read_text().split()
        assert {".git", "tests", "mailhouse-data"} <= set(ignored), name
