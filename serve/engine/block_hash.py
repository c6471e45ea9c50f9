"""The one block hash of the service: engine prefix cache, KV events, prefix index and router.

A block is ``block_size`` consecutive tokens. Its key chains the key of the block before it,
so a key names a whole prefix, not just 16 tokens: two prompts share block ``i``'s key only if
they agree on every token up to the end of block ``i`` (and on the cache salt).

Hash: BLAKE2b with a 16-byte digest (stdlib ``hashlib``, so the router needs no extra
package). It is cryptographic, so one tenant cannot craft a prompt whose key collides with
another tenant's block and read its KV; it is fixed and process-independent (never Python's
``hash``, which is salted per process). The personalization string versions the encoding:
change it whenever the byte layout below changes, so old index entries simply stop matching.

Byte layout hashed for one block (every variable-length field is length-prefixed, integers
are little-endian uint32 ``u32``, so no two different inputs share an encoding)::

    parent:     b"\\x00"                                    parent is None (first block)
                b"\\x01" + u32(len(parent)) + parent
    tokens:     u32(num_tokens) + num_tokens * u32(token_id)
    extra keys: u32(num_keys) + per key: tag + u32(len(payload)) + payload
                tag b"s": str as UTF-8, b"b": bytes, b"i": int as signed decimal ASCII

Worked example, ``block_size=4`` and a 10-token prompt ``[1, 2, ..., 10]``::

    h0 = hash_block(None, [1, 2, 3, 4], extra_keys=(salt,) if salt else ())
    h1 = hash_block(h0,   [5, 6, 7, 8])
    # tokens 9, 10 fill only half a block: not hashed (only full blocks are cached)
    hash_prompt_blocks(list(range(1, 11)), 4, salt) == [h0, h1]

The salt is an extra key of the first block only; every later key depends on it through
the chain, so prompts with different salts share no key at all.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from collections.abc import Sequence

BlockHash = bytes
"""A block key: 16 bytes."""

BLOCK_HASH_SIZE = 16
_PERSON = b"mistral-kv/v1"  # BLAKE2b personalization: the version of the byte layout
_U32 = struct.Struct("<I")
# The array typecode whose items are 4 bytes (``I`` on every mainstream ABI).
_TYPECODE_U32 = next(code for code in "IL" if array(code).itemsize == 4)
_NEEDS_BYTESWAP = sys.byteorder != "little"
_NO_PARENT = b"\x00"
_NO_EXTRA_KEYS = _U32.pack(0)
# Copying a keyed-up hasher is ~40% cheaper than constructing one per block; the template
# is never updated itself, so sharing it across threads is safe.
_HASHER = hashlib.blake2b(digest_size=BLOCK_HASH_SIZE, person=_PERSON)


def _digest(data: bytes) -> BlockHash:
    hasher = _HASHER.copy()
    hasher.update(data)
    return hasher.digest()


def _token_bytes(token_ids: Sequence[int]) -> bytes:
    """Token ids as little-endian uint32 bytes; OverflowError for ids outside [0, 2**32)."""
    packed = array(_TYPECODE_U32, token_ids)
    if _NEEDS_BYTESWAP:
        packed.byteswap()
    return packed.tobytes()


def _parent_bytes(parent: BlockHash | None) -> bytes:
    if parent is None:
        return _NO_PARENT
    return b"\x01" + _U32.pack(len(parent)) + parent


def _encode_extra_keys(extra_keys: tuple[str | int | bytes, ...]) -> bytes:
    parts = [_U32.pack(len(extra_keys))]
    for key in extra_keys:
        # bool is an int subclass; refuse it rather than silently hashing it as 0/1.
        if isinstance(key, bool):
            raise TypeError("extra keys must be str, int or bytes, not bool")
        if isinstance(key, str):
            tag, payload = b"s", key.encode("utf-8")
        elif isinstance(key, (bytes, bytearray)):
            tag, payload = b"b", bytes(key)
        elif isinstance(key, int):
            tag, payload = b"i", str(key).encode("ascii")
        else:
            raise TypeError(f"extra keys must be str, int or bytes, not {type(key).__name__}")
        parts.append(tag + _U32.pack(len(payload)) + payload)
    return b"".join(parts)


def hash_block(
    parent: BlockHash | None,
    token_ids: Sequence[int],
    extra_keys: tuple[str | int | bytes, ...] = (),
) -> BlockHash:
    """Key of one block: its parent's key (None for the first block), tokens and extra keys."""
    return _digest(
        b"".join(
            (
                _parent_bytes(parent),
                _U32.pack(len(token_ids)),
                _token_bytes(token_ids),
                _encode_extra_keys(extra_keys),
            )
        )
    )


def _first_block_extra_keys(cache_salt: str | None) -> tuple[str | int | bytes, ...]:
    return () if cache_salt is None else (cache_salt,)


def extend_block_hashes(
    block_hashes: list[BlockHash],
    token_ids: Sequence[int],
    block_size: int,
    cache_salt: str | None = None,
    num_blocks: int | None = None,
) -> list[BlockHash]:
    """Append the keys of the full blocks of ``token_ids`` not yet in ``block_hashes``.

    ``block_hashes`` holds the keys of the first ``len(block_hashes)`` blocks of the same
    token sequence (a request's keys grow as it decodes); only the new blocks are hashed, and
    only up to ``num_blocks`` blocks in all when given. Returns ``block_hashes``.
    Equal to chaining ``hash_block`` (a test checks it); this loop only avoids per-block
    overhead, since the router hashes 2048 blocks for a 32K-token prompt.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    num_full = len(token_ids) // block_size
    if num_blocks is not None:
        num_full = min(num_full, num_blocks)
    start = len(block_hashes)
    if num_full <= start:
        return block_hashes
    data = _token_bytes(token_ids[start * block_size : num_full * block_size])
    block_nbytes = 4 * block_size
    count = _U32.pack(block_size)
    parent = block_hashes[-1] if block_hashes else None
    if parent is not None and len(parent) != BLOCK_HASH_SIZE:
        raise ValueError(f"block_hashes must hold {BLOCK_HASH_SIZE}-byte keys")
    first = 0
    if parent is None:
        # Only the first block has no parent and carries the salt.
        extra = _encode_extra_keys(_first_block_extra_keys(cache_salt))
        parent = _digest(b"".join((_NO_PARENT, count, data[:block_nbytes], extra)))
        block_hashes.append(parent)
        first = block_nbytes
    # Every later parent is one of our own 16-byte keys, so its length prefix is a constant.
    parent_prefix = b"\x01" + _U32.pack(BLOCK_HASH_SIZE)
    copy_hasher = _HASHER.copy
    append = block_hashes.append
    for offset in range(first, len(data), block_nbytes):
        hasher = copy_hasher()
        hasher.update(
            b"".join(
                (parent_prefix, parent, count, data[offset : offset + block_nbytes], _NO_EXTRA_KEYS)
            )
        )
        parent = hasher.digest()
        append(parent)
    return block_hashes


def hash_prompt_blocks(
    token_ids: Sequence[int], block_size: int, cache_salt: str | None = None
) -> list[BlockHash]:
    """Keys of the full blocks of ``token_ids``, chained; a trailing partial block is ignored.

    ``hash_prompt_blocks([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 4)`` has two keys (see the module
    docstring for the worked example); the cache salt enters the first block only.
    """
    return extend_block_hashes([], token_ids, block_size, cache_salt)
