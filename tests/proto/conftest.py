"""Hypothesis profiles for the property tests of the protocol cores and grammars.

`make test` runs the "default" profile: a few hundred examples per property, no deadline (the
machine is shared, so per-example timing means nothing). For a long hunt:
`MAILHOUSE_HYPOTHESIS_PROFILE=long python -m pytest tests/proto -k properties`.
Coverage-guided fuzzing of the same targets is in fuzz/ (docs/fuzzing.md).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "long", max_examples=50_000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("MAILHOUSE_HYPOTHESIS_PROFILE", "default"))
