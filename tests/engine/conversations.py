"""Multi-turn conversations driven through an engine step by step, tiers checked each step."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from model.sampling_params import SamplingParams
from serve.engine.engine import LLMEngine
from tests.engine.tier_checks import assert_engine_idle, step_checked

_runs = itertools.count()


@dataclass
class Transcript:
    """What every turn of every conversation produced, in the order the turns ran."""

    token_ids: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    num_cached_tokens: list[int] = field(default_factory=list)
    num_prompt_tokens: list[int] = field(default_factory=list)

    def hit_rate(self, first_turn: int = 0) -> float:
        """Cached / prompt tokens over the turns from ``first_turn`` on (per conversation
        order), for reports."""
        cached = sum(self.num_cached_tokens[first_turn:])
        return cached / max(1, sum(self.num_prompt_tokens[first_turn:]))


def user_turns(num_conversations: int, num_turns: int, turn_len: int, seed: int = 0
               ) -> list[list[list[int]]]:
    """``[conversation][turn]``: the tokens each user message adds (distinct per message)."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randint(3, 32000, (turn_len,), generator=gen).tolist()
             for _ in range(num_turns)] for _ in range(num_conversations)]


def run_conversations(engine: LLMEngine, turns: list[list[list[int]]],
                      params: list[SamplingParams], salt: str | None = None,
                      salt_per_request: bool = False) -> Transcript:
    """Round-robin over the conversations, one turn each per round, each turn's prompt the
    whole history (earlier prompts and replies) plus the new message; the invariants of the
    tiers hold after every step. ``salt_per_request``: a fresh cache salt per request, so
    nothing is ever reused (the engine recomputes everything)."""
    histories: list[list[int]] = [[] for _ in turns]
    out = Transcript()
    run = next(_runs)
    for turn in range(len(turns[0])):
        for index, history in enumerate(histories):
            history += turns[index][turn]
            request_id = f"c{index}-t{turn}"
            request_salt = f"run-{run}-{request_id}" if salt_per_request else salt
            engine.add_request(request_id, list(history), params[index], request_salt)
            final = None
            while final is None:
                for output in step_checked(engine):
                    if output.finished:
                        final = output
            completion = final.outputs[0]
            assert completion.finish_reason == "length", final.error
            out.token_ids.append(completion.token_ids)
            out.logprobs.append([entry[token] for entry, token in
                                 zip(completion.logprobs or [], completion.token_ids,
                                     strict=True)])
            out.num_cached_tokens.append(final.num_cached_tokens)
            out.num_prompt_tokens.append(len(history))
            history += completion.token_ids
    assert_engine_idle(engine)
    return out


def greedy(num: int, max_tokens: int = 6) -> list[SamplingParams]:
    return [SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                           logprobs=0)] * num


def seeded(num: int, max_tokens: int = 6) -> list[SamplingParams]:
    return [SamplingParams(temperature=1.0, top_p=0.9, max_tokens=max_tokens, seed=100 + i,
                           ignore_eos=True, logprobs=0) for i in range(num)]
