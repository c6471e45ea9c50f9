"""Turns a :class:`StepInput` into tensors, runs the network, and samples on the driver rank.

Every tensor-parallel rank runs the same ``execute`` on the same step; all of them compute
logits (the LM head's gather is a collective), and only rank 0 samples. Per-request sampling
state (parameters, seeded generator, generated tokens for the penalties) lives here, so the
engine sends a request's parameters once. A request with structured output also keeps its
grammar matcher here, on the driver rank: it fills the request's bitmask row before each
sample and takes each sampled token, in order, also when the engine chains steps ahead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from model.attention.metadata import AttentionMetadata
from model.cuda_graph import CudaGraphOptions, DecodeGraphRunner
from model.kv_host_tier import HostKVTier, LayerWaits
from model.mistral import MistralForCausalLM
from model.sampler import Sampler, SamplingBatch, make_generator
from model.sampling_params import SamplingParams
from model.spec_verify import Rows, accepted_tokens, draw_state, replay_draws
from model.step import NewRequest, SampledToken, StepInput, StepOutput

if TYPE_CHECKING:  # model.grammar imports xgrammar: only on the first request with a format
    from model.grammar import RequestGrammar


@dataclass
class RequestState:
    prompt_token_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    output_token_ids: list[int] = field(default_factory=list)
    grammar: RequestGrammar | None = None  # structured output, on the driver rank


@dataclass
class StepTensors:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_indices: torch.Tensor
    sampled_request_ids: list[str]


def build_step_tensors(step: StepInput, block_size: int, sliding_window: int | None,
                       device: torch.device) -> StepTensors:
    """Pack the step's sequences along one token axis.

    Example (block_size 4): a sequence with 5 tokens computed, block table [3, 8], and 2 new
    tokens → positions [5, 6], slots [8*4+1, 8*4+2] = [33, 34], seq_len 7. Had the second
    token been a draft, both positions would be logits rows (``sampled_request_ids`` names
    the request once per row).
    """
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_lens: list[int] = []
    seq_lens: list[int] = []
    logits_indices: list[int] = []
    sampled: list[str] = []
    for seq in step.sequences:
        start = seq.num_computed_tokens
        end = start + len(seq.token_ids)
        if len(seq.block_table) * block_size < end:
            raise ValueError(f"request {seq.request_id}: block table of {len(seq.block_table)} "
                             f"blocks cannot hold {end} tokens")
        input_ids.extend(seq.token_ids)
        positions.extend(range(start, end))
        table = seq.block_table
        slots.extend(table[p // block_size] * block_size + p % block_size
                     for p in range(start, end))
        query_lens.append(len(seq.token_ids))
        seq_lens.append(end)
        if seq.sample:
            # A sequence with drafts is scored at its last known token and at every draft.
            num_rows = seq.num_draft_tokens + 1
            logits_indices.extend(range(len(input_ids) - num_rows, len(input_ids)))
            sampled.extend([seq.request_id] * num_rows)
    max_blocks = max((len(seq.block_table) for seq in step.sequences), default=0)
    tables = [seq.block_table + [0] * (max_blocks - len(seq.block_table))
              for seq in step.sequences]
    query_start = [0]
    for n in query_lens:
        query_start.append(query_start[-1] + n)

    def as_tensor(values: list[int] | list[list[int]], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    meta = AttentionMetadata(
        query_start_loc=as_tensor(query_start, torch.int32),
        seq_lens=as_tensor(seq_lens, torch.int32),
        block_tables=as_tensor(tables, torch.int32),
        slot_mapping=as_tensor(slots, torch.int64),
        query_lens_host=query_lens,
        seq_lens_host=seq_lens,
        block_size=block_size,
        sliding_window=sliding_window,
    )
    return StepTensors(as_tensor(input_ids, torch.int64), as_tensor(positions, torch.int64),
                       meta, as_tensor(logits_indices, torch.int64), sampled)


class ModelRunner:
    """``cuda_graphs``: replay decode-only steps from CUDA graphs where the device and the
    attention backend allow it (None: always eager). Graphs are captured here, at start.
    ``host_tier``: where the step's ``copies`` move evicted and restored blocks (None: the
    engine sends none)."""

    def __init__(self, model: MistralForCausalLM, kv_caches: list[torch.Tensor],
                 block_size: int, device: torch.device,
                 cuda_graphs: CudaGraphOptions | None = None, step_delay_s: float = 0.0,
                 host_tier: HostKVTier | None = None, tokenizer: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer  # path or preset: grammars are compiled against it
        self.step_delay_s = step_delay_s  # fault injection only (model/envs.py)
        self.kv_caches = kv_caches
        self.host_tier = host_tier
        self.block_size = block_size
        self.device = device
        self.sampler = Sampler(reuse_logits=True)  # the logits are this step's, used once
        self.requests: dict[str, RequestState] = {}
        self.decode_graphs = DecodeGraphRunner.create(model, kv_caches, block_size, device,
                                                      cuda_graphs)

    @property
    def num_blocks(self) -> int:
        return self.kv_caches[0].shape[1] if self.kv_caches else 0

    @property
    def num_host_blocks(self) -> int:
        return self.host_tier.num_blocks if self.host_tier is not None else 0

    def copy_blocks(self, step: StepInput) -> list[torch.Tensor]:
        """Run the step's block copies; returns the caches its forward must read."""
        if not step.copies:
            return self.kv_caches
        if self.host_tier is None:
            raise RuntimeError("the step moves KV blocks to or from the host tier, but this "
                               "runner has none (kv_host_memory is unset)")
        return self.host_tier.copy(step.copies, self.kv_caches)

    def _update_requests(self, new: list[NewRequest], finished: list[str]) -> None:
        for request_id in finished:
            self.requests.pop(request_id, None)
        for request in new:
            self.requests[request.request_id] = RequestState(
                request.prompt_token_ids, request.sampling_params,
                make_generator(request.sampling_params.seed, self.device),
                grammar=self._grammar(request.sampling_params))

    def _grammar(self, params: SamplingParams) -> RequestGrammar | None:
        spec = params.structured_outputs
        if spec is None or not self.model.ctx.is_driver:
            return None
        from model.grammar import grammar_compiler
        from model.tokenizer import load_model_tokenizer

        source = self.tokenizer
        if source is None:
            raise RuntimeError("a request asks for structured output, but this runner has no "
                               "tokenizer to compile it with (build it with build_runner)")
        compiler = grammar_compiler(source, self.model.config.vocab_size,
                                    lambda: load_model_tokenizer(source))
        return compiler.matcher(spec, params.stop_token_ids or [])

    @torch.inference_mode()
    def compute_logits(self, step: StepInput, kv_caches: list[torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, list[str]]:
        """Logits [num_rows, vocab] (float32) for the sequences that sample this step, and
        the request of each row (one row per sequence, k + 1 for a sequence with k drafts).
        ``kv_caches``: what ``copy_blocks`` returned for the step, if it moved blocks."""
        graphs = self.decode_graphs
        size = graphs.padded_size(step) if graphs is not None else None
        if graphs is not None and size is not None:
            if isinstance(kv_caches, LayerWaits):
                kv_caches.wait_all()  # the graph reads the caches it captured, all at once
            hidden, request_ids = graphs.run(step, size)
            return self.model.compute_logits(hidden), request_ids
        tensors = build_step_tensors(step, self.block_size, self.model.config.sliding_window,
                                     self.device)
        caches = self.kv_caches if kv_caches is None else kv_caches
        hidden = self.model(tensors.input_ids, tensors.positions, caches, tensors.meta)
        return self.model.compute_logits(hidden[tensors.logits_indices]), \
            tensors.sampled_request_ids

    @torch.inference_mode()
    def execute(self, step: StepInput) -> StepOutput | None:
        """Run one step; returns sampled tokens on the driver rank, None on the others."""
        self._update_requests(step.new_requests, step.finished_request_ids)
        # Before anything else: the copies read blocks that this step's forward overwrites.
        caches = self.copy_blocks(step)
        if self.step_delay_s and step.sequences:
            time.sleep(self.step_delay_s)  # sleeps without the GIL, like a device wait
        if not step.sequences:
            return StepOutput([])
        logits, request_ids = self.compute_logits(step, caches)
        if not self.model.ctx.is_driver:
            return None
        if not request_ids:
            return StepOutput([])
        drafts = {seq.request_id: seq.token_ids[len(seq.token_ids) - seq.num_draft_tokens:]
                  for seq in step.sequences if seq.sample and seq.num_draft_tokens}
        rows = self._rows(request_ids, drafts)
        states = [self.requests[row.request_id] for row in rows]
        batch = self._sampling_batch(rows, states)
        saved = [draw_state(s.generator) if row.drafts and not s.params.is_greedy else None
                 for row, s in zip(rows, states, strict=True)]
        result = self.sampler(logits, batch)
        sampled = []
        for row, state, draws in zip(rows, states, saved, strict=True):
            first = row.first_row
            emitted = accepted_tokens(result.token_ids[first:first + len(row.drafts) + 1],
                                      row.drafts)
            if draws is not None:
                replay_draws(state.generator, draws, len(emitted), logits.shape[-1])
            for offset, token in enumerate(emitted):
                index = first + offset
                state.output_token_ids.append(token)
                if state.grammar is not None:
                    state.grammar.accept(token)
                sampled.append(SampledToken(
                    row.request_id, token,
                    result.logprobs[index] if result.logprobs is not None else None,
                    result.top_logprobs[index] if result.top_logprobs is not None else None,
                ))
        return StepOutput(sampled)

    @staticmethod
    def _rows(request_ids: list[str], drafts: dict[str, list[int]]) -> list[Rows]:
        rows = []
        index = 0
        while index < len(request_ids):
            request_id = request_ids[index]
            row = Rows(request_id, index, drafts.get(request_id, []))
            rows.append(row)
            index += len(row.drafts) + 1
        return rows

    def _sampling_batch(self, rows: list[Rows], states: list[RequestState]) -> SamplingBatch:
        """One sampling row per logits row: row i of a sequence with drafts has the drafts
        before it in its output history (penalties, min_tokens and bad words see them)."""
        if all(not row.drafts for row in rows):
            params = [s.params for s in states]
            prompts = [s.prompt_token_ids for s in states]
            outputs = [s.output_token_ids for s in states]
            generators = [s.generator for s in states]
            grammars = [s.grammar for s in states]
        else:
            params, prompts, outputs, generators, grammars = [], [], [], [], []
            for row, state in zip(rows, states, strict=True):
                if row.drafts and state.grammar is not None:
                    raise ValueError(f"request {row.request_id}: drafts with structured "
                                     "output (the engine sends none)")
                for i in range(len(row.drafts) + 1):
                    params.append(state.params)
                    prompts.append(state.prompt_token_ids)
                    outputs.append(state.output_token_ids + row.drafts[:i] if i
                                   else state.output_token_ids)
                    generators.append(state.generator)
                    grammars.append(state.grammar)
        return SamplingBatch(
            params=params, prompt_token_ids=prompts, output_token_ids=outputs,
            generators=generators, eos_token_id=self.model.config.eos_token_id,
            grammars=grammars if any(g is not None for g in grammars) else None)
