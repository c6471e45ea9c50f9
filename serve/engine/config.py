"""Engine configuration: one dataclass, validated once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    """Everything an engine (and its model runners) needs to start.

    ``kv_cache_memory`` is the KV budget per rank: an int is bytes, a float in (0, 1] is a
    fraction of the device memory still free after the weights load. ``num_kv_blocks``
    overrides both (tests use it to force preemption).
    """

    model: str
    tokenizer: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    block_size: int = 16
    kv_cache_memory: int | float | None = None
    num_kv_blocks: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    max_waiting_requests: int = 1024
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = 1
    attention_backend: str = "auto"
    load_format: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("block_size", "max_num_seqs", "max_num_batched_tokens",
                    "max_waiting_requests", "tensor_parallel_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        memory = self.kv_cache_memory
        if isinstance(memory, float) and not 0.0 < memory <= 1.0:
            raise ValueError(f"kv_cache_memory as a fraction must be in (0, 1], got {memory}")
        if isinstance(memory, int) and memory < 1:
            raise ValueError(f"kv_cache_memory in bytes must be positive, got {memory}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
