"""mailhouse: a complete mail server."""

__version__ = "0.1.0"
