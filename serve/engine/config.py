"""Engine configuration: one pydantic model, validated once, that rejects unknown keys.

It is the ``engine`` section of :class:`serve.config.ServeConfig`, so a misspelt key in a
``serve deploy`` YAML, a Helm value or an ``LLM(...)`` keyword fails at build time, naming
the key, instead of inside a replica that Serve would restart forever.
"""

from __future__ import annotations

import difflib
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)

from model.runner_config import RunnerConfig
from serve.engine.spec_config import SpeculativeConfig

# Past this many sequences a decode step is long enough that launch overhead no longer
# matters, while every captured size costs graph memory and start-up time.
DEFAULT_CUDA_GRAPH_MAX_BATCH_SIZE = 256


_BYTE_SIZE = TypeAdapter(ByteSize)


def parse_byte_size(value: Any) -> Any:
    """A size with a unit as bytes: ``"8GiB"`` is 8 * 2**30, ``"8GB"`` 8 * 10**9,
    ``"512 MiB"`` 512 * 2**20, ``"4096"`` 4096; anything but a string is left to the field's
    own type check."""
    if not isinstance(value, str):
        return value
    try:
        return int(_BYTE_SIZE.validate_python(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a size: write bytes, or a number with a unit "
                         "such as 8GiB, 512MiB or 10GB") from None


# Bytes, as an int or a string with a unit (a Helm value or a CLI flag reads "8GiB").
ByteCount = Annotated[
    StrictInt, BeforeValidator(parse_byte_size), Field(ge=0),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0},
                              {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[A-Za-z]*\s*$"}]}),
]


def parse_json_object(value: Any) -> Any:
    """A JSON object given as a string, parsed; anything else is left to the field."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{value!r} is not a JSON object: {exc.msg}") from None


class StrictModel(BaseModel):
    """A config section that refuses unknown keys, naming the key, the closest valid one and
    every valid one (pydantic's own error names only the key)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # How errors name this section.
    section: ClassVar[str] = "config"
    # Keys an older version took, and what to do instead: a config written for it then fails
    # saying so, instead of offering the closest valid key.
    removed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, values: Any) -> Any:
        if isinstance(values, dict):
            valid = sorted(cls.model_fields)
            unknown = [key for key in values if key not in cls.model_fields]
            if unknown:
                raise ValueError(unknown_keys_message(cls.section, unknown, valid,
                                                      cls.removed))
        return values


def unknown_keys_message(section: str, unknown: list[Any], valid: list[str],
                         removed: dict[str, str] | None = None) -> str:
    parts = []
    for key in unknown:
        if removed and key in removed:
            parts.append(f"{key!r} (removed: {removed[key]})")
            continue
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"{key!r}{hint}")
    return (f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(parts)} in "
            f"{section}; valid keys: {', '.join(valid)}")


class EngineOptions(StrictModel):
    """Every engine setting except the checkpoint and the tensor-parallel size, which the
    service sets from its own fields: the ``engine`` section of a service config.

    ``kv_cache_memory`` is the KV budget per rank: an int is bytes, a float in (0, 1] is a
    fraction of the device memory still free after the weights load. ``num_kv_blocks``
    overrides both (tests use it to force preemption).

    ``kv_host_memory``: bytes of host memory for a second KV tier on each tensor-parallel
    rank (a replica uses ``tensor_parallel_size`` times as much), e.g. ``"8GiB"``; None or 0:
    no tier. Cached blocks the device evicts move there instead of being forgotten, and a
    prompt that hits them gets them copied back instead of recomputed. Needs prefix caching.

    ``cuda_graphs``: replay decode steps of up to ``cuda_graph_max_batch_size`` sequences
    (default ``min(max_num_seqs, 256)``) from CUDA graphs captured at start. Ignored, with a
    log line, off CUDA or with an attention backend that cannot run static shapes (torch).
    """

    section: ClassVar[str] = "engine"

    tokenizer: str | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # "auto", "cpu", "cuda" or "cuda:N".
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    block_size: int = Field(16, ge=1)
    # An int is bytes, a float a fraction (checked below); left to right so 1 stays an int.
    kv_cache_memory: StrictInt | StrictFloat | None = Field(None, union_mode="left_to_right")
    num_kv_blocks: int | None = Field(None, ge=1)
    kv_host_memory: ByteCount | None = None
    max_model_len: int | None = Field(None, ge=2)
    max_num_seqs: int = Field(128, ge=1)
    max_num_batched_tokens: int = Field(2048, ge=1)
    max_waiting_requests: int = Field(1024, ge=1)
    enable_prefix_caching: StrictBool = True
    attention_backend: Literal["auto", "torch", "cpu", "triton", "flash_attn"] = "auto"
    load_format: Literal["auto", "safetensors", "dummy"] = "auto"
    seed: int = 0
    cuda_graphs: StrictBool = True
    cuda_graph_max_batch_size: int | None = Field(None, ge=1)
    # Threads each rank computes with on a CPU device; None keeps torch's default (one per
    # core, or OMP_NUM_THREADS). The service sets it from the cores a replica owns.
    cpu_threads: int | None = Field(None, ge=1)
    # Speculative decoding, as vLLM names it: e.g. {"method": "ngram",
    # "num_speculative_tokens": 4} (serve/engine/spec_config.py); None: off. A JSON string
    # is read as its object (the CLI flag and environment values are strings).
    speculative_config: Annotated[SpeculativeConfig | None,
                                  BeforeValidator(parse_json_object)] = None

    @model_validator(mode="after")
    def _consistent(self) -> EngineOptions:
        memory = self.kv_cache_memory
        if isinstance(memory, float) and not 0.0 < memory <= 1.0:
            raise ValueError(f"kv_cache_memory as a fraction must be in (0, 1], got {memory}")
        if isinstance(memory, int) and memory < 1:
            raise ValueError(f"kv_cache_memory in bytes must be positive, got {memory}")
        if self.kv_host_memory and not self.enable_prefix_caching:
            raise ValueError("kv_host_memory keeps evicted prefix-cache blocks, so it needs "
                             "enable_prefix_caching=True; enable it or unset kv_host_memory")
        graph_max = self.cuda_graph_max_batch_size
        if graph_max is not None and graph_max > self.max_num_seqs:
            raise ValueError(f"cuda_graph_max_batch_size ({graph_max}) exceeds max_num_seqs "
                             f"({self.max_num_seqs}): no decode step has more sequences, "
                             "so lower it or leave it unset")
        return self

    @property
    def cuda_graph_batch_limit(self) -> int:
        """The largest decode batch replayed from a graph; larger ones run eagerly."""
        if self.cuda_graph_max_batch_size is not None:
            return self.cuda_graph_max_batch_size
        return min(self.max_num_seqs, DEFAULT_CUDA_GRAPH_MAX_BATCH_SIZE)



class EngineConfig(EngineOptions):
    """Everything an engine (and its model runners) needs to start."""

    model: str
    tensor_parallel_size: int = Field(1, ge=1)

    def runner_config(self) -> RunnerConfig:
        """The part each model runner (one per tensor-parallel rank) is built from."""
        return RunnerConfig(
            model=self.model, dtype=self.dtype, device=self.device, block_size=self.block_size,
            kv_cache_memory=self.kv_cache_memory, num_kv_blocks=self.num_kv_blocks,
            kv_host_memory=self.kv_host_memory or None,
            max_model_len=self.max_model_len, attention_backend=self.attention_backend,
            load_format=self.load_format, seed=self.seed, cuda_graphs=self.cuda_graphs,
            cuda_graph_max_batch_size=self.cuda_graph_batch_limit, tokenizer=self.tokenizer,
            cpu_threads=self.cpu_threads)
