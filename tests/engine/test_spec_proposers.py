"""Draft proposers and the speculator's per-request policy, on hand-made token lists."""

from __future__ import annotations

from model.sampling_params import SamplingParams
from model.structured_output import StructuredOutputsParams
from serve.engine.block_manager import BlockManager
from serve.engine.request import Request
from serve.engine.spec_config import SpeculativeConfig
from serve.engine.spec_ngram import NgramProposer
from serve.engine.spec_suffix import SuffixProposer, SuffixTrie
from serve.engine.speculator import Speculator
from tests.engine.helpers import prefill, tokens


def request(token_ids: list[int], request_id: str = "r", **params: object) -> Request:
    return Request(request_id, token_ids, SamplingParams(**params), 100, None)


def test_ngram_proposes_what_followed_the_latest_longest_match() -> None:
    proposer = NgramProposer(min_n=2, max_n=3)
    r = request([5, 6, 7, 9, 5, 6, 7])
    assert proposer.propose(r, 3) == [9, 5, 6]
    r.append_token(9)  # the index grows with the request
    assert proposer.propose(r, 2) == [5, 6]
    # (1, 2) occurs twice; the later occurrence, followed by 4, wins.
    assert proposer.propose(request([1, 2, 3, 1, 2, 4, 8, 1, 2], "s"), 2) == [4, 8]
    assert proposer.propose(request([1, 2, 3, 4], "t"), 3) == []
    # Near the end, the proposal is what there is.
    assert proposer.propose(request([3, 4, 3, 4], "u"), 5) == [3, 4]


def test_suffix_trie_counts_substrings_and_removes_them() -> None:
    trie = SuffixTrie(max_depth=3)
    trie.add_sequence([1, 2, 1, 2, 3])
    node = trie.find([7, 1, 2], max_length=2)
    assert node is not None and node.count == 2 and set(node.children) == {1, 3}
    trie.add_sequence([1, 2, 1, 2, 3], sign=-1)
    assert trie.root.children == {}


def test_suffix_proposes_from_the_request_then_from_finished_outputs() -> None:
    proposer = SuffixProposer(max_depth=8, max_cached_requests=1, min_token_prob=0.1)
    r = request([1, 2, 3, 9, 1, 2])
    assert proposer.propose(r, 4) == [3, 9, 1, 2]
    finished = request([40, 41])
    for t in [50, 51, 52, 53]:
        finished.append_token(t)
    proposer.finish(finished)  # its output joins the global tree
    assert proposer.propose(request([60, 50, 51], "new"), 3) == [52, 53]
    other = request([70])
    other.append_token(80)
    other.append_token(81)
    proposer.finish(other)  # only one cached request: the first one's output is dropped
    assert proposer.propose(request([60, 50, 51], "late"), 3) == []


def test_speculator_adapts_the_draft_length_and_pauses_after_misses() -> None:
    config = SpeculativeConfig(num_speculative_tokens=4, disable_by_batch_size=3)
    speculator = Speculator(config)
    r = request([1, 2, 3, 4, 5] * 4)
    assert speculator.enabled_for_batch(2) and not speculator.enabled_for_batch(3)
    assert len(speculator.draft(r, 10)) == 4
    speculator.record(r, 4, 1)  # partial: one past the accepted count
    assert len(speculator.draft(r, 10)) == 2
    speculator.record(r, 2, 0)  # a miss: half as many, after a pause of one step
    assert speculator.draft(r, 10) == []
    assert len(speculator.draft(r, 10)) == 1
    speculator.record(r, 1, 0)  # a second miss in a row: a pause of two steps
    assert speculator.draft(r, 10) == [] and speculator.draft(r, 10) == []
    assert len(speculator.draft(r, 10)) == 1
    speculator.record(r, 1, 1)
    assert len(speculator.draft(r, 10)) == 2
    assert len(speculator.draft(r, 1)) == 1  # never past the room left
    assert (r.num_draft_tokens, r.num_accepted_draft_tokens) == (8, 2)
    assert speculator.counters.num_drafts == 4


def test_requests_that_cannot_take_drafts_step_aside() -> None:
    speculator = Speculator(SpeculativeConfig())
    text = [1, 2, 3, 1, 2, 3, 1, 2]
    assert speculator.draft(request(text, "a", num_speculative_tokens=0), 5) == []
    assert len(speculator.draft(request(text, "b", num_speculative_tokens=2), 5)) == 2
    # A grammar matcher would have to walk the drafts before they are verified.
    structured = request(text, "c", structured_outputs=StructuredOutputsParams(regex="[ab]+"))
    assert speculator.draft(structured, 5) == []


def test_trim_frees_the_blocks_of_rejected_drafts_and_keeps_cached_ones() -> None:
    """block_size 4: 9 tokens computed and one sampled, a step of 1 + 4 drafts holds 14 → 4
    blocks; one draft accepted leaves 11 tokens computed → 3 blocks; the 2 full blocks of
    known tokens were hashed at allocation, the draft blocks never."""
    m = BlockManager(num_blocks=8, block_size=4)
    prompt = tokens(100, 9)
    table = prefill(m, "r", prompt)
    assert table == [0, 1, 2]
    table = m.allocate_slots("r", prompt + [7], 9, 5, num_pending_tokens=4)
    assert table == [0, 1, 2, 3]
    assert m.num_cached_blocks == 2
    m.trim("r", 11)
    assert m.block_table("r") == [0, 1, 2]
    assert m.num_free_blocks == 5 and m.num_cached_blocks == 2
    m.trim("r", 11)  # idempotent
    assert m.block_table("r") == [0, 1, 2]
