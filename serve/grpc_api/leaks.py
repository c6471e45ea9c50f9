"""What no client-visible message may hold: a traceback, a file path, a pid, an address, an
actor id, a memory address or a class repr/name. The server's statuses come from one table
(serve/errors.py); the load generator counts the messages that match (serve/client/).
It is part of the contract both sides share, beside the stubs; plain ``re``."""

from __future__ import annotations

import re

LEAK_PATTERN = re.compile(
    r"Traceback|File \"|\.py\b|site-packages|pid=|\bip=|actor_id|\bactor [0-9a-f]{8,}"
    r"|0x[0-9a-fA-F]{6,}|\b\d{1,3}(\.\d{1,3}){3}\b|<class|\b[A-Z][A-Za-z]+(Error|Exception)\b")
