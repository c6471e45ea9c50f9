"""Service configuration: one pydantic model, the single place that reads the environment.

Defaults embed: no flags means a local Ray, the SmolLM2 checkpoint, the in-process prefix
index, gRPC on 9000 and HTTP on 8000. The same model is exported as a Serve config YAML for
``serve deploy`` and for the Helm chart.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from serve.engine.config import EngineConfig, EngineOptions, StrictModel

API_KEY_ENV = "MISTRAL_SERVE_API_KEY"
REDIS_URL_ENV = "MISTRAL_SERVE_REDIS_URL"
MODEL_ENV = "MISTRAL_SERVE_MODEL"


class AutoscalingBounds(StrictModel):
    section: ClassVar[str] = "autoscaling"

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(16.0, gt=0)
    # The LLM signals the custom policy scales on (see serve/autoscaling.py).
    target_waiting_requests: float = Field(4.0, ge=0)
    target_kv_cache_usage: float = Field(0.85, gt=0, le=1)
    # How long a scale-up / scale-down must stay wanted before Serve acts; None: Serve's
    # defaults (30 s up, 600 s down).
    upscale_delay_s: float | None = Field(None, ge=0)
    downscale_delay_s: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingBounds:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas "
                             f"({self.max_replicas})")
        return self


class Limits(StrictModel):
    section: ClassVar[str] = "limits"

    max_prompt_tokens: int | None = Field(None, ge=1)  # None: the model's context
    max_new_tokens: int = Field(4096, ge=1)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Bounds on every list a client sends: each generated token is checked against every
    # stop string, and each one costs memory per request.
    max_stop_strings: int = Field(16, ge=0)
    max_stop_string_chars: int = Field(256, ge=1)
    max_stop_token_ids: int = Field(64, ge=0)
    max_logprobs: int = Field(20, ge=0)
    # Bad words are matched against the output at every step; a logit bias is one scatter
    # entry per token and step.
    max_bad_words: int = Field(64, ge=0)
    max_logit_bias: int = Field(1024, ge=0)
    # Choices per request (n): each is a sequence of its own in the engine.
    max_choices: int = Field(8, ge=1)
    max_messages: int = Field(1024, ge=1)


class ServeConfig(StrictModel):
    """Everything ``up`` needs; every field has an embedded default. Unknown keys, here or in
    a section, fail with the valid ones named."""

    section: ClassVar[str] = "the service config"
    removed: ClassVar[dict[str, str]] = {
        "stream_items_per_s": "streams are no longer rationed, each gets at most one item "
                              "per engine step (serve/ingress/collector.py); drop the key"}

    model: str | None = None  # None: the embedded SmolLM2 checkpoint
    tensor_parallel_size: int = Field(1, ge=1)
    replicas: int = Field(1, ge=1)
    ingress_replicas: int = Field(1, ge=1)
    # At most this many Ingress replicas per node (Serve's max_replicas_per_node); None: no
    # bound (one machine: its replicas share the ports). On a cluster, 1 with
    # ingress_replicas = the nodes that take traffic puts one front door on each.
    ingress_replicas_per_node: int | None = Field(None, ge=1)
    # "gpu": one GPU per tensor-parallel rank; "cpu": CPU workers (tests, laptops);
    # "auto": GPUs when the Ray cluster has any.
    accelerator: str = Field("auto", pattern="^(auto|cpu|gpu)$")
    autoscaling: AutoscalingBounds | None = None
    redis_url: str | None = None  # None: the in-process index (a Ray actor)
    api_key: str | None = None
    grpc_port: int = Field(9000, ge=1, le=65535)
    http_port: int = Field(8000, ge=1, le=65535)
    host: str = "127.0.0.1"
    app_name: str = "mistral"
    limits: Limits = Field(default_factory=Limits)
    session_ttl_s: float = Field(1800.0, gt=0)
    # False: Serve's default power-of-two router (for comparison benchmarks).
    prefix_routing: bool = True
    # How often replicas republish their cached blocks (refills a restarted Redis).
    index_resync_s: float = Field(30.0, gt=0)
    # Requests one LLMServer replica holds at once; None: what its engine can hold, running
    # and waiting (max_num_seqs + max_waiting_requests), so nothing in the path caps
    # concurrency below the engine's.
    max_ongoing_requests: int | None = Field(None, ge=1)
    # Requests each caller (Ingress replica) queues for the LLMServers; past it a request
    # gets RESOURCE_EXHAUSTED at once. Serve counts every request not yet placed on a replica,
    # including those it is placing right now, so a burst arriving at once fills this queue
    # while every replica still has room. None: one replica's whole capacity (max_num_seqs +
    # max_waiting_requests), so such a burst is refused only where the engines are full.
    max_queued_requests: int | None = Field(None, ge=0)
    # Environment variables of the LLMServer replicas (and their tensor-parallel workers):
    # NCCL_DEBUG, a cache directory, thread counts.
    replica_env: dict[str, str] = Field(default_factory=dict)
    # The engine's own settings (dtype, block_size, kv_cache_memory, max_model_len, ...);
    # the checkpoint and tensor-parallel size come from the fields above.
    engine: EngineOptions = Field(default_factory=EngineOptions)

    @field_validator("tensor_parallel_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"tensor_parallel_size must be a power of two, got {value}")
        return value

    @classmethod
    def from_env(cls, **overrides: Any) -> ServeConfig:
        """Explicit values win; the environment fills what was not given."""
        values: dict[str, Any] = {}
        if os.environ.get(MODEL_ENV):
            values["model"] = os.environ[MODEL_ENV]
        if os.environ.get(REDIS_URL_ENV):
            values["redis_url"] = os.environ[REDIS_URL_ENV]
        if os.environ.get(API_KEY_ENV):
            values["api_key"] = os.environ[API_KEY_ENV]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def resolved_model(self) -> str:
        if self.model is not None:
            return self.model
        from model.smollm2 import ensure_smollm2

        return str(ensure_smollm2())

    @property
    def engine_capacity(self) -> int:
        """Requests one engine holds at once, running and waiting."""
        return self.engine.max_num_seqs + self.engine.max_waiting_requests

    @property
    def replica_max_ongoing_requests(self) -> int:
        if self.max_ongoing_requests is not None:
            return self.max_ongoing_requests
        return self.engine_capacity

    @property
    def caller_max_queued_requests(self) -> int:
        if self.max_queued_requests is not None:
            return self.max_queued_requests
        return self.engine_capacity

    def engine_config(self, model: str) -> EngineConfig:
        """The engine every LLMServer replica runs, for the resolved checkpoint ``model``."""
        return EngineConfig(model=model, tensor_parallel_size=self.tensor_parallel_size,
                            **self.engine.model_dump())


class IngressSettings(StrictModel):
    """What the Ingress deployment needs: how to tokenize and validate, and what to report."""

    section: ClassVar[str] = "ingress settings"

    model_name: str
    tokenizer: str  # a checkpoint directory or a preset name
    block_size: int
    tensor_parallel_size: int
    max_model_len: int
    api_key: str | None = None
    limits: Limits = Field(default_factory=Limits)
    # The public servers of every Ingress replica (SO_REUSEPORT: replicas share them).
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(9000, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    # One output channel per LLMServer replica carries the chunks (serve/ingress/channels.py);
    # it needs the prefix router, which pins a channel to its replica.
    output_channels: bool = True
