"""Build an engine from its config: executor (local or Ray worker group) and tokenizer."""

from __future__ import annotations

from model.config import ModelConfig
from model.tokenizer import load_model_tokenizer
from serve.engine.config import EngineConfig
from serve.engine.engine import LLMEngine
from serve.engine.executor import Executor, LocalExecutor
from serve.engine.kv_events import KVEventSink


def create_executor(config: EngineConfig) -> Executor:
    if config.tensor_parallel_size == 1:
        return LocalExecutor(config.runner_config())
    # Ray loads only where a worker group is asked for.
    from cluster.executor import RayExecutor

    return RayExecutor(config.runner_config(), config.tensor_parallel_size)


def create_engine(config: EngineConfig, event_sink: KVEventSink | None = None) -> LLMEngine:
    tokenizer = load_model_tokenizer(config.tokenizer or config.model)
    model_config = ModelConfig.from_pretrained(config.model)
    executor = create_executor(config)
    return LLMEngine(config, executor, tokenizer, model_config, event_sink)
