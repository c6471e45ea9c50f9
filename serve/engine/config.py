"""Engine configuration: one dataclass, validated once."""

from __future__ import annotations

from dataclasses import dataclass

# Past this many sequences a decode step is long enough that launch overhead no longer
# matters, while every captured size costs graph memory and start-up time.
DEFAULT_CUDA_GRAPH_MAX_BATCH_SIZE = 256


@dataclass
class EngineConfig:
    """Everything an engine (and its model runners) needs to start.

    ``kv_cache_memory`` is the KV budget per rank: an int is bytes, a float in (0, 1] is a
    fraction of the device memory still free after the weights load. ``num_kv_blocks``
    overrides both (tests use it to force preemption).

    ``cuda_graphs``: replay decode steps of up to ``cuda_graph_max_batch_size`` sequences
    (default ``min(max_num_seqs, 256)``) from CUDA graphs captured at start. Ignored, with a
    log line, off CUDA or with an attention backend that cannot run static shapes (torch).
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
    cuda_graphs: bool = True
    cuda_graph_max_batch_size: int | None = None

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
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        graph_max = self.cuda_graph_max_batch_size
        if graph_max is not None:
            if not isinstance(graph_max, int) or isinstance(graph_max, bool) or graph_max < 1:
                raise ValueError("cuda_graph_max_batch_size must be a positive integer, "
                                 f"got {graph_max!r}")
            if graph_max > self.max_num_seqs:
                raise ValueError(f"cuda_graph_max_batch_size ({graph_max}) exceeds max_num_seqs "
                                 f"({self.max_num_seqs}): no decode step has more sequences, "
                                 "so lower it or leave it unset")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    @property
    def cuda_graph_batch_limit(self) -> int:
        """The largest decode batch replayed from a graph; larger ones run eagerly."""
        if self.cuda_graph_max_batch_size is not None:
            return self.cuda_graph_max_batch_size
        return min(self.max_num_seqs, DEFAULT_CUDA_GRAPH_MAX_BATCH_SIZE)
