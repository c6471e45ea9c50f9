"""The Hugging Face transformers peer of ``bench/gpu_serving.py``: same shapes, plain HF.

``MistralForCausalLM`` with ``attn_implementation="sdpa"`` and its default ``DynamicCache``:
what one gets from transformers without a serving engine. Works with transformers 4.45+
and 5.x (the cache keyword was renamed from ``past_key_values`` to ``cache``).
"""

from __future__ import annotations

import inspect
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.roofline import sync
from model.config import ModelConfig


def hf_config(config: ModelConfig) -> Any:
    """An HF ``MistralConfig`` with the same shapes as ours (for random initialisation)."""
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings, rope_theta=config.rope_theta,
        rms_norm_eps=config.rms_norm_eps, sliding_window=config.sliding_window,
        tie_word_embeddings=config.tie_word_embeddings, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )


def _with_dtype(factory: Any, dtype: torch.dtype, **kwargs: Any) -> Any:
    # transformers 5 takes ``dtype``; 4.x takes ``torch_dtype`` (and 4.56+ accepts both).
    try:
        return factory(dtype=dtype, **kwargs)
    except TypeError:
        return factory(torch_dtype=dtype, **kwargs)


def load_hf_model(config: ModelConfig, checkpoint: Path | None, dtype: torch.dtype,
                  device: torch.device) -> Any:
    """Random-initialised on the device (no 14 GB detour through host memory), or the given
    checkpoint's weights when there is one (the smoke run, to compare tokens with ours)."""
    from transformers import AutoModelForCausalLM

    if checkpoint is not None:
        model = _with_dtype(AutoModelForCausalLM.from_pretrained, dtype,
                            pretrained_model_name_or_path=str(checkpoint),
                            attn_implementation="sdpa").to(device)
    else:
        torch.manual_seed(0)
        with torch.device(device):
            model = _with_dtype(AutoModelForCausalLM.from_config, dtype,
                                config=hf_config(config), attn_implementation="sdpa")
        # A no-op when the device context took; a safety net for versions that build on
        # the host regardless (the figures must not silently run on the CPU).
        model = model.to(device)
    return model.eval()


class HFPeer:
    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = device
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    # ---- forward helpers ----------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        """Logits of the last position only (``logits_to_keep=1``: a 32K prompt's full
        logits would be 32K x 32000 floats for nothing), and the cache."""
        kwargs = {self.cache_kwarg: cache} if cache is not None else {}
        out = self.model(ids, use_cache=True, logits_to_keep=1, **kwargs)
        new_cache = out["cache"] if "cache" in out else out["past_key_values"]
        return out.logits[:, -1], new_cache

    def _ids(self, tokens: list[list[int]]) -> torch.Tensor:
        return torch.tensor(tokens, dtype=torch.long, device=self.device)

    # ---- figures ------------------------------------------------------------------------

    @torch.inference_mode()
    def decode_batch1(self, prompt: list[int], new_tokens: int) -> dict[str, Any]:
        """Greedy, EOS ignored, one token per forward with the KV cache (a manual loop, so the
        decode steps are timed apart from the prefill, as for ours)."""
        def run(count: int) -> tuple[float, list[int]]:
            logits, cache = self._forward(self._ids([prompt]))
            token = logits.argmax(-1, keepdim=True)
            tokens = [token]
            sync(self.device)
            start = time.perf_counter()
            for _ in range(count - 1):
                logits, cache = self._forward(token, cache)
                token = logits.argmax(-1, keepdim=True)
                tokens.append(token)
            sync(self.device)
            return time.perf_counter() - start, torch.cat(tokens, 1)[0].tolist()

        run(min(8, new_tokens))  # warm-up: kernels, allocator
        seconds, tokens = run(new_tokens)
        return {"value": (new_tokens - 1) / seconds, "seconds": seconds, "tokens": tokens}

    @torch.inference_mode()
    def throughput_static(self, prompts: list[list[int]], output_len: int, batch: int
                          ) -> dict[str, Any]:
        """HF static batching through ``generate``: batches of ``batch`` equal-length prompts
        (no padding), each run to ``output_len`` tokens (min_new_tokens masks EOS)."""
        def generate(chunk: list[list[int]], count: int) -> None:
            ids = self._ids(chunk)
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=count, min_new_tokens=count,
                                      do_sample=False, pad_token_id=0)
            if out.shape[1] != ids.shape[1] + count:
                raise RuntimeError(f"generate returned {out.shape[1] - ids.shape[1]} tokens, "
                                   f"expected {count}")

        generate(prompts[:batch], 4)  # warm-up at the full batch size
        sync(self.device)
        start = time.perf_counter()
        for i in range(0, len(prompts), batch):
            generate(prompts[i:i + batch], output_len)
        sync(self.device)
        seconds = time.perf_counter() - start
        return {"value": len(prompts) * output_len / seconds, "seconds": seconds}

    @torch.inference_mode()
    def prefill_ms(self, prompts: list[list[int]]) -> dict[str, Any]:
        """TTFT of a cold prompt: the prefill forward plus the first argmax. ``prompts[0]`` is
        the warm-up; the rest are timed."""
        samples = []
        for index, prompt in enumerate(prompts):
            ids = self._ids([prompt])
            sync(self.device)
            start = time.perf_counter()
            logits, cache = self._forward(ids)
            logits.argmax(-1).tolist()
            sync(self.device)
            if index:
                samples.append((time.perf_counter() - start) * 1e3)
            del logits, cache
        return {"value": statistics.median(samples), "samples_ms": samples}

    @torch.inference_mode()
    def turn2_ms(self, base: list[int], extensions: list[list[int]]) -> dict[str, Any]:
        """Prefill of each extension on top of the base prompt's KV (computed once, handed
        over explicitly: HF has no prefix cache). After each, the cache is cropped back to
        the base so every sample starts from the same state. ``extensions[0]`` warms up."""
        _, cache = self._forward(self._ids([base]))
        base_len = cache.get_seq_length()
        samples = []
        for index, extension in enumerate(extensions):
            ids = self._ids([extension])
            sync(self.device)
            start = time.perf_counter()
            logits, cache = self._forward(ids, cache)
            logits.argmax(-1).tolist()
            sync(self.device)
            if index:
                samples.append((time.perf_counter() - start) * 1e3)
            # A negative count removes that many tokens in transformers 4.x and 5.x alike.
            cache.crop(-len(extension))
            if cache.get_seq_length() != base_len:
                raise RuntimeError(f"cache holds {cache.get_seq_length()} tokens after crop, "
                                   f"expected {base_len}")
        del cache
        return {"value": statistics.median(samples), "samples_ms": samples,
                "num_cached_tokens": base_len}
