"""POP3 (RFC 1939) as a sans-I/O core: events.py (what crosses to the transport), server.py (the
state machine), stuffing.py (byte-stuffing and TOP's cut on streamed message bytes)."""
