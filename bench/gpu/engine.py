"""Our engine in this process, through its synchronous API (LocalExecutor at tp=1, no Ray),
and one timed batch of requests: what every "ours" figure measures with."""

from __future__ import annotations

import argparse
import time
from typing import Any


class OurEngine:
    """The engine and what the records say about it (``details``: backend, graphs, blocks)."""

    def __init__(self, args: argparse.Namespace, model: str, load_format: str,
                 tokenizer: tuple[str, str], cuda_graphs: str | None,
                 speculative_config: dict[str, Any] | None = None) -> None:
        from serve.engine.config import EngineConfig
        from serve.engine.factory import create_engine

        # EngineConfig's field names, whether it is a dataclass or a pydantic model.
        fields = set(EngineConfig.model_fields)
        kwargs: dict[str, Any] = dict(
            model=model, tokenizer=tokenizer[0], dtype=args.dtype, device=str(args.device),
            block_size=args.block_size, max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens, enable_prefix_caching=True,
            attention_backend=args.attention_backend, load_format=load_format,
            max_model_len=args.max_model_len, kv_cache_memory=args.kv_cache_memory)
        # The CUDA-graph switch is newer than this benchmark: pass it only where it exists.
        if cuda_graphs is not None and "cuda_graphs" in fields:
            kwargs["cuda_graphs"] = cuda_graphs == "on"
        if speculative_config is not None:
            kwargs["speculative_config"] = speculative_config
        self.config = EngineConfig(**kwargs)
        self.engine = create_engine(self.config)
        self.device = args.device
        self.timeout_s = args.timeout_s
        self.end_time = args.end_time
        self._ids = 0
        from model.attention.backend import resolve_backend_name

        model_ = self.engine.executor.runner.model
        self.details = {
            "attention_backend": resolve_backend_name(args.attention_backend, args.device,
                                                      args.block_size),
            "cuda_graphs": getattr(self.config, "cuda_graphs", None),
            # The switch is ignored off CUDA or with the torch backend: say what ran.
            "cuda_graphs_active": getattr(self.engine.executor.runner, "decode_graphs",
                                          None) is not None,
            "block_size": self.config.block_size,
            "max_num_seqs": self.config.max_num_seqs,
            "max_num_batched_tokens": self.config.max_num_batched_tokens,
            "num_kv_blocks": self.engine.executor.num_kv_blocks,
            "params": sum(p.numel() for p in model_.parameters()),
            "kv_cache_memory": args.kv_cache_memory,
            "tokenizer": tokenizer[1],
        }

    @property
    def vocab(self) -> int:
        return self.engine.model_config.vocab_size

    def run(self, prompts: list[list[int]], max_tokens: int,
            num_speculative_tokens: int | None = None) -> dict[str, Any]:
        """Submit every prompt at once, step until all finish. Returns per-request TTFT,
        every output's timestamp for the first request, and the prefix-cache hits.
        ``num_speculative_tokens``: the requests' own draft length (0: no drafts) on an
        engine built with speculation."""
        from bench.roofline import sync
        from model.sampling_params import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                                num_speculative_tokens=num_speculative_tokens)
        ids = []
        for _ in prompts:
            ids.append(f"bench-{self._ids}")
            self._ids += 1
        first: dict[str, float] = {}
        times_0: list[float] = []
        done: dict[str, Any] = {}
        sync(self.device)
        start = time.perf_counter()
        deadline = min(start + self.timeout_s, self.end_time)
        for request_id, prompt in zip(ids, prompts, strict=True):
            self.engine.add_request(request_id, prompt, params)
        while len(done) < len(ids):
            if time.perf_counter() > deadline:  # every wait is bounded
                self.engine.abort([i for i in ids if i not in done])
                self.engine.step()
                raise TimeoutError(f"{len(ids) - len(done)} of {len(ids)} requests unfinished "
                                   f"after {deadline - start:.0f} s (--timeout-s, --budget-s)")
            outputs = self.engine.step()
            # The sampled tokens came back as Python ints: the step's kernels are done.
            now = time.perf_counter()
            for out in outputs:
                if out.error is not None:
                    raise RuntimeError(f"request {out.request_id} failed: {out.error}")
                first.setdefault(out.request_id, now)
                if out.request_id == ids[0]:
                    times_0.append(now)
                if out.finished:
                    done[out.request_id] = out
        seconds = time.perf_counter() - start
        outs = [done[i] for i in ids]
        lengths = [len(o.outputs[0].token_ids) for o in outs]
        if lengths != [max_tokens] * len(ids):
            raise RuntimeError(f"expected {max_tokens} tokens per request, got {set(lengths)}")
        return {"seconds": seconds, "ttft_s": [first[i] - start for i in ids],
                "times_0": times_0, "start": start,
                "num_cached_tokens": [o.num_cached_tokens for o in outs],
                "tokens_0": outs[0].outputs[0].token_ids}

    def shutdown(self) -> None:
        self.engine.executor.shutdown()
        del self.engine

