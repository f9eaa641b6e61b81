"""The IMAP service (issue 8): what a logged-in IMAP session does with the store.

`ImapMailService` (service.py) logs users in through the shared LoginGuard and hands each
session an `ImapSession` (session.py), which performs the mailbox commands the core
(proto/imap/server.py) passes on as `Request`s, through the seam in service/imap_api.py.
"""

from mailhouse.service.imap.service import ImapMailService
from mailhouse.service.imap.settings import (
    CAPABILITIES,
    ENABLEABLE,
    ImapSettings,
    capabilities,
)

__all__ = ["CAPABILITIES", "ENABLEABLE", "ImapMailService", "ImapSettings", "capabilities"]
