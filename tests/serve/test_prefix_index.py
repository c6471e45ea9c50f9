"""PrefixIndex: the same behaviour in-process and in a real Redis, plus Redis's round trips
and its outage handling (killed, hung, restarted on the same port)."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import pytest

from serve.engine.block_hash import hash_prompt_blocks
from serve.engine.block_manager import BlockManager
from serve.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from serve.prefix_index import (
    BackgroundPublisher,
    IndexPublisher,
    InProcessPrefixIndex,
    PrefixIndex,
    leading_block_counts,
    open_prefix_index,
)
from tests.serve.conftest import RedisServer, RoundTrips, free_port, redis_index

BLOCK_SIZE = 16
LOGGER = "serve.prefix_index"


def conversation(num_blocks: int, seed: int = 0) -> list[bytes]:
    """Chained keys of a prompt of ``num_blocks`` full blocks (plus a partial one)."""
    rng = random.Random(seed)
    tokens = [rng.randrange(32000) for _ in range(num_blocks * BLOCK_SIZE + 5)]
    return hash_prompt_blocks(tokens, BLOCK_SIZE)


def stored(hashes: list[bytes], parent: bytes | None = None) -> BlockStored:
    return BlockStored(list(hashes), parent, len(hashes) * BLOCK_SIZE)


# ---- behaviour shared by both implementations ----------------------------------------------


def test_longest_prefix_per_replica_over_a_conversation(index: PrefixIndex) -> None:
    # Turn 1 (4 blocks) was served by A; turn 2 extends it to 10 blocks and ran on B.
    turn2 = conversation(10)
    turn1 = turn2[:4]
    assert turn1 == conversation(10)[:4]  # chained keys: same tokens, same leading keys
    index.publisher("A").publish([stored(turn1)])
    index.publisher("B").publish([stored(turn2[:6]), stored(turn2[6:], parent=turn2[5])])

    assert index.match_prefix(turn2) == {"A": 4, "B": 10}
    assert index.match_prefix(turn1) == {"A": 4, "B": 4}
    assert index.match_prefix(turn2[:1]) == {"A": 1, "B": 1}
    turn3 = turn2 + conversation(3, seed=1)  # keys of new blocks nobody holds yet
    assert index.match_prefix(turn3) == {"A": 4, "B": 10}


def test_a_gap_stops_the_count(index: PrefixIndex) -> None:
    prompt = conversation(10)
    index.publisher("A").publish([stored(prompt), BlockRemoved([prompt[4]])])
    index.publisher("B").publish([stored(prompt[5:], parent=prompt[4])])  # no leading block
    index.publisher("C").publish([stored(prompt[:2]), stored(prompt[3:8], parent=prompt[2])])

    assert index.match_prefix(prompt) == {"A": 4, "C": 2}


def test_unknown_and_empty_prompts_match_nothing(index: PrefixIndex) -> None:
    index.publisher("A").publish([stored(conversation(4))])
    assert index.match_prefix(conversation(4, seed=7)) == {}
    assert index.match_prefix([]) == {}


def test_removed_blocks_shorten_the_prefix(index: PrefixIndex) -> None:
    prompt = conversation(8)
    publisher = index.publisher("A")
    publisher.publish([stored(prompt)])
    index.publisher("B").publish([stored(prompt[:3])])
    publisher.publish([BlockRemoved(prompt[6:])])  # the engine evicted the tail
    assert index.match_prefix(prompt) == {"A": 6, "B": 3}
    publisher.publish([BlockRemoved(prompt[:6])])
    assert index.match_prefix(prompt) == {"B": 3}
    publisher.publish([BlockRemoved(prompt[:1])])  # removing an absent block is a no-op
    assert index.match_prefix(prompt) == {"B": 3}


def test_events_apply_in_batch_order(index: PrefixIndex) -> None:
    prompt = conversation(4)
    publisher = index.publisher("A")
    publisher.publish([stored(prompt), BlockRemoved(prompt[2:]), stored(prompt[3:])])
    assert index.match_prefix(prompt) == {"A": 2}
    assert index.match_prefix(prompt[3:]) == {"A": 1}


def test_all_blocks_cleared_forgets_only_that_replica(index: PrefixIndex) -> None:
    first, second = conversation(5), conversation(3, seed=1)
    index.publisher("A").publish([stored(first), stored(second)])
    index.publisher("B").publish([stored(first[:2])])

    index.publisher("A").publish([AllBlocksCleared()])
    assert index.match_prefix(first) == {"B": 2}
    assert index.match_prefix(second) == {}

    # Within one batch the clear wipes what came before it, not what follows.
    index.publisher("A").publish([stored(first), AllBlocksCleared(), stored(second[:2])])
    assert index.match_prefix(first) == {"B": 2}
    assert index.match_prefix(second) == {"A": 2}


def test_resync_replaces_a_replicas_blocks(index: PrefixIndex) -> None:
    old, new = conversation(6), conversation(6, seed=1)
    publisher = index.publisher("A")
    publisher.publish([stored(old)])
    publisher.resync([stored(new[:3]), stored(new[3:5], parent=new[2])])
    assert index.match_prefix(old) == {}
    assert index.match_prefix(new) == {"A": 5}


def test_sessions_set_get_overwrite_and_expire(index: PrefixIndex) -> None:
    assert index.get_session("s1") is None
    index.set_session("s1", "A", ttl_s=60)
    index.set_session("s2", "B", ttl_s=0.2)
    assert index.get_session("s1") == "A"
    assert index.get_session("s2") == "B"
    index.set_session("s1", "C", ttl_s=60)  # the session moved
    assert index.get_session("s1") == "C"
    time.sleep(0.3)
    assert index.get_session("s2") is None
    assert index.get_session("s1") == "C"


def test_remove_replica_forgets_blocks_and_sessions(index: PrefixIndex) -> None:
    prompt = conversation(6)
    index.publisher("A").publish([stored(prompt)])
    index.publisher("B").publish([stored(prompt[:2])])
    index.set_session("pinned-to-A", "A", ttl_s=60)
    index.set_session("moved-to-B", "A", ttl_s=60)
    index.set_session("moved-to-B", "B", ttl_s=60)

    index.remove_replica("A")
    assert index.match_prefix(prompt) == {"B": 2}
    assert index.get_session("pinned-to-A") is None
    assert index.get_session("moved-to-B") == "B"
    index.remove_replica("never-seen")  # a no-op, not an error
    index.publisher("C").publish([stored(conversation(2, seed=9))])  # may reuse A's slot
    assert index.match_prefix(prompt) == {"B": 2}

    # A replica id that comes back (restarted) is indexed afresh.
    index.publisher("A").publish([stored(prompt[:3])])
    assert index.match_prefix(prompt) == {"A": 3, "B": 2}


def test_random_histories_match_the_reference_rule(index: PrefixIndex) -> None:
    rng = random.Random(1234)
    prompt = conversation(40)
    holders: list[set[str]] = [set() for _ in prompt]
    replicas = [f"r{i}" for i in range(5)]
    for _ in range(60):
        replica = rng.choice(replicas)
        start = rng.randrange(len(prompt))
        span = prompt[start : start + rng.randrange(1, 12)]
        if rng.random() < 0.65:
            index.publisher(replica).publish([stored(span)])
            for position in range(start, start + len(span)):
                holders[position].add(replica)
        else:
            index.publisher(replica).publish([BlockRemoved(span)])
            for position in range(start, start + len(span)):
                holders[position].discard(replica)
        assert index.match_prefix(prompt) == leading_block_counts(holders)


def test_index_follows_real_block_managers(index: PrefixIndex) -> None:
    """Engine and router agree: events of two real prefix caches (with evictions) keep the
    index equal to what each cache holds, keyed by the router's ``hash_prompt_blocks``."""
    block_size = 4
    managers = {name: BlockManager(num_blocks=16, block_size=block_size) for name in "AB"}
    rng = random.Random(7)
    chats: list[list[int]] = [[] for _ in range(5)]
    for turn in range(80):
        chat = chats[rng.randrange(len(chats))]
        if len(chat) > 40:
            chat.clear()  # a new conversation; the old blocks linger until evicted
        chat += [rng.randrange(1000) for _ in range(rng.randrange(3, 12))]
        replica = rng.choice("AB")
        manager = managers[replica]
        hit_ids, num_computed = manager.get_computed_blocks(f"t{turn}", chat)
        table = manager.allocate_slots(
            f"t{turn}", chat, num_computed, len(chat) - num_computed, hit_ids
        )
        assert table is not None
        manager.free(f"t{turn}")
        index.publisher(replica).publish(manager.drain_events())

        cached = {
            name: {block.block_hash for block in m.pool.blocks} for name, m in managers.items()
        }
        for other in chats:
            hashes = hash_prompt_blocks(other, block_size)
            holders = [{name for name in managers if key in cached[name]} for key in hashes]
            assert index.match_prefix(hashes) == leading_block_counts(holders)


def test_reference_rule_worked_example() -> None:
    holders = [{"A", "B"}, {"A", "B"}, {"B"}, {"A", "B"}]
    assert leading_block_counts(holders) == {"A": 2, "B": 4}
    assert leading_block_counts([set(), {"A"}]) == {}
    assert leading_block_counts([]) == {}


# ---- in-process specifics -------------------------------------------------------------------


def test_in_process_lru_cap_keeps_recently_used_blocks() -> None:
    index = InProcessPrefixIndex(max_blocks=8)
    hot, cold = conversation(4), conversation(4, seed=1)
    index.publisher("A").publish([stored(hot), stored(cold)])
    assert index.match_prefix(hot) == {"A": 4}  # touches hot: cold is now the oldest
    index.publisher("B").publish([stored(conversation(4, seed=2))])
    assert len(index) == 8
    assert index.match_prefix(hot) == {"A": 4}
    assert index.match_prefix(cold) == {}
    index.publisher("A").publish([AllBlocksCleared()])  # evicted keys left the reverse index
    assert len(index) == 4


def test_in_process_expired_sessions_are_swept() -> None:
    now = [0.0]
    index = InProcessPrefixIndex(clock=lambda: now[0])
    for i in range(5000):
        index.set_session(f"s{i}", "A", ttl_s=1.0)
        now[0] += 0.01  # about 100 sessions alive at any time
    assert len(index._sessions) < 2048
    assert index.get_session("s4999") == "A"
    assert index.get_session("s0") is None


def test_in_process_is_thread_safe() -> None:
    index = InProcessPrefixIndex(max_blocks=500)
    prompt = conversation(64)
    errors: list[Exception] = []

    def churn(replica: str) -> None:
        try:
            publisher = index.publisher(replica)
            for round_ in range(200):
                publisher.publish([stored(prompt[: 1 + round_ % 64])])
                counts = index.match_prefix(prompt)
                assert all(0 < count <= 64 for count in counts.values())
                publisher.publish([BlockRemoved(prompt[round_ % 64 :])])
                if round_ % 50 == 0:
                    index.remove_replica(replica)
        except Exception as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=churn, args=(f"r{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for replica in ("r0", "r1", "r2", "r3"):
        index.publisher(replica).publish([AllBlocksCleared()])
    assert len(index) == 0


def test_importing_the_package_stays_light() -> None:
    code = (
        "import sys, serve.prefix_index as p; p.InProcessPrefixIndex();"
        "heavy = {'redis', 'torch', 'ray', 'grpc'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- Redis specifics ------------------------------------------------------------------------


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


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


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


# ---- background publishing ------------------------------------------------------------------


class GatedSink:
    """Forwards to a real publisher once ``gate`` is open; records each batch it sends."""

    def __init__(self, sink: IndexPublisher) -> None:
        self.sink, self.replica_id = sink, sink.replica_id
        self.gate = threading.Event()
        self.batches: list[int] = []

    def publish(self, events: Sequence[KVEvent]) -> None:
        self.gate.wait(10)
        self.batches.append(len(events))
        self.sink.publish(events)

    def resync(self, stored: Sequence[BlockStored]) -> None:
        raise AssertionError("BackgroundPublisher sends resyncs through publish")


def test_background_publisher_coalesces_queued_batches_in_order(index: PrefixIndex) -> None:
    prompt = conversation(6)
    sink = GatedSink(index.publisher("A"))
    publisher = BackgroundPublisher(sink)
    publisher.publish([stored(prompt[:1])])  # the thread takes it and waits at the gate
    time.sleep(0.05)
    start = time.monotonic()
    publisher.publish([stored(prompt[1:3], parent=prompt[0])])
    publisher.publish([stored(prompt[3:], parent=prompt[2]), BlockRemoved(prompt[4:])])
    assert time.monotonic() - start < 0.05  # the engine's step did not wait for the index
    sink.gate.set()
    assert publisher.flush(timeout_s=5)
    assert sink.batches == [1, 3]
    assert index.match_prefix(prompt) == {"A": 4}

    publisher.resync([stored(prompt[:2])])
    publisher.close()
    assert index.match_prefix(prompt) == {"A": 2}
    publisher.publish([stored(prompt)])  # after close: dropped, not an error
    assert publisher.num_dropped_events == 1


def test_background_publisher_bounds_its_queue(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    index = InProcessPrefixIndex()
    sink = GatedSink(index.publisher("A"))
    publisher = BackgroundPublisher(sink, max_pending_events=2)
    prompt = conversation(8)
    publisher.publish([stored(prompt[:1])])
    time.sleep(0.05)
    for position in range(1, 8):
        publisher.publish([stored(prompt[position : position + 1], parent=prompt[position - 1])])
    assert publisher.num_dropped_events == 5
    assert len(messages(caplog, logging.WARNING)) == 1
    sink.gate.set()
    assert publisher.flush(timeout_s=5)
    assert index.match_prefix(prompt) == {"A": 3}
    publisher.close()
