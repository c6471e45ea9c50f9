"""Build and call the C paged-attention kernel (``cpu_paged_attention.c``) on the CPU.

It is compiled once per machine with the system C compiler (well under a second; no torch
headers) into the cache directory, keyed by the source, the flags and the CPU's model and
instruction set, and loaded with ctypes. ``-fopenmp`` links ``libgomp.so.1``: torch has
already loaded its own copy under that name, so kernel and torch share one OpenMP thread
pool. No compiler, or a failed build: :func:`load_kernel` returns None and the CPU backend
runs the torch reference instead (logged once).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

from model import envs

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_paged_attention.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11")
# libmvec: glibc's vector expf, which the softmax loop calls.
LIBRARIES = ("-lmvec", "-lm")
BUILD_TIMEOUT_S = 120.0

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_ARGTYPES = [_PTR, _I64, _I64, _PTR, _PTR, _PTR, _I64, _PTR, _PTR, _PTR, _PTR, _I64, _PTR,
             _I64, _I64, _I64, _I64, _I64, _I64, ctypes.c_float, _I64, ctypes.c_int]


def _cpu_signature() -> str:
    """The CPU's model and flags: a library built with -march=native runs only where they
    match (a cache directory on a shared volume may be seen by other machines)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    return "\n".join(wanted)


def _library_path(compiler: str) -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *FLAGS, *LIBRARIES)).encode()
                         + _cpu_signature().encode()).hexdigest()[:16]
    return envs.cache_dir() / "kernels" / f"cpu_paged_attention-{key}.so"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: processes starting together (tensor-parallel
    # ranks, replicas) may build at once, and none may load a half-written file.
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(handle)
    try:
        subprocess.run([compiler, *FLAGS, "-o", partial, str(SOURCE), *LIBRARIES], check=True,
                       capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


@functools.cache
def load_kernel() -> ctypes._CFuncPtr | None:
    """The kernel's entry point, built on first use; None where it cannot be built."""
    compiler = envs.c_compiler()
    if compiler is None:
        logger.warning("CPU attention: no C compiler found, using the torch reference "
                       "(install gcc for the paged kernel)")
        return None
    target = _library_path(compiler)
    try:
        if not target.exists():
            _build(compiler, target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        logger.warning("CPU attention: building the paged kernel failed, using the torch "
                       "reference: %s", detail.strip()[-500:])
        return None
    function = library.paged_attention_f32
    function.argtypes = _ARGTYPES
    function.restype = None
    return function


def paged_attention(kernel: ctypes._CFuncPtr, q: torch.Tensor, kv_cache: torch.Tensor,
                    block_tables: torch.Tensor, rows: torch.Tensor, out: torch.Tensor,
                    scale: float, window: int | None) -> None:
    """Attend the query tokens of ``rows`` (int64 [4, n]: table row, query start, query
    length, sequence length) over their cached context, writing ``out`` in place.

    ``q``/``out``: [tokens, heads, head_dim] float32 with unit stride in the last dim;
    ``kv_cache``: [2, blocks, block_size, kv_heads, head_dim] contiguous; ``block_tables``
    int32 with unit column stride. ``window``: the sliding window, None for none.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    kernel(
        q.data_ptr(), q.stride(0), q.stride(1), kv_cache[0].data_ptr(), kv_cache[1].data_ptr(),
        block_tables.data_ptr(), block_tables.stride(0), rows[0].data_ptr(),
        rows[1].data_ptr(), rows[2].data_ptr(), rows[3].data_ptr(), rows.shape[1],
        out.data_ptr(), out.stride(0), out.stride(1), num_heads, num_kv_heads, head_dim,
        block_size, scale, window or 0, torch.get_num_threads())
