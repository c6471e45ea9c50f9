"""The background publisher: queued batches coalesced in order, and a bounded queue."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import pytest

from serve.engine.kv_events import BlockRemoved, BlockStored, KVEvent
from serve.prefix_index import (
    BackgroundPublisher,
    IndexPublisher,
    InProcessPrefixIndex,
    PrefixIndex,
)
from tests.serve.index_cases import LOGGER, conversation, messages, stored


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
