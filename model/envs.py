"""The one module of the `model` package that reads environment variables.

Everything else takes these values as arguments, so tests and callers can pass them
explicitly and only this file knows the variable names.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "MISTRAL_SERVE_CACHE_DIR"


def cache_dir() -> Path:
    """Where downloaded and converted checkpoints live.

    `$MISTRAL_SERVE_CACHE_DIR`, else `$XDG_CACHE_HOME/mistral-serve`, else
    `~/.cache/mistral-serve`. An empty variable counts as unset, as the XDG spec asks.
    """
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mistral-serve"
