"""Outage bookkeeping for the Redis prefix index: log once, back off, log the recovery once.

A router makes several index calls per request; while Redis is down every one of them would
fail. Logging each failure would flood the logs, and retrying each one would make every
request pay a connect timeout when Redis is unreachable rather than refusing. So the first
failure is logged, calls are skipped (answered with the fallback) for ``retry_interval_s``,
then one call probes Redis again; the first success after an outage logs the recovery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger("serve.prefix_index")


@dataclass
class RedisHealth:
    """Up/down state of one Redis endpoint, shared by every call of one index."""

    endpoint: str  # host:port/db for the logs; never the URL, which may carry a password
    retry_interval_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    down_since: float | None = None
    num_failures: int = 0  # failed attempts in the current outage, reported at recovery
    _retry_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def should_try(self) -> bool:
        """False while backing off after a failure: answer with the fallback right away."""
        # Racy read on purpose: at worst two threads probe at once after the back-off.
        return self.down_since is None or self.clock() >= self._retry_at

    def record_failure(self, operation: str, error: BaseException) -> None:
        with self._lock:
            now = self.clock()
            self._retry_at = now + self.retry_interval_s
            self.num_failures += 1
            if self.down_since is not None:
                return
            self.down_since = now
        logger.error(
            "prefix index: Redis at %s is unavailable (%s failed: %s: %s); routing falls back "
            "to load and KV events are dropped until it recovers; retrying every %.1f s",
            self.endpoint,
            operation,
            type(error).__name__,
            error,
            self.retry_interval_s,
        )

    def record_success(self) -> None:
        if self.down_since is None:  # the common case: no lock on the hot path
            return
        with self._lock:
            if self.down_since is None:
                return
            downtime = self.clock() - self.down_since
            num_failures = self.num_failures
            self.down_since = None
            self.num_failures = 0
        logger.info(
            "prefix index: Redis at %s is reachable again after %.1f s (%d attempts failed); "
            "the index refills from new KV events",
            self.endpoint,
            downtime,
            num_failures,
        )
