"""Build an engine from its config: executor (local or Ray worker group) and tokenizer."""

from __future__ import annotations

from pathlib import Path

from model.config import PRESETS, ModelConfig
from model.tokenizer import MistralV1Tokenizer, Tokenizer, load_tokenizer
from serve.engine.config import EngineConfig
from serve.engine.engine import LLMEngine
from serve.engine.executor import Executor, LocalExecutor
from serve.engine.kv_events import KVEventSink


def load_engine_tokenizer(config: EngineConfig) -> Tokenizer:
    source = config.tokenizer or config.model
    if source in PRESETS:
        # Presets carry no files; the Mistral v1 tokenizer is the one they were trained with.
        return MistralV1Tokenizer.from_file(None)
    return load_tokenizer(Path(source))


def create_executor(config: EngineConfig) -> Executor:
    if config.tensor_parallel_size == 1:
        return LocalExecutor(config)
    from cluster.executor import RayExecutor

    return RayExecutor(config)


def create_engine(config: EngineConfig, event_sink: KVEventSink | None = None) -> LLMEngine:
    tokenizer = load_engine_tokenizer(config)
    model_config = ModelConfig.from_pretrained(config.model)
    executor = create_executor(config)
    return LLMEngine(config, executor, tokenizer, model_config, event_sink)
