"""IMAP4rev2/rev1 protocol pieces (sans-I/O): the command parser and what the server writes."""
