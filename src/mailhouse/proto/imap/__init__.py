"""IMAP4rev2/rev1 protocol pieces (sans-I/O).

parser.CommandParser turns received octets into events (events.py) carrying typed commands
(commands.py; search.py, fetch.py, sequence.py for their parts); grammar.py, lexer.py and
values.py are the grammar; mailbox.py and mutf7.py decode and check mailbox names; responses.py
encodes what the server writes. Limits: config.ParserConfig. Decisions: docs/decisions.md.
"""
