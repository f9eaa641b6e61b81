"""`python -m fuzz TARGET [libFuzzer options]`: fuzz one target with atheris (coverage-guided).

    python -m fuzz smtp_server -max_total_time=600     # ten minutes
    python -m fuzz all -max_total_time=120             # each target in turn
    python -m fuzz smtp_server -runs=0 fuzz/artifacts/smtp_server/crash-…   # replay a crash
    python -m fuzz --list | --write-seeds

Inputs come from fuzz/corpus/TARGET/ (seeds, committed; `--write-seeds` rewrites them from each
target's `seeds()`) and fuzz/work/TARGET/ (what the fuzzer finds, ignored by git); crashes are
written to fuzz/artifacts/TARGET/. Runs from the repository root (the targets import the checks
in tests/proto). Needs atheris: `pip install -e '.[fuzz]'`. docs/fuzzing.md has the record.
"""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
from pathlib import Path

from fuzz import TARGETS

HERE = Path(__file__).resolve().parent
DICTS = {"smtp_server": "smtp", "pop3_server": "pop3"}


def write_seeds() -> None:
    for target in TARGETS:
        module = importlib.import_module(f"fuzz.{target}")
        folder = HERE / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for seed in module.seeds():
            (folder / f"seed-{hashlib.sha1(seed).hexdigest()[:12]}").write_bytes(seed)
    from tests.proto.harness import POP3_WORDS, SMTP_WORDS

    for name, words in (("smtp", SMTP_WORDS), ("pop3", POP3_WORDS)):
        lines = [f'"{_escape(word)}"' for word in words if len(word) <= 64]
        (HERE / "dicts").mkdir(exist_ok=True)
        (HERE / "dicts" / f"{name}.dict").write_text("\n".join(lines) + "\n")


def _escape(word: bytes) -> str:
    """libFuzzer dictionary syntax: printable ASCII as is, the rest (and quote, backslash) as
    \\xNN."""
    return "".join(chr(b) if 0x20 <= b < 0x7f and b not in b'"\\' else f"\\x{b:02x}"
                   for b in word)


def run(target: str, options: list[str]) -> int:
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: pip install -e '.[fuzz]'", file=sys.stderr)
        return 2
    work, corpus, artifacts = (HERE / kind / target for kind in ("work", "corpus", "artifacts"))
    for folder in (work, corpus, artifacts):
        folder.mkdir(parents=True, exist_ok=True)
    # Coverage feedback from everything the checks run: the cores, grammars and the harness.
    with atheris.instrument_imports(include=["mailhouse", "tests.proto"]):
        module = importlib.import_module(f"fuzz.{target}")
    args = [sys.argv[0], f"-artifact_prefix={artifacts}/"]
    if target in DICTS and not any(o.startswith("-dict=") for o in options):
        args.append(f"-dict={HERE / 'dicts' / (DICTS[target] + '.dict')}")
    if not any(not o.startswith("-") for o in options):  # no folders or files given: ours
        options = [*options, str(work), str(corpus)]
    atheris.Setup([*args, *options], module.test_one_input)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits the process


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] == "--list":
        print("\n".join(TARGETS))
        return 0
    if argv[0] == "--write-seeds":
        write_seeds()
        return 0
    target, options = argv[0], argv[1:]
    if target == "all":  # each in its own process: libFuzzer ends the process when done
        status = 0
        for name in TARGETS:
            print(f"=== {name}", flush=True)
            status |= subprocess.call([sys.executable, "-m", "fuzz", name, *options])
        return status
    if target not in TARGETS:
        print(f"unknown target {target!r}; targets: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    return run(target, options)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
