"""Reference attention over the paged KV cache, in plain PyTorch. Runs everywhere.

It is the oracle for every faster backend, so it favours obviously-correct index arithmetic:
each sequence's context is gathered from its blocks into a dense tensor and handed to
``scaled_dot_product_attention`` with an explicit mask. Decode rows (one query each) are
batched into one call; each prefill chunk gets its own call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.attention.metadata import AttentionMetadata


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store each new token's K and V at its slot (``block_id * block_size + offset``)."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    kv_cache[0].view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    kv_cache[1].view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v)


def gather_context(cache: torch.Tensor, block_tables: torch.Tensor, length: int) -> torch.Tensor:
    """Dense [num_seqs, length, kv_heads, head_dim] view of the first ``length`` cached tokens.

    Position p of sequence s lives at slot ``block_tables[s, p // block_size] * block_size +
    p % block_size``. Positions past a sequence's own length read whatever block the padding
    points at; the caller masks them out.
    """
    block_size = cache.shape[1]
    positions = torch.arange(length, device=cache.device)
    blocks = block_tables[:, positions // block_size].long()
    slots = blocks * block_size + positions % block_size
    flat = cache.view(-1, cache.shape[2], cache.shape[3])
    return flat[slots]


def context_mask(query_positions: torch.Tensor, length: int,
                 sliding_window: int | None) -> torch.Tensor:
    """[num_seqs, num_queries, length] bool: key j is visible to the query at position p iff
    ``j <= p`` and, with a window W, ``j > p - W`` (the query sees itself and W-1 earlier)."""
    keys = torch.arange(length, device=query_positions.device)
    mask = keys <= query_positions.unsqueeze(-1)
    if sliding_window is not None:
        mask &= keys > query_positions.unsqueeze(-1) - sliding_window
    return mask


def _decode_plan(meta: AttentionMetadata, rows: list[int], starts: list[int], block_size: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token index, context slots [rows, length] and mask [rows, 1, 1, length] of the decode
    rows: the same for every layer of the step, so computed once."""
    token_index = torch.tensor([starts[s] for s in rows], device=device)
    seq_lens = torch.tensor([meta.seq_lens_host[s] for s in rows], device=device)
    length = max(meta.seq_lens_host[s] for s in rows)
    tables = meta.block_tables[torch.tensor(rows, device=device)]
    positions = torch.arange(length, device=device)
    slots = tables[:, positions // block_size].long() * block_size + positions % block_size
    mask = context_mask((seq_lens - 1).unsqueeze(-1), length, meta.sliding_window)
    return token_index, slots, mask.unsqueeze(1)


class TorchAttentionBackend:
    name = "torch"
    supports_static_shapes = False  # plans its gathers from the host lists

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        write_kv(kv_cache, k, v, meta.slot_mapping)
        out = torch.empty_like(q)
        starts = meta.query_start_loc.tolist()
        decode_rows = [s for s, n in enumerate(meta.query_lens_host) if n == 1]
        if decode_rows:
            self._decode(q, kv_cache, meta, decode_rows, starts, out, scale)
        for s, num_queries in enumerate(meta.query_lens_host):
            if num_queries > 1:
                self._prefill(q, k, v, kv_cache, meta, s, starts[s], out, scale)
        return out

    def _decode(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                rows: list[int], starts: list[int], out: torch.Tensor, scale: float) -> None:
        plan = meta.scratch.get("decode")
        if plan is None:
            plan = meta.scratch["decode"] = _decode_plan(meta, rows, starts, kv_cache.shape[2],
                                                         q.device)
        token_index, slots, mask = plan
        num_kv_heads, head_dim = kv_cache.shape[3], kv_cache.shape[4]
        keys = kv_cache[0].view(-1, num_kv_heads, head_dim)[slots].transpose(1, 2)
        values = kv_cache[1].view(-1, num_kv_heads, head_dim)[slots].transpose(1, 2)
        query = q[token_index].unsqueeze(2)  # [rows, heads, 1, head_dim]
        attended = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, scale=scale, enable_gqa=True
        )
        out[token_index] = attended.squeeze(2)

    def _context(self, cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
        """[1, length, kv_heads, head_dim]: one sequence's cached context (``table``: its
        block-table row, [1, max_blocks])."""
        return gather_context(cache, table, length)

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 kv_cache: torch.Tensor, meta: AttentionMetadata, s: int, start: int,
                 out: torch.Tensor, scale: float) -> None:
        num_queries = meta.query_lens_host[s]
        seq_len = meta.seq_lens_host[s]
        end = start + num_queries
        query = q[start:end].transpose(0, 1).unsqueeze(0)
        if seq_len == num_queries and meta.sliding_window is None:
            # Nothing cached before this chunk: plain causal attention over the new tokens,
            # which lets SDPA pick its fused kernel.
            keys = k[start:end].transpose(0, 1).unsqueeze(0)
            values = v[start:end].transpose(0, 1).unsqueeze(0)
            attended = F.scaled_dot_product_attention(query, keys, values, is_causal=True,
                                                      scale=scale, enable_gqa=True)
        else:
            table = meta.block_tables[s:s + 1]
            keys = self._context(kv_cache[0], table, seq_len).transpose(1, 2)
            values = self._context(kv_cache[1], table, seq_len).transpose(1, 2)
            positions = torch.arange(seq_len - num_queries, seq_len, device=q.device)
            mask = context_mask(positions.unsqueeze(0), seq_len, meta.sliding_window)
            attended = F.scaled_dot_product_attention(
                query, keys, values, attn_mask=mask.unsqueeze(1), scale=scale, enable_gqa=True
            )
        out[start:end] = attended.squeeze(0).transpose(0, 1)
