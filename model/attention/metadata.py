"""What an attention backend needs to know about one step's batch.

Tokens of all sequences are packed along one axis. Example with block_size 4 and two
sequences — A has 6 tokens cached and 1 new (decode), B has 0 cached and 3 new (prefill):

    query_start_loc = [0, 1, 4]        # A's query is token 0, B's are tokens 1..3
    seq_lens        = [7, 3]           # context length after this step
    block_tables    = [[5, 2], [7, 0]] # padded with 0; only the first ceil(len/4) count
    slot_mapping    = [2*4+2, 7*4+0, 7*4+1, 7*4+2] = [10, 28, 29, 30]

A's new token sits at position 6 → block 6 // 4 = 1 of its table (block 2), offset 6 % 4 = 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class AttentionMetadata:
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32, prefix sums of query lengths
    seq_lens: torch.Tensor  # [num_seqs] int32, tokens in the KV cache after this step
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    slot_mapping: torch.Tensor  # [num_tokens] int64, cache slot of each new token
    # Host-side copies: backends that loop or pad on the CPU should not sync on the device.
    query_lens_host: list[int]
    seq_lens_host: list[int]
    block_size: int
    sliding_window: int | None = None
    # A decode batch padded to a fixed size for a CUDA graph: the host lists hold the values
    # at capture time, which replays do not update, so a backend reads only the device
    # tensors (block_tables' width bounds every context). Padding rows have seq_len 0 and
    # slot -1: no K/V is written for them and their output is ignored.
    static_shapes: bool = False
    # Per-step values a backend derives once and reuses in every layer (gather indices,
    # masks); the layers of one step share this metadata object.
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)

    @property
    def num_tokens(self) -> int:
        return int(sum(self.query_lens_host))

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens_host, default=0)

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_lens_host, default=0)

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1
