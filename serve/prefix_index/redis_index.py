"""The shared prefix index in Redis: every router and engine of the cluster sees one index.

Each public call is one round trip (a Lua script or a short pipeline; see
``redis_scripts`` for the key layout), with bounded socket timeouts and no client retries,
so a call never takes much longer than ``socket_timeout_s``. When Redis is down, slow or
refusing, calls answer with the fallback (``{}``, ``None``, the batch dropped): routing
falls back to load and requests still succeed. The outage is logged once and so is the
recovery (``RedisHealth``); the client reconnects by itself, and the index refills from the
events the engines keep publishing (or at once from ``IndexPublisher.resync``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from serve.engine.block_hash import BLOCK_HASH_SIZE, BlockHash
from serve.engine.kv_events import HOST, AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from serve.prefix_index import redis_scripts
from serve.prefix_index.base import TierMatch
from serve.prefix_index.redis_health import RedisHealth

T = TypeVar("T")

DEFAULT_BLOCK_TTL_S = 3600
DEFAULT_SESSION_TTL_S = 600.0
# Blocks per script call: ~7-9 ms of Redis time (measured), far below the socket timeout, so a
# resync or clear of a whole cache never trips it nor stalls other clients for long.
MAX_BLOCKS_PER_CALL = 4096


def _op(event: KVEvent) -> bytes:
    """The script's op: store on the device, store on the host tier, remove."""
    if isinstance(event, BlockStored):
        return b"h" if event.tier == HOST else b"s"
    if isinstance(event, BlockRemoved):
        return b"r"
    raise TypeError(f"encode_events handles stored/removed events, not {event!r}")


def encode_events(events: Sequence[KVEvent], max_blocks: int) -> list[list[bytes | str | int]]:
    """``(op, blob)`` argument pairs for ``APPLY_EVENTS``, one list per script call.

    Everything before the batch's last ``AllBlocksCleared`` is moot (the clear wipes it),
    so callers pass only the events after it. Order is kept; an event larger than
    ``max_blocks`` is split. E.g. with ``max_blocks=3``, stored ``[a, b]`` then removed
    ``[c, d]`` give ``[[b"s", a + b, b"r", c], [b"r", d]]``; a store on the host tier is
    op ``b"h"``.
    """
    calls: list[list[bytes | str | int]] = []
    current: list[bytes | str | int] = []
    room = max_blocks
    for event in events:
        op = _op(event)
        hashes = event.block_hashes  # type: ignore[union-attr]
        start = 0
        while start < len(hashes):
            if room == 0:
                calls.append(current)
                current, room = [], max_blocks
            piece = hashes[start : start + room]
            blob = b"".join(piece)
            if len(blob) != BLOCK_HASH_SIZE * len(piece):  # the scripts split blobs by size
                raise ValueError(f"block keys must be {BLOCK_HASH_SIZE} bytes each")
            current += [op, blob]
            start += len(piece)
            room -= len(piece)
    if current:
        calls.append(current)
    return calls


@dataclass
class RedisPublisher:
    """``KVEventSink`` of one replica on a ``RedisPrefixIndex``."""

    index: RedisPrefixIndex
    replica_id: str

    def publish(self, events: Sequence[KVEvent]) -> None:
        self.index._publish(self.replica_id, events)

    def resync(self, stored: Sequence[BlockStored]) -> None:
        self.index._publish(self.replica_id, [AllBlocksCleared(), *stored])


def _endpoint(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}/{kwargs.get('db', 0)}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


class RedisPrefixIndex:
    """``PrefixIndex`` in a standalone Redis (see ``redis_scripts`` for the key layout).

    ``block_ttl_s`` bounds how long a block outlives its last store: it garbage-collects the
    entries of replicas that vanished without ``remove_replica`` and of BlockRemoved events
    lost in an outage. Blocks that stay cached longer than that need a periodic ``resync``.
    Redis's own ``maxmemory`` (with a ``volatile-*`` policy; every key here expires) caps
    memory. ``retry_interval_s`` is the back-off after a failure (see ``RedisHealth``).
    """

    def __init__(
        self,
        url: str,
        key_prefix: str = "mistral-serve",
        block_ttl_s: float = DEFAULT_BLOCK_TTL_S,
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
        socket_timeout_s: float = 0.2,
        connect_timeout_s: float | None = None,
        retry_interval_s: float = 1.0,
        max_blocks_per_call: int = MAX_BLOCKS_PER_CALL,
    ) -> None:
        self.key_prefix = key_prefix
        self.block_ttl_s = max(1, math.ceil(block_ttl_s))  # EXPIRE takes whole seconds
        self.session_ttl_s = session_ttl_s
        self.max_blocks_per_call = max_blocks_per_call
        # No client-side retries: redis-py's default retries would multiply the timeout. A
        # dropped connection is replaced when the pool hands it out next (it checks it).
        if connect_timeout_s is None:
            connect_timeout_s = socket_timeout_s
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.health = RedisHealth(_endpoint(self._client), retry_interval_s)
        self._block_prefix = f"{key_prefix}:b:".encode()
        self._match = self._client.register_script(redis_scripts.MATCH_PREFIX)
        self._apply = self._client.register_script(redis_scripts.APPLY_EVENTS)
        self._clear_chunk = self._client.register_script(redis_scripts.CLEAR_BLOCKS_CHUNK)
        self._drop_sessions = self._client.register_script(redis_scripts.DROP_SESSIONS)

    def _guarded(self, operation: str, call: Callable[[], T], fallback: T) -> T:
        """Run one Redis call, or answer ``fallback`` while Redis is failing."""
        if not self.health.should_try():
            return fallback
        try:
            result = call()
        except RedisError as error:  # connection, timeout, OOM, READONLY, ...: all advisory
            self.health.record_failure(operation, error)
            return fallback
        self.health.record_success()
        return result

    # ---- blocks --------------------------------------------------------------------------

    def publisher(self, replica_id: str) -> RedisPublisher:
        return RedisPublisher(self, replica_id)

    def _owned_key(self, replica_id: str) -> str:
        return f"{self.key_prefix}:rb:{replica_id}"

    def _publish(self, replica_id: str, events: Sequence[KVEvent]) -> None:
        if not events:
            return
        last_clear = -1
        for position, event in enumerate(events):
            if isinstance(event, AllBlocksCleared):
                last_clear = position
        calls = encode_events(events[last_clear + 1 :], self.max_blocks_per_call)

        def run() -> None:
            if last_clear >= 0:
                self._clear_blocks(replica_id)
            owned = self._owned_key(replica_id)
            head: list[bytes | str | int] = [
                replica_id, self.block_ttl_s, self._block_prefix, BLOCK_HASH_SIZE,
                redis_scripts.HOST_TAG,
            ]  # fmt: skip
            for ops in calls:  # one call (one round trip) unless the batch is huge
                self._apply(keys=[owned], args=head + ops)

        self._guarded("publish", run, None)

    def _clear_blocks(self, replica_id: str) -> None:
        owned = self._owned_key(replica_id)
        args: list[bytes | str | int] = [self._block_prefix, replica_id, self.max_blocks_per_call,
                                         redis_scripts.HOST_TAG]
        while self._clear_chunk(keys=[owned], args=args):
            pass

    def match_prefix(self, block_hashes: Sequence[BlockHash]) -> dict[str, int]:
        """Leading-block counts per replica (see ``serve.prefix_index.base`` for the rule)."""
        flat = self._match_flat("match_prefix", block_hashes)
        return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 3)}

    def match_prefix_tiers(self, block_hashes: Sequence[BlockHash]) -> dict[str, TierMatch]:
        """Leading-block counts per replica, with how many of them are on its host tier."""
        flat = self._match_flat("match_prefix_tiers", block_hashes)
        return {flat[i].decode(): TierMatch(int(flat[i + 1]), int(flat[i + 2]))
                for i in range(0, len(flat), 3)}

    def _match_flat(self, operation: str, block_hashes: Sequence[BlockHash]) -> list[Any]:
        if not block_hashes:
            return []
        blob = b"".join(block_hashes)
        if len(blob) != BLOCK_HASH_SIZE * len(block_hashes):
            raise ValueError(f"block keys must be {BLOCK_HASH_SIZE} bytes each")
        args: list[bytes | str | int] = [self._block_prefix, BLOCK_HASH_SIZE, blob,
                                         redis_scripts.HOST_TAG]
        flat: list[Any] = self._guarded(operation, lambda: self._match(args=args), [])
        return flat

    # ---- sessions ------------------------------------------------------------------------

    def _session_key(self, session_id: str) -> str:
        return f"{self.key_prefix}:s:{session_id}"

    def _replica_sessions_key(self, replica_id: str) -> str:
        return f"{self.key_prefix}:rs:{replica_id}"

    def get_session(self, session_id: str) -> str | None:
        key = self._session_key(session_id)
        value = self._guarded("get_session", lambda: self._client.get(key), None)
        return value.decode() if isinstance(value, bytes) else value

    def set_session(self, session_id: str, replica_id: str, ttl_s: float | None = None) -> None:
        ttl_ms = max(1, round(1000 * (self.session_ttl_s if ttl_s is None else ttl_s)))
        now = time.time()  # wall clock: zset scores are compared across processes
        sessions = self._replica_sessions_key(replica_id)

        def run() -> None:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(self._session_key(session_id), replica_id, px=ttl_ms)
            pipe.zadd(sessions, {session_id: now + ttl_ms / 1000})
            # Trim expired ids so the reverse index stays as small as the live sessions.
            pipe.zremrangebyscore(sessions, "-inf", now)
            pipe.pexpire(sessions, max(ttl_ms, round(1000 * self.session_ttl_s)))
            pipe.execute()

        self._guarded("set_session", run, None)

    # ---- lifecycle -----------------------------------------------------------------------

    def remove_replica(self, replica_id: str) -> None:
        def run() -> None:
            self._clear_blocks(replica_id)
            self._drop_sessions(
                keys=[self._replica_sessions_key(replica_id)],
                args=[self._session_key(""), replica_id],
            )

        self._guarded("remove_replica", run, None)

    def ping(self) -> bool:
        """True when Redis answers (readiness probes); counts as an index call for health."""
        return bool(self._guarded("ping", self._client.ping, False))

    def close(self) -> None:
        self._client.close()
