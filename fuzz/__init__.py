"""Coverage-guided fuzz targets (atheris, libFuzzer) for the protocol cores and grammars.

One module per target (smtp_server, pop3_server, smtp_grammar, sasl, address, imap_server),
each with `test_one_input(data)` and `seeds()`. The checks themselves are the property tests' own
(tests/proto/harness.py, tests/proto/grammar_checks.py): fuzzing searches the same contracts
with coverage feedback instead of random generation. Run: `python -m fuzz smtp_server
-max_total_time=600` or `make fuzz FUZZ_TARGET=smtp_server FUZZ_TIME=600`; docs/fuzzing.md.

The targets import nothing from atheris, so `make test` runs each over its seed corpus
(tests/proto/test_fuzz_targets.py) without it.
"""

TARGETS = ("smtp_server", "pop3_server", "smtp_grammar", "sasl", "address", "imap_server",
           "imap_service")
