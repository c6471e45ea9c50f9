"""The offline API, shaped like vLLM's: ``LLM(model=...).generate(prompts, SamplingParams())``."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from model.sampling_params import SamplingParams
from serve.engine.choices import choice_params, choice_request_id, merge_choices
from serve.engine.config import EngineConfig
from serve.engine.errors import QueueFullError
from serve.engine.factory import create_engine
from serve.engine.request import RequestOutput

Prompt = str | Sequence[int]
Message = Mapping[str, str]


def _is_single_prompt(prompts: Any) -> bool:
    if isinstance(prompts, str):
        return True
    return isinstance(prompts, Sequence) and bool(prompts) and isinstance(prompts[0], int)


class LLM:
    """Batch generation on one model copy (tp ranks included) in this process.

    ``model`` is a checkpoint directory or a preset name; None means the embedded default
    (SmolLM2-135M-Instruct, converted on first use). ``engine_args`` are ``EngineConfig``
    fields, e.g. ``kv_host_memory="8GiB"`` for a host tier that keeps the blocks the device
    evicts, so a later turn of a conversation copies its history back instead of
    recomputing it.

    What it holds (at tp > 1 a Ray placement group and its worker actors) is released by
    ``shutdown()``, by leaving a ``with LLM(...) as llm:`` block, or when the last reference
    goes, whichever comes first; a second ``shutdown()`` does nothing::

        with LLM("/ckpt", tensor_parallel_size=2) as llm:
            llm.generate("Hello")
        LLM("/other", tensor_parallel_size=2)   # the first one's CPUs/GPUs are free again
    """

    def __init__(self, model: str | None = None, **engine_args: Any) -> None:
        if model is None:
            from model.smollm2 import ensure_smollm2

            model = str(ensure_smollm2())
        self.engine = create_engine(EngineConfig(model=str(model), **engine_args))
        self._ids = itertools.count()
        # Tied to the engine, which may outlive this object (an AsyncLLMEngine around it);
        # holds the executor, not the engine, so dropping the last reference runs it.
        self._release = weakref.finalize(self.engine, self.engine.executor.shutdown)

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 cache_salt: str | None = None) -> list[RequestOutput]:
        """One finished output per prompt, in the order given."""
        batch: list[Prompt] = [prompts] if _is_single_prompt(prompts) else list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(batch)
        else:
            params = list(sampling_params)
            if len(params) != len(batch):
                raise ValueError(f"got {len(params)} sampling_params for {len(batch)} prompts; "
                                 "pass one, or one per prompt")
        ids = [f"offline-{next(self._ids)}" for _ in batch]
        # One engine request per choice (serve/engine/choices.py); merged again at the end.
        choices = {request_id: [choice_request_id(request_id, i, sampling.n)
                                for i in range(sampling.n)]
                   for request_id, sampling in zip(ids, params, strict=True)}
        pending = [(choice_id, prompt, choice_params(sampling, i))
                   for request_id, prompt, sampling in zip(ids, batch, params, strict=True)
                   for i, choice_id in enumerate(choices[request_id])]
        engine_ids = [choice_id for choice_id, _, _ in pending]
        results: dict[str, RequestOutput] = {}
        try:
            while pending or self.engine.has_unfinished_requests():
                while pending:
                    request_id, prompt, sampling = pending[0]
                    try:
                        self.engine.add_request(request_id, prompt, sampling, cache_salt)
                    except QueueFullError:
                        break
                    pending.pop(0)
                for output in self.engine.step():
                    if output.finished:
                        results[output.request_id] = output
        except BaseException:
            self.engine.abort([i for i in engine_ids if i not in results])
            self.engine.step()
            raise
        return [results[request_id] if len(choices[request_id]) == 1 else
                merge_choices(request_id, [results[choice_id]
                                           for choice_id in choices[request_id]])
                for request_id in ids]

    def chat(self, messages: Sequence[Message] | Sequence[Sequence[Message]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             continue_final_message: bool = False) -> list[RequestOutput]:
        """Apply the model's chat template to each conversation, then generate.
        ``continue_final_message``: each conversation ends with an assistant message whose
        text the answer continues."""
        conversations = ([messages] if messages and isinstance(messages[0], Mapping)
                         else list(messages))
        prompts = [self.tokenizer.apply_chat_template(list(c), continue_final_message)
                   for c in conversations]
        return self.generate(prompts, sampling_params)

    def shutdown(self) -> None:
        """Release the model's devices and workers; idempotent."""
        self._release()
