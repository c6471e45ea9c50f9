"""The Redis PrefixIndex's own behaviour: one round trip per batch, huge batches split with
expiry, sharing between clients, and outages (killed, hung, absent) that fall back fast."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from serve.engine.kv_events import BlockRemoved, KVEvent
from serve.prefix_index import (
    PrefixIndex,
    open_prefix_index,
)
from tests.serve.conftest import RedisServer, RoundTrips, free_port, redis_index
from tests.serve.index_cases import LOGGER, conversation, messages, stored


def test_redis_publish_and_match_of_2048_blocks_take_one_round_trip(
    redis_server: RedisServer, round_trips: RoundTrips
) -> None:
    index = redis_index(redis_server)
    prompt = conversation(2048)  # a 32K-token prompt
    publisher = index.publisher("A")
    publisher.publish([stored(prompt[:1])])  # warm up: connect, load the scripts
    index.match_prefix(prompt[:1])
    index.publisher("B").publish([stored(prompt[:1000])])

    assert round_trips(lambda: publisher.publish([stored(prompt)])) == 1
    assert round_trips(lambda: index.match_prefix(prompt)) == 1
    assert index.match_prefix(prompt) == {"A": 2048, "B": 1000}
    assert round_trips(lambda: publisher.publish([BlockRemoved(prompt[1500:])])) == 1
    assert round_trips(lambda: index.set_session("s", "A")) == 1
    assert round_trips(lambda: index.get_session("s")) == 1
    assert index.match_prefix(prompt) == {"A": 1500, "B": 1000}
    index.close()


def test_redis_splits_huge_batches_and_sets_expiry(
    redis_server: RedisServer, round_trips: RoundTrips
) -> None:
    import redis

    index = redis_index(redis_server, max_blocks_per_call=1000, block_ttl_s=120)
    prompt = conversation(2500)
    publisher = index.publisher("A")
    publisher.publish([stored(prompt[:1])])
    assert round_trips(lambda: publisher.publish([stored(prompt)])) == 3
    assert index.match_prefix(prompt) == {"A": 2500}

    client = redis.Redis.from_url(redis_server.url)
    assert 0 < client.ttl(f"{index.key_prefix}:b:".encode() + prompt[-1]) <= 120
    assert 0 < client.ttl(f"{index.key_prefix}:rb:A") <= 120
    index.set_session("s", "A", ttl_s=30)
    assert 0 < client.pttl(f"{index.key_prefix}:s:s") <= 30_000

    # A clear of 2500 blocks runs as chunks of 1000, then the new blocks in one call.
    assert round_trips(lambda: publisher.resync([stored(prompt[:10])])) == 4
    assert index.match_prefix(prompt) == {"A": 10}
    assert client.scard(f"{index.key_prefix}:rb:A") == 10
    client.close()
    index.close()


def test_redis_event_encoding_keeps_order_and_splits_large_events() -> None:
    from serve.prefix_index.redis_index import encode_events

    a, b, c, d = (bytes([i]) * 16 for i in range(4))
    events: list[KVEvent] = [stored([a, b]), BlockRemoved([c, d])]
    assert encode_events(events, max_blocks=3) == [[b"s", a + b, b"r", c], [b"r", d]]
    assert encode_events(events, max_blocks=4096) == [[b"s", a + b, b"r", c + d]]
    with pytest.raises(ValueError, match="16 bytes"):
        encode_events([stored([b"short"])], max_blocks=4096)


def test_redis_is_shared_between_index_clients(redis_server: RedisServer) -> None:
    engine_side = redis_index(redis_server)
    router_side = open_prefix_index(redis_server.url, key_prefix=engine_side.key_prefix)
    prompt = conversation(5)
    engine_side.publisher("A").publish([stored(prompt)])
    engine_side.set_session("s", "A")
    assert router_side.match_prefix(prompt) == {"A": 5}
    assert router_side.get_session("s") == "A"
    engine_side.close()
    router_side.close()


def assert_falls_back_quickly(index: PrefixIndex, prompt: list[bytes]) -> None:
    calls: list[tuple[Callable[[], object], object]] = [
        (lambda: index.match_prefix(prompt), {}),
        (lambda: index.get_session("s"), None),
        (lambda: index.publisher("A").publish([stored(prompt)]), None),
        (lambda: index.set_session("s", "B"), None),
        (lambda: index.remove_replica("B"), None),
    ]
    for call, fallback in calls:
        start = time.monotonic()
        assert call() == fallback
        assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("outage", ["killed", "hung"])
def test_redis_outage_falls_back_logs_once_and_recovers(
    redis_server_restored: RedisServer, caplog: pytest.LogCaptureFixture, outage: str
) -> None:
    server = redis_server_restored
    caplog.set_level(logging.INFO, logger=LOGGER)
    index = redis_index(server)
    prompt = conversation(64)
    index.publisher("A").publish([stored(prompt)])
    index.set_session("s", "A")
    assert index.match_prefix(prompt) == {"A": 64}

    server.stop() if outage == "killed" else server.pause()
    for _ in range(20):
        assert_falls_back_quickly(index, prompt)
        time.sleep(0.03)  # past the 0.05 s back-off now and then: Redis is really retried
    assert index.health.num_failures > 1
    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 1 and "unavailable" in errors[0]
    assert messages(caplog, logging.INFO) == []

    if outage == "killed":
        server.start()  # empty: nothing was persisted
    else:
        server.resume()
    time.sleep(0.1)  # the back-off ends
    index.publisher("A").publish([stored(prompt)])  # the engine's next step refills it
    assert index.match_prefix(prompt) == {"A": 64}
    index.set_session("s", "B")
    assert index.get_session("s") == "B"
    recoveries = messages(caplog, logging.INFO)
    assert len(recoveries) == 1 and "reachable again" in recoveries[0]
    assert len(messages(caplog, logging.ERROR)) == 1
    index.close()


def test_redis_absent_from_the_start_still_answers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    index = open_prefix_index(f"redis://127.0.0.1:{free_port()}/0", retry_interval_s=0.05)
    for _ in range(5):
        assert_falls_back_quickly(index, conversation(4))
    assert len(messages(caplog, logging.ERROR)) == 1
    index.close()


