"""Decode steps captured once as CUDA graphs and replayed.

A decode step launches hundreds of small kernels (per layer: norms, rotary, attention, four
matmuls, the all-reduces); at small batch sizes the GPU idles while the CPU launches them.
Replaying a captured graph costs one launch. A graph replays fixed addresses and shapes, so
each step's values are copied into static buffers and the batch is padded up to the next
captured size:

    captured sizes [1, 2, 4, 8, 16], a decode step of 5 sequences → the 8-row graph; rows
    5..7 are padding: token 0 at position 0, seq_len 0 and slot -1, so the backend writes no
    K/V for them, and their hidden states are dropped.

Only decode-only steps (one new token per sequence) are replayed: prefill and mixed steps
vary too much in token count to pad and run eagerly. Sampling stays outside the graph, and
so does the LM head (it runs on the sampled rows only).
"""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass

import torch

from model.attention.metadata import AttentionMetadata
from model.mistral import MistralForCausalLM
from model.step import StepInput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CudaGraphOptions:
    """``capture=False`` runs the very same padded static-buffer path without graphs: how
    tests on machines without a GPU check it against the eager path."""

    enabled: bool = True
    max_batch_size: int = 256
    capture: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")


def capture_sizes(max_batch_size: int) -> list[int]:
    """Padded batch sizes, ascending: 1, 2, 4, then steps of 8 to 32, of 16 to 128 and of 32
    beyond, capped by ``max_batch_size``, which is always included so that every batch up to
    it has a size. Padding wastes at most a few rows while the graph count stays small.

    Example: 40 → [1, 2, 4, 8, 16, 24, 32, 40]; 100 → [1, 2, 4, 8, 16, 24, 32, 48, 64, 80,
    96, 100].
    """
    sizes = [1, 2, 4]
    size = 8
    while size < max_batch_size:
        sizes.append(size)
        size += 8 if size < 32 else 16 if size < 128 else 32
    return [s for s in sizes if s < max_batch_size] + [max_batch_size]


def padded_batch_size(num_seqs: int, sizes: list[int]) -> int | None:
    """The smallest captured size holding ``num_seqs`` rows; None when none does."""
    index = bisect.bisect_left(sizes, num_seqs)
    return sizes[index] if index < len(sizes) else None


def unavailable_reason(options: CudaGraphOptions, device: torch.device,
                       supports_static_shapes: bool, backend_name: str) -> str | None:
    """Why decode graphs are off for this runner, or None when they are on."""
    if not options.enabled:
        return "disabled (cuda_graphs=False)"
    if options.capture and device.type != "cuda":
        return f"the device is {device.type}, not CUDA"
    if not supports_static_shapes:
        return (f"attention backend {backend_name!r} cannot run padded static-shape batches; "
                "use 'triton' or 'flash_attn'")
    return None


@dataclass
class DecodeValues:
    """One decode step packed on the host, padded to ``batch_size`` rows.

    Example (block_size 4, batch_size 2): one sequence with 5 tokens computed, block table
    [3, 8] → input_ids [t, 0], positions [5, 0], slots [8*4+1, -1] = [33, -1],
    seq_lens [6, 0], block_tables [[3, 8], [0, 0]].
    """

    input_ids: torch.Tensor  # [batch_size] int64
    positions: torch.Tensor  # [batch_size] int64
    slot_mapping: torch.Tensor  # [batch_size] int64
    seq_lens: torch.Tensor  # [batch_size] int32
    block_tables: torch.Tensor  # [batch_size, blocks the longest row needs] int32


def pack_decode(step: StepInput, block_size: int, batch_size: int) -> DecodeValues:
    num_padding = batch_size - len(step.sequences)
    ids, positions, slots, seq_lens, tables = [], [], [], [], []
    for seq in step.sequences:
        position = seq.num_computed_tokens
        num_blocks = position // block_size + 1
        if len(seq.block_table) < num_blocks:
            raise ValueError(f"request {seq.request_id}: block table of "
                             f"{len(seq.block_table)} blocks cannot hold {position + 1} tokens")
        ids.append(seq.token_ids[0])
        positions.append(position)
        slots.append(seq.block_table[position // block_size] * block_size
                     + position % block_size)
        seq_lens.append(position + 1)
        tables.append(seq.block_table[:num_blocks])
    width = max(len(table) for table in tables)
    padded_tables = [table + [0] * (width - len(table)) for table in tables]
    padded_tables += [[0] * width] * num_padding
    return DecodeValues(
        torch.tensor(ids + [0] * num_padding, dtype=torch.int64),
        torch.tensor(positions + [0] * num_padding, dtype=torch.int64),
        torch.tensor(slots + [-1] * num_padding, dtype=torch.int64),
        torch.tensor(seq_lens + [0] * num_padding, dtype=torch.int32),
        torch.tensor(padded_tables, dtype=torch.int32),
    )


class DecodeBuffers:
    """The fixed-address inputs every captured graph reads; graph ``n`` reads rows ``:n``.

    ``block_tables`` is as wide as the longest context (``ceil(max_model_len / block_size)``
    blocks). A step writes only the columns its longest row needs: the columns beyond a
    row's own length hold stale but valid block ids, which the backend never reads.
    """

    def __init__(self, max_batch_size: int, max_blocks: int, device: torch.device) -> None:
        def zeros(*shape: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.input_ids = zeros(max_batch_size, dtype=torch.int64)
        self.positions = zeros(max_batch_size, dtype=torch.int64)
        self.slot_mapping = torch.full((max_batch_size,), -1, dtype=torch.int64, device=device)
        self.seq_lens = zeros(max_batch_size, dtype=torch.int32)
        self.block_tables = zeros(max_batch_size, max_blocks, dtype=torch.int32)
        # One query per row, so the prefix sums never change: [0, 1, 2, ...].
        self.query_start_loc = torch.arange(max_batch_size + 1, dtype=torch.int32,
                                            device=device)

    def load(self, values: DecodeValues) -> None:
        rows, width = values.block_tables.shape
        self.input_ids[:rows].copy_(values.input_ids, non_blocking=True)
        self.positions[:rows].copy_(values.positions, non_blocking=True)
        self.slot_mapping[:rows].copy_(values.slot_mapping, non_blocking=True)
        self.seq_lens[:rows].copy_(values.seq_lens, non_blocking=True)
        self.block_tables[:rows, :width].copy_(values.block_tables, non_blocking=True)

    def metadata(self, batch_size: int, block_size: int, sliding_window: int | None
                 ) -> AttentionMetadata:
        """Views of the first ``batch_size`` rows. The host lists are placeholders that
        replays never update (the longest context the buffers hold, so a backend that did
        read them would over-read rather than cut a context short); backends read only the
        device tensors of a ``static_shapes`` batch."""
        max_context = self.block_tables.shape[1] * block_size
        return AttentionMetadata(
            query_start_loc=self.query_start_loc[:batch_size + 1],
            seq_lens=self.seq_lens[:batch_size],
            block_tables=self.block_tables[:batch_size],
            slot_mapping=self.slot_mapping[:batch_size],
            query_lens_host=[1] * batch_size,
            seq_lens_host=[max_context] * batch_size,
            block_size=block_size,
            sliding_window=sliding_window,
            static_shapes=True,
        )


class DecodeGraphRunner:
    """Runs decode-only steps of up to ``max_batch_size`` sequences through the static
    buffers: replaying captured graphs, or eagerly with ``capture=False``."""

    def __init__(self, model: MistralForCausalLM, kv_caches: list[torch.Tensor],
                 block_size: int, device: torch.device, options: CudaGraphOptions) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.sizes = capture_sizes(options.max_batch_size)
        max_blocks = -(-model.config.max_position_embeddings // block_size)
        self.max_context = max_blocks * block_size
        self.buffers = DecodeBuffers(self.sizes[-1], max_blocks, device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # each graph's hidden states, [size, hidden]
        if options.capture:
            self._capture_all()

    @classmethod
    def create(cls, model: MistralForCausalLM, kv_caches: list[torch.Tensor], block_size: int,
               device: torch.device, options: CudaGraphOptions | None
               ) -> DecodeGraphRunner | None:
        """The runner, or None (with a log line saying why) where graphs do not apply."""
        if options is None:
            return None
        # Every layer shares one backend instance.
        backend = model.layers[0].self_attn.backend
        reason = unavailable_reason(options, device, backend.supports_static_shapes,
                                    backend.name)
        if reason is not None:
            logger.info("decode CUDA graphs off: %s; every step runs eagerly", reason)
            return None
        return cls(model, kv_caches, block_size, device, options)

    def padded_size(self, step: StepInput) -> int | None:
        """The size this step runs at; None when it must run eagerly: a prefill or mixed
        step, more sequences than the largest size, or a context past the buffers."""
        if not step.sequences:
            return None
        for seq in step.sequences:
            if len(seq.token_ids) != 1 or seq.num_computed_tokens >= self.max_context:
                return None
        return padded_batch_size(len(step.sequences), self.sizes)

    @torch.inference_mode()
    def run(self, step: StepInput, size: int) -> tuple[torch.Tensor, list[str]]:
        """Hidden states [num_sampled, hidden] of the rows that sample, and their ids."""
        self.buffers.load(pack_decode(step, self.block_size, size))
        if self.graphs:
            self.graphs[size].replay()
            hidden = self.outputs[size]
        else:
            hidden = self._forward(size)
        rows = [i for i, seq in enumerate(step.sequences) if seq.sample]
        request_ids = [step.sequences[i].request_id for i in rows]
        if len(rows) == len(step.sequences):
            return hidden[:len(rows)], request_ids  # a view: no gather kernel
        return hidden[torch.tensor(rows, device=self.device)], request_ids

    def _forward(self, size: int) -> torch.Tensor:
        # Fresh metadata each call: a backend's per-step scratch must not outlive the step.
        meta = self.buffers.metadata(size, self.block_size, self.model.config.sliding_window)
        return self.model(self.buffers.input_ids[:size], self.buffers.positions[:size],
                          self.kv_caches, meta)

    @torch.inference_mode()
    def _capture_all(self) -> None:
        # Every row is padding while capturing (seq_len 0, slot -1), so neither the warm-up
        # nor the capture writes K/V: the cache is left as it was found.
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        # Warm up outside capture: Triton compiles its kernels, cuBLAS picks algorithms and
        # NCCL sets up its channels, none of which may happen inside a capture. A side
        # stream, as torch's capture notes advise, keeps the warm-up off the default stream.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for size in self.sizes:
                self._forward(size)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        # Largest first: the smaller graphs then fit in the memory the first one pooled.
        # Every tensor-parallel rank captures the same sizes in the same order, so their
        # captured collectives pair up.
        for size in reversed(self.sizes):
            graph = torch.cuda.CUDAGraph()
            try:
                # thread_local: other threads (NCCL's watchdog) may still query events.
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    self.outputs[size] = self._forward(size)
            except RuntimeError as error:
                raise RuntimeError(f"capturing the decode CUDA graph of batch size {size} "
                                   f"failed ({error}); start with cuda_graphs=False to run "
                                   "every step eagerly") from error
            self.graphs[size] = graph
        torch.cuda.synchronize(self.device)
        logger.info("captured decode CUDA graphs for batch sizes %s in %.1f s",
                    self.sizes, time.perf_counter() - start)
