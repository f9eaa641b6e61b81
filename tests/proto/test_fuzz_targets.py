"""Every fuzz target (fuzz/) over its committed corpus: the seeds, and each crash the fuzzer
ever found (`regress-*`), so a fixed bug stays fixed and the targets cannot rot. No atheris
needed: the targets are plain functions of bytes."""

from __future__ import annotations

import importlib
import random
from pathlib import Path

import pytest

from fuzz import TARGETS

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"


@pytest.mark.parametrize("target", TARGETS)
def test_target_over_its_corpus(target: str) -> None:
    module = importlib.import_module(f"fuzz.{target}")
    files = sorted((CORPUS / target).iterdir())
    assert any(f.name.startswith("seed-") for f in files), "run: python -m fuzz --write-seeds"
    for path in files:
        module.test_one_input(path.read_bytes())


@pytest.mark.parametrize("target", TARGETS)
def test_target_seeds_match_the_corpus(target: str) -> None:
    # `python -m fuzz --write-seeds` after changing a target's seeds().
    module = importlib.import_module(f"fuzz.{target}")
    on_disk = {p.read_bytes() for p in (CORPUS / target).glob("seed-*")}
    assert on_disk == set(module.seeds())


@pytest.mark.parametrize("target", TARGETS)
def test_target_on_random_bytes(target: str) -> None:
    module = importlib.import_module(f"fuzz.{target}")
    rng = random.Random(target)
    for _ in range(200):
        module.test_one_input(rng.randbytes(rng.randrange(0, 300)))
