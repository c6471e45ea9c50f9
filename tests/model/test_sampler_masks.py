"""Logit masks in the batched sampler, on constructed logits: logit_bias, allowed_token_ids,
bad_words and a grammar bitmask, alone and combined with top-k/top-p/min-p/penalties."""

from __future__ import annotations

import math

import pytest
import torch

from model.logit_masks import banned_by_bad_words, needs_masks, unpack_bitmask
from model.sampler import Sampler, SamplingBatch, make_generator
from model.sampling_params import SamplingParams

VOCAB = 64
EOS = 2


class AllowedIds:
    """A grammar state that allows a fixed set of tokens: the sampler's side of the
    interface, without a grammar library (tests/engine/test_structured_output.py has those)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        bitmask[row] = 0
        for token_id in self.ids:
            word, bit = divmod(token_id, 32)
            bitmask[row, word] |= (1 << bit) - (1 << 32 if bit == 31 else 0)


def batch(params: list[SamplingParams], outputs: list[list[int]] | None = None,
          grammars: list[AllowedIds | None] | None = None) -> SamplingBatch:
    return SamplingBatch(params=params, prompt_token_ids=[[1, 5] for _ in params],
                         output_token_ids=outputs or [[] for _ in params],
                         generators=[make_generator(p.seed) for p in params],
                         eos_token_id=EOS, grammars=grammars)  # type: ignore[arg-type]


def ramp(rows: int = 1) -> torch.Tensor:
    """Logits 0, 0.1, ..., so the argmax is the last token and every token is distinct."""
    return torch.arange(VOCAB, dtype=torch.float32).mul(0.1).repeat(rows, 1)


def draws(logits_row: torch.Tensor, params: SamplingParams, num: int = 2000,
          grammar: AllowedIds | None = None) -> set[int]:
    logits = logits_row.repeat(num, 1)
    out = Sampler()(logits, batch([params] * num, grammars=[grammar] * num if grammar else None))
    return set(out.token_ids)


def test_logit_bias_is_added_before_greedy_and_leaves_other_rows() -> None:
    logits = ramp(3)
    before = logits.clone()
    params = [SamplingParams(temperature=0, logit_bias={7: 10.0}),
              SamplingParams(temperature=0, logit_bias={"63": -100}),  # OpenAI's string keys
              SamplingParams(temperature=0)]
    out = Sampler()(logits, batch(params))
    assert out.token_ids == [7, 62, 63]
    assert torch.equal(logits, before)


def test_logit_bias_of_100_wins_any_sampling() -> None:
    row = torch.randn(VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    params = SamplingParams(temperature=1.5, top_p=0.9, top_k=5, logit_bias={11: 100},
                            seed=1)
    assert draws(row, params) == {11}


def test_allowed_token_ids_before_top_k_and_top_p() -> None:
    row = ramp()[0]
    # Masked first, top_k=1 keeps the best *allowed* token, not the global argmax (63).
    assert draws(row, SamplingParams(top_k=1, allowed_token_ids=[3, 9, 20])) == {20}
    # Over the allowed tokens the probabilities are 0.5, 0.3, 0.2: top_p=0.5 keeps one.
    row = torch.full((VOCAB,), -5.0)
    row[0] = 50.0  # the model's favourite, not allowed
    for token_id, p in ((4, 0.5), (5, 0.3), (6, 0.2)):
        row[token_id] = math.log(p)
    assert draws(row, SamplingParams(top_p=0.5, allowed_token_ids=[4, 5, 6])) == {4}
    assert draws(row, SamplingParams(allowed_token_ids=[4, 5, 6])) == {4, 5, 6}
    assert draws(row, SamplingParams(min_p=0.5, allowed_token_ids=[4, 5, 6])) == {4, 5}


def test_allowed_token_ids_with_penalties() -> None:
    logits = ramp()
    # Repetition penalty pushes the seen (and best allowed) token 40 under token 30.
    logits[0, 40], logits[0, 30] = 4.0, 3.0
    params = SamplingParams(temperature=0, allowed_token_ids=[30, 40], repetition_penalty=2.0)
    out = Sampler()(logits, batch([params], outputs=[[40]]))
    assert out.token_ids == [30]
    params = SamplingParams(temperature=0, allowed_token_ids=[30, 40], frequency_penalty=2.0)
    assert Sampler()(logits, batch([params], outputs=[[40]])).token_ids == [30]


def test_bad_words_rule() -> None:
    words = [[7], [3, 4, 5]]
    assert banned_by_bad_words(words, []) == [7]
    assert banned_by_bad_words(words, [9, 3, 4]) == [7, 5]
    assert banned_by_bad_words(words, [9, 4]) == [7]
    assert banned_by_bad_words(words, [3, 4, 9]) == [7]


def test_bad_words_mask_one_token_words_always_and_longer_ones_after_their_prefix() -> None:
    logits = ramp(3)
    logits[:, 50] = 100.0  # the favourite of every row
    params = SamplingParams(temperature=0, bad_words_token_ids=[[50]])
    two = SamplingParams(temperature=0, bad_words_token_ids=[[12, 50]])
    out = Sampler()(logits, batch([params, two, two], outputs=[[], [12], [13]]))
    assert out.token_ids == [63, 63, 50]


def test_grammar_bitmask_combines_with_the_other_masks() -> None:
    row = ramp()[0]
    grammar = AllowedIds([10, 20, 31, 40])  # 31: the sign bit of word 0
    assert draws(row, SamplingParams(temperature=0), grammar=grammar) == {40}
    assert draws(row, SamplingParams(), grammar=grammar) == {10, 20, 31, 40}
    both = SamplingParams(allowed_token_ids=[10, 31, 50])
    assert draws(row, both, grammar=grammar) == {10, 31}
    params = SamplingParams(bad_words_token_ids=[[31]], top_k=1, presence_penalty=1.0)
    assert draws(row, params, grammar=grammar) == {40}


def test_a_row_with_nothing_allowed_gets_eos() -> None:
    logits = ramp(2)
    params = [SamplingParams(temperature=0.8, allowed_token_ids=[9], bad_words_token_ids=[[9]]),
              SamplingParams(temperature=0)]
    out = Sampler()(logits, batch(params, grammars=[AllowedIds([30]), None]))
    assert out.token_ids == [EOS, 63]


def test_min_tokens_still_masks_eos_among_allowed_tokens() -> None:
    logits = ramp()
    logits[0, EOS] = 100.0
    params = SamplingParams(temperature=0, min_tokens=2, allowed_token_ids=[EOS, 8])
    assert Sampler()(logits, batch([params], outputs=[[8]])).token_ids == [8]
    assert Sampler()(logits, batch([params], outputs=[[8, 8]])).token_ids == [EOS]


def test_logprobs_stay_the_models() -> None:
    logits = ramp()
    params = SamplingParams(temperature=0, logprobs=1, allowed_token_ids=[5])
    out = Sampler()(logits, batch([params]))
    assert out.token_ids == [5]
    assert out.logprobs == pytest.approx([torch.log_softmax(logits[0], -1)[5].item()])


def test_masked_rows_do_not_change_the_other_rows_draws() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(4, VOCAB, generator=gen)
    plain = [SamplingParams(seed=s, top_p=0.9) for s in (1, 2)]
    alone = Sampler()(logits[:2].clone(), batch(plain)).token_ids
    masked = [SamplingParams(seed=3, logit_bias={1: 5.0}), SamplingParams(seed=4, top_k=3)]
    mixed = Sampler()(logits.clone(), batch(plain + masked,
                                            grammars=[None, None, None, AllowedIds([7, 8])]))
    assert mixed.token_ids[:2] == alone
    assert mixed.token_ids[3] in (7, 8)


def test_requests_without_masks_skip_them() -> None:
    params = [SamplingParams(), SamplingParams(temperature=0, top_k=4)]
    assert not needs_masks(params, None)
    assert needs_masks(params + [SamplingParams(logit_bias={1: 1.0})], None)
    assert needs_masks(params, [None, AllowedIds([1])])


def test_unpack_bitmask() -> None:
    words = torch.tensor([[0b101, -(2**31)]], dtype=torch.int32)
    allowed = unpack_bitmask(words, 70)
    assert allowed.shape == (1, 70)
    assert allowed[0].nonzero().flatten().tolist() == [0, 2, 63]
    assert unpack_bitmask(words, 3)[0].tolist() == [True, False, True]


@pytest.mark.parametrize("fields, message", [
    ({"logit_bias": {1: 101}}, "[-100, 100]"),
    ({"logit_bias": {"x": 1}}, "token ids"),
    ({"logit_bias": [1]}, "map token ids"),
    ({"allowed_token_ids": []}, "must not be empty"),
    ({"allowed_token_ids": [-1]}, "ints >= 0"),
    ({"bad_words": "word"}, "list of strings"),
    ({"bad_words": [" "]}, "non-blank"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "exactly one"),
    ({"structured_outputs": {}}, "exactly one"),
    ({"structured_outputs": {"json": "{not json"}}, "not valid JSON"),
    ({"structured_outputs": {"json": [1]}}, "must be an object"),
    ({"structured_outputs": {"choice": []}}, "at least one"),
    ({"structured_outputs": {"rgx": "a"}}, "unknown fields"),
    ({"structured_outputs": {"regex": "a"}, "ignore_eos": True}, "drop ignore_eos"),
    ({"structured_outputs": {"regex": "a"}, "min_tokens": 1}, "drop min_tokens"),
])
def test_bad_values_say_what_to_change(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SamplingParams(**fields)


def test_values_are_normalized() -> None:
    params = SamplingParams(logit_bias={"5": 1}, allowed_token_ids=[9, 3, 9],
                            structured_outputs={"json": '{"type": "object"}'})
    assert params.logit_bias == {5: 1.0}
    assert params.allowed_token_ids == [3, 9]
    assert params.structured_outputs is not None
    assert params.structured_outputs.json == '{"type":"object"}'
    assert params.structured_outputs.key == ("json", '{"type":"object"}', True)
    assert params.has_logit_masks
    assert not SamplingParams(logit_bias={}).has_logit_masks


def test_masks_in_place_on_handed_over_logits_draw_the_same() -> None:
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(4, VOCAB, generator=gen)
    params = [SamplingParams(seed=1), SamplingParams(seed=2, logit_bias={3: 4.0}),
              SamplingParams(seed=3, allowed_token_ids=[5, 6, 7]), SamplingParams(seed=4)]
    grammars = [None, None, None, AllowedIds([6, 7, 8])]
    before = logits.clone()
    kept = Sampler()(logits, batch(params, grammars=grammars)).token_ids
    assert torch.equal(logits, before)  # the default sampler leaves its input alone
    handed = Sampler(reuse_logits=True)(logits, batch(params, grammars=grammars)).token_ids
    assert handed == kept
    assert kept[2] in (5, 6, 7) and kept[3] in (6, 7, 8)
