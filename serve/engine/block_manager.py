"""Paged KV block manager with automatic prefix caching, keyed by request id.

Block/slot arithmetic, ``block_size=4``, a request with 10 known tokens::

    tokens        t0 t1 t2 t3 | t4 t5 t6 t7 | t8 t9 .  .
    block index   0           | 1           | 2 (partial: 2 of 4 slots used)
    block_table   [7, 3, 12]    (pool block ids, in sequence order)

    num_blocks needed = ceil(10 / 4) = 3; full blocks = 10 // 4 = 2 (hashed and cached)
    token i lives in block_table[i // 4] at offset i % 4,
    slot of token 9 = block_table[2] * 4 + 9 % 4 = 12 * 4 + 1 = 49

The first decode step computes t10 (num_computed_tokens=10, num_new_tokens=1): it fits in
block 2's free slot, no new block. The step that computes t11 fills block 2, so block 2 is
hashed then; t12 needs a fourth block.

Prefix-cache hits: ``get_computed_blocks`` finds the longest run of cached full blocks of
the prompt, but never the block holding the last prompt token (its logits are needed, so it
must be computed): a 10-token prompt can hit at most ``(10 - 1) // 4 = 2`` blocks, an
8-token prompt only ``(8 - 1) // 4 = 1``. The scheduler then passes those ids to the first
``allocate_slots``, which takes the references::

    hit_ids, num_computed_tokens = manager.get_computed_blocks(rid, prompt)
    table = manager.allocate_slots(rid, prompt, num_computed_tokens,
                                   len(prompt) - num_computed_tokens, hit_ids)
    # table is None: not enough free blocks; nothing changed, try again later
    ...
    manager.free(rid)   # finished, aborted or preempted (also if never allocated)

Blocks are registered in the cache when ``allocate_slots`` gives them their last token, i.e.
before the step computes that token's KV (as in vLLM): a request scheduled in the same step
may hit them, which is correct because the runner writes a step's KV before attention reads.

With a host tier, a prefix block the device evicted may still be a hit: its id in
``hit_ids`` is None, and ``allocate_slots`` restores it into a fresh device block (the copy
runs at the start of the step that reads it; ``drain_copies`` hands it over)::

    hit_ids == [7, None, None]   # block 0 on the device, blocks 1 and 2 on the host
    table[:3] == [7, 4, 9]       # after allocate_slots: 4 and 9 are fresh, restored
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from model.step import BlockCopies
from serve.engine.block_hash import BlockHash, extend_block_hashes
from serve.engine.block_pool import BlockPool
from serve.engine.kv_events import KVEvent
from serve.engine.stats import PrefixHitCounters


@dataclass
class _RequestBlocks:
    """What the manager keeps per request."""

    cache_salt: str | None
    block_ids: list[int] = field(default_factory=list)
    # Keys of the request's full blocks so far, computed once and extended as it grows.
    block_hashes: list[BlockHash] = field(default_factory=list)
    # The first num_cached_blocks blocks were already offered to the cache.
    num_cached_blocks: int = 0


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
        num_host_blocks: int = 0,
    ) -> None:
        """``num_host_blocks``: blocks of the KV host tier (0: none; it needs prefix caching)."""
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if num_host_blocks and not enable_prefix_caching:
            raise ValueError("a KV host tier keeps prefix-cache blocks: it needs prefix caching")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, num_host_blocks, block_size)
        self.hits = PrefixHitCounters()
        self._requests: dict[str, _RequestBlocks] = {}

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        return self.pool.num_cached_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.pool.num_free_blocks

    def block_table(self, request_id: str) -> list[int]:
        state = self._requests.get(request_id)
        return [] if state is None else list(state.block_ids)

    def _salt(self, state: _RequestBlocks | None, cache_salt: str | None) -> str | None:
        # The salt is fixed by the request's first call; later calls may omit it.
        if state is None or cache_salt is None:
            return cache_salt if state is None else state.cache_salt
        if cache_salt != state.cache_salt:
            raise ValueError("cache_salt changed during the request's lifetime")
        return cache_salt

    def get_computed_blocks(
        self, request_id: str, token_ids: Sequence[int], cache_salt: str | None = None
    ) -> tuple[list[int | None], int]:
        """Longest cached prefix of ``token_ids`` in full blocks, never covering the last token.

        Returns the block ids (None for a block in the host tier) and ``num_computed_tokens``
        (``len(ids) * block_size``). Takes no reference: pass the ids to ``allocate_slots``
        before allocating for anyone else.
        """
        if not self.enable_prefix_caching:
            return [], 0
        state = self._requests.get(request_id)
        if state is None:
            # Keep the keys for allocate_slots and later steps; free() drops them.
            state = self._requests[request_id] = _RequestBlocks(self._salt(None, cache_salt))
        else:
            self._salt(state, cache_salt)
        extend_block_hashes(state.block_hashes, token_ids, self.block_size, state.cache_salt)
        max_hit_blocks = (len(token_ids) - 1) // self.block_size
        hit_ids: list[int | None] = []
        pool = self.pool
        for block_hash in state.block_hashes[:max_hit_blocks]:
            block = pool.get_cached_block(block_hash)
            if block is not None:
                hit_ids.append(block.block_id)
            elif pool.in_host_tier(block_hash):
                hit_ids.append(None)
            else:
                break
        return hit_ids, len(hit_ids) * self.block_size

    def allocate_slots(
        self,
        request_id: str,
        token_ids: Sequence[int],
        num_computed_tokens: int,
        num_new_tokens: int,
        new_computed_blocks: Sequence[int | None] | None = None,
        cache_salt: str | None = None,
        num_pending_tokens: int = 0,
    ) -> list[int] | None:
        """Own enough blocks for ``num_computed_tokens + num_new_tokens`` tokens.

        ``token_ids`` are all the request's known tokens (prompt + generated so far);
        ``num_computed_tokens`` already have KV (including prefix-cache hits), and this step
        computes the next ``num_new_tokens``. ``new_computed_blocks`` are the hit ids from
        ``get_computed_blocks``, only on the first call. ``num_pending_tokens`` follow
        ``token_ids`` but are not known yet (a step still running samples them): they get
        slots, but a block is hashed and cached only once all its tokens are known, at a
        later call. Returns the full block table, or None when the pool is short of blocks;
        then nothing has changed.
        """
        num_tokens = num_computed_tokens + num_new_tokens
        if num_computed_tokens < 0 or num_new_tokens < 0 or num_pending_tokens < 0:
            raise ValueError("token counts must be non-negative")
        if num_tokens > len(token_ids) + num_pending_tokens:
            raise ValueError(f"{num_tokens} tokens to hold but only {len(token_ids)} known "
                             f"and {num_pending_tokens} pending")
        state = self._requests.get(request_id)
        if (state is not None and not new_computed_blocks
                and (cache_salt is None or cache_salt == state.cache_salt)
                and num_tokens <= len(state.block_ids) * self.block_size
                and (not self.enable_prefix_caching
                     or num_tokens // self.block_size <= state.num_cached_blocks)):
            # Most decode steps: the owned blocks hold the token and fill no new block.
            return list(state.block_ids)
        salt = self._salt(state, cache_salt)
        hit_ids = list(new_computed_blocks or ())
        hits = [self.pool.blocks[block_id] for block_id in hit_ids if block_id is not None]
        num_host_hits = len(hit_ids) - len(hits)
        if hit_ids:
            self._check_hits(state, hit_ids, num_computed_tokens)
        num_owned = len(state.block_ids) if state is not None else 0
        num_new_blocks = max(0, cdiv(num_tokens, self.block_size) - num_owned - len(hit_ids))
        # A hit on a free block takes it out of the free queue, so it costs a free block too;
        # a host hit is restored into a fresh one.
        num_free_hits = sum(1 for block in hits if block.ref_cnt == 0)
        if num_new_blocks + num_free_hits + num_host_hits > self.pool.num_free_blocks:
            return None

        if state is None:
            state = self._requests[request_id] = _RequestBlocks(salt)
        if num_owned == 0 and self.enable_prefix_caching:
            self.hits.num_query_tokens += len(token_ids)
            self.hits.num_device_hit_tokens += len(hits) * self.block_size
            self.hits.num_host_hit_tokens += num_host_hits * self.block_size
        if hit_ids:
            # Touch before get_new_blocks, so the hits cannot be evicted by it.
            self.pool.touch(hits)
            state.block_ids.extend(self._restore_host_hits(state, hit_ids))
            state.num_cached_blocks = len(hit_ids)
        if num_new_blocks:
            new_blocks = self.pool.get_new_blocks(num_new_blocks)
            state.block_ids.extend(block.block_id for block in new_blocks)
        if self.enable_prefix_caching:
            self._cache_full_blocks(state, token_ids,
                                    min(num_tokens, len(token_ids)) // self.block_size)
        return list(state.block_ids)

    def _check_hits(
        self, state: _RequestBlocks | None, hit_ids: list[int | None], num_computed_tokens: int
    ) -> None:
        # Hits are only valid straight from get_computed_blocks: the same request, no blocks
        # owned yet, and still cached under the request's own keys (not evicted since).
        if not self.enable_prefix_caching or state is None:
            raise ValueError("new_computed_blocks must come from get_computed_blocks")
        if state.block_ids:
            raise ValueError("new_computed_blocks only on a request's first allocate_slots")
        if len(hit_ids) * self.block_size > num_computed_tokens:
            raise ValueError("num_computed_tokens must include the prefix-cache hits")
        if len(hit_ids) > len(state.block_hashes):
            raise ValueError("more hits than full blocks")
        for position, (block_id, block_hash) in enumerate(zip(hit_ids, state.block_hashes,
                                                              strict=False)):
            if block_id is None:
                if not self.pool.in_host_tier(block_hash):
                    raise ValueError(f"prefix block {position} is no longer in the host tier")
            elif self.pool.blocks[block_id].block_hash != block_hash:
                raise ValueError(f"block {block_id} is no longer a cache hit")

    def _restore_host_hits(self, state: _RequestBlocks, hit_ids: list[int | None]
                           ) -> list[int]:
        """The hits' block ids in sequence order, each run of host hits restored into fresh
        device blocks (one event per run, chained to the block before it)."""
        table: list[int] = []
        position = 0
        while position < len(hit_ids):
            block_id = hit_ids[position]
            if block_id is not None:
                table.append(block_id)
                position += 1
                continue
            end = position
            while end < len(hit_ids) and hit_ids[end] is None:
                end += 1
            parent = state.block_hashes[position - 1] if position else None
            restored = self.pool.restore(state.block_hashes[position:end], parent)
            table.extend(block.block_id for block in restored)
            position = end
        return table

    def _cache_full_blocks(
        self, state: _RequestBlocks, token_ids: Sequence[int], num_full_blocks: int
    ) -> None:
        start = state.num_cached_blocks
        if num_full_blocks <= start:
            return
        extend_block_hashes(
            state.block_hashes, token_ids, self.block_size, state.cache_salt, num_full_blocks
        )
        self.pool.cache_full_blocks(
            [self.pool.blocks[block_id] for block_id in state.block_ids[start:num_full_blocks]],
            state.block_hashes[start:num_full_blocks],
            state.block_hashes[start - 1] if start else None,
            self.block_size,
        )
        state.num_cached_blocks = num_full_blocks

    def trim(self, request_id: str, num_tokens: int) -> None:
        """Keep only the blocks that hold the request's first ``num_tokens`` tokens and free
        the rest: the slots of rejected draft tokens. Those blocks were never hashed (draft
        tokens are pending to ``allocate_slots``), so nothing leaves the prefix cache.

        Example (block_size 4): 9 tokens computed before a step with 1 + 4 drafts → blocks
        for 14 tokens [a, b, c, d]; one draft accepted → 11 tokens hold → keep [a, b, c].
        """
        state = self._requests.get(request_id)
        if state is None:
            return
        keep = cdiv(num_tokens, self.block_size)
        if keep >= len(state.block_ids):
            return
        if keep < state.num_cached_blocks:
            raise ValueError("trimming would drop a block already in the prefix cache")
        tail = state.block_ids[keep:]
        del state.block_ids[keep:]
        blocks = self.pool.blocks
        self.pool.free_blocks([blocks[block_id] for block_id in reversed(tail)])

    def free(self, request_id: str) -> None:
        """Release the request's blocks, tail first (evicted first); unknown ids are ignored."""
        state = self._requests.pop(request_id, None)
        if state is None:
            return
        blocks = self.pool.blocks
        self.pool.free_blocks([blocks[block_id] for block_id in reversed(state.block_ids)])

    def reset_prefix_cache(self) -> bool:
        """Drop every cached key; False (and no change) while any request holds blocks."""
        if not self.enable_prefix_caching:
            return True
        return self.pool.reset_prefix_cache()

    def drain_events(self) -> list[KVEvent]:
        """Events since the last drain; the engine publishes them once per step."""
        return self.pool.drain_events()

    def drain_copies(self) -> BlockCopies | None:
        """Block copies between the tiers since the last drain; the engine puts them in the
        step it builds next, which runs them before its forward."""
        return self.pool.drain_copies()
