"""The one block hash: layout, chaining, salt, determinism across processes, speed."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve.engine.block_hash import (
    BLOCK_HASH_SIZE,
    extend_block_hashes,
    hash_block,
    hash_prompt_blocks,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _u32(value: int) -> bytes:
    return struct.pack("<I", value)


def _blake(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16, person=b"mistral-kv/v1").digest()


def test_byte_layout_matches_the_documented_encoding() -> None:
    tokens = [1, 2, 3, 70000]
    first = _blake(b"\x00" + _u32(4) + b"".join(_u32(t) for t in tokens) + _u32(0))
    assert hash_block(None, tokens) == first
    salted = _blake(b"\x00" + _u32(2) + _u32(5) + _u32(6) + _u32(1) + b"s" + _u32(3) + b"abc")
    assert hash_block(None, [5, 6], ("abc",)) == salted
    second = _blake(b"\x01" + _u32(16) + first + _u32(1) + _u32(9) + _u32(0))
    assert hash_block(first, [9]) == second
    assert len(first) == BLOCK_HASH_SIZE == 16


def test_known_answers() -> None:
    # Pinned: the router, the Redis index and old index entries rely on these never drifting.
    # Change them only together with the personalization string in block_hash.py.
    assert hash_block(None, [1, 2, 3, 4]).hex() == "1fd7d5b1a30407a1c5c898fd2edfdc99"
    assert hash_prompt_blocks(list(range(1, 11)), 4)[1].hex() == (
        "2ab8a1914681c0bdedbc20f9716e798c"
    )
    assert hash_prompt_blocks(list(range(1, 11)), 4, "tenant-a")[1].hex() == (
        "e539d52218a1d7215de67b6e928adf50"
    )


def test_encoding_is_unambiguous() -> None:
    base = hash_block(None, [1, 2])
    distinct = {
        base,
        hash_block(None, [1, 2, 0]),
        hash_block(None, [2, 1]),
        hash_block(None, [1]),
        hash_block(None, []),
        hash_block(b"", [1, 2]),  # an empty parent is not "no parent"
        hash_block(base, [1, 2]),
        hash_block(None, [1, 2], ("1",)),
        hash_block(None, [1, 2], (1,)),
        hash_block(None, [1, 2], (b"1",)),
        hash_block(None, [1, 2], ("",)),
        hash_block(None, [1, 2], ("a", "b")),
        hash_block(None, [1, 2], ("b", "a")),
        hash_block(None, [1, 2], ("ab",)),
        hash_block(None, [1, 2], (-1,)),
    }
    assert len(distinct) == 15
    assert hash_block(None, [1, 2]) == base
    assert hash_block(None, (1, 2)) == base  # any sequence of ints


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(OverflowError):
        hash_block(None, [-1])
    with pytest.raises(OverflowError):
        hash_block(None, [2**32])
    with pytest.raises(TypeError):
        hash_block(None, [1], (True,))
    with pytest.raises(TypeError):
        hash_block(None, [1], (1.5,))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        hash_prompt_blocks([1, 2], 0)


def test_prompt_blocks_chain_full_blocks_only() -> None:
    tokens = list(range(1, 11))
    h0 = hash_block(None, [1, 2, 3, 4])
    h1 = hash_block(h0, [5, 6, 7, 8])
    assert hash_prompt_blocks(tokens, 4) == [h0, h1]
    assert hash_prompt_blocks(tokens[:3], 4) == []
    assert hash_prompt_blocks(tokens[:8], 4) == [h0, h1]


def test_salt_enters_the_first_block_only_and_the_chain_carries_it() -> None:
    tokens = list(range(1, 13))
    h0 = hash_block(None, tokens[:4], ("tenant-a",))
    h1 = hash_block(h0, tokens[4:8])
    h2 = hash_block(h1, tokens[8:12])
    assert hash_prompt_blocks(tokens, 4, "tenant-a") == [h0, h1, h2]
    plain = hash_prompt_blocks(tokens, 4)
    other = hash_prompt_blocks(tokens, 4, "tenant-b")
    # Different salts share no key at any depth.
    assert not set(plain) & {h0, h1, h2}
    assert not set(other) & {h0, h1, h2}
    assert not set(plain) & set(other)


def test_fast_path_equals_chained_hash_block() -> None:
    rng = random.Random(0)
    for block_size in (1, 3, 16):
        tokens = [rng.randrange(32000) for _ in range(block_size * 20 + 2)]
        for salt in (None, "s", ""):
            expected: list[bytes] = []
            parent = None
            for start in range(0, len(tokens) - block_size + 1, block_size):
                extra = (salt,) if salt is not None and parent is None else ()
                parent = hash_block(parent, tokens[start : start + block_size], extra)
                expected.append(parent)
            assert hash_prompt_blocks(tokens, block_size, salt) == expected


def test_extend_hashes_only_new_blocks() -> None:
    tokens = list(range(100, 140))
    full = hash_prompt_blocks(tokens, 4, "s")
    hashes: list[bytes] = []
    # Grow one token at a time, as a decoding request does.
    for end in range(len(tokens) + 1):
        extend_block_hashes(hashes, tokens[:end], 4, "s")
        assert hashes == full[: end // 4]
    capped = extend_block_hashes([], tokens, 4, "s", num_blocks=3)
    assert capped == full[:3]


def test_deterministic_across_processes() -> None:
    tokens = list(range(0, 64000, 997))
    here = [h.hex() for h in hash_prompt_blocks(tokens, 16, "salt")]
    code = (
        "from serve.engine.block_hash import hash_prompt_blocks;"
        f"print(','.join(h.hex() for h in hash_prompt_blocks({tokens!r}, 16, 'salt')))"
    )
    for seed in ("0", "12345"):  # Python's own hash() differs under these; ours must not
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip().split(",") == here


def test_block_modules_import_no_heavy_packages() -> None:
    # The router process imports the hash; it must stay free of torch, ray and grpc.
    code = (
        "import sys, serve.engine.block_hash, serve.engine.kv_events,"
        " serve.engine.block_pool, serve.engine.block_manager;"
        "print(sorted(m for m in ('torch', 'ray', 'grpc') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_32k_token_prompt_hashes_fast() -> None:
    rng = random.Random(1)
    tokens = [rng.randrange(32000) for _ in range(32768)]
    hash_prompt_blocks(tokens, 16)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        hashes = hash_prompt_blocks(tokens, 16)
        best = min(best, time.perf_counter() - start)
    assert len(hashes) == 2048
    # ~1.5 ms measured on a 2-core dev box; the bound only catches a gross regression.
    assert best < 0.1
