"""The one module of the `model` package that reads environment variables.

Everything else takes these values as arguments, so tests and callers can pass them
explicitly and only this file knows the variable names.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CACHE_DIR_ENV = "MISTRAL_SERVE_CACHE_DIR"
# Fault injection for the chaos tests: every model step sleeps this long first, so a step
# outlasts the service's internal timeouts without a slow device. Unset in production.
FAULT_STEP_DELAY_ENV = "MISTRAL_SERVE_FAULT_STEP_DELAY_S"


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


def c_compiler() -> str | None:
    """The C compiler for the CPU attention kernel: `$CC`, else `cc` or `gcc` on the PATH."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def fault_step_delay_s() -> float:
    """Seconds each model step is delayed (0 unless a fault-injection test asks)."""
    value = os.environ.get(FAULT_STEP_DELAY_ENV, "")
    return float(value) if value else 0.0
