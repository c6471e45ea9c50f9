"""Serving figures on one GPU: our engine (tp=1, in-process, no Ray) against HF transformers.

Figures (``--figures``; all by default), one JSON line each, printed and appended to
``bench/results/<gpu-name-slug>.jsonl`` (``cpu.jsonl`` without CUDA):

* ``roofline``: device copy bandwidth (GB/s, read + write), bf16 matmul TFLOP/s, and the
  batch-1 decode ceiling = bandwidth / weight bytes (parameters counted from the config);
* ``decode``: batch-1 greedy decode tok/s (EOS ignored), decode steps only;
* ``throughput``: 256 requests of 128 prompt + 128 output tokens, all submitted to the engine
  at once (output tok/s); HF: static ``generate`` batches of 64 and 128 over the same
  requests, 128 in / 128 out by default (``--hf-prompt-len 512`` for the 512/128 shape);
* ``ttft``: cold prompts of 2048, 8192 and 32000 tokens (32000, not 32768: the prompt plus
  its turn-2 extension must stay under the 32768-token context); ours: add_request to the
  first token through the engine; HF: prefill forward + first argmax;
* ``turn2``: the 32000-token prompt run to one token, then that prompt + 200 new tokens;
  ours: TTFT and the prefix-cache hit (``num_cached_tokens``); HF: prefill of the 200 tokens
  on the first prompt's ``past_key_values``.

Ours: preset ``mistral-7b-v0.2``, bf16, random weights (``load_format="dummy"``: timing
does not depend on values). HF: ``MistralForCausalLM`` with the same config, random-initialised
in bf16 on the device, ``attn_implementation="sdpa"``. Ours runs first and is torn down
before HF loads, so each has the whole GPU. Every figure warms up before it is timed; a
failing HF figure (say, out of memory) is recorded as skipped with the reason and the run
goes on.

Dependencies. At tp=1 the engine path imports, besides torch (and triton on CUDA, for the
``auto`` attention backend): numpy, safetensors, sentencepiece, tokenizers, jinja2, tqdm.
Nothing on it imports ray, grpc or pydantic. mistral_common is optional: it holds the Mistral
v1 tokenizer file a preset uses; without it this script gives the engine a synthetic
word-level tokenizer (token ids are sent; the tokenizer only detokenizes outputs), and says
so in each record's ``tokenizer``. The HF peer and ``--smoke`` need transformers.

Install on a machine with torch but no Ray (from the repository root; the install is
optional, the script puts the repository root on sys.path itself):

    pip install --no-deps --no-build-isolation -e .    # offline-safe: no build-deps download
    pip install numpy safetensors sentencepiece tokenizers jinja2 tqdm transformers

The device machine has no network: fetch the wheels here once into ``.whl/`` (git-ignored;
46 MB for Python 3.12, check ``python -V`` there), and carry it (run's ``carry: [".whl"]``):

    pip download -d .whl --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        transformers safetensors sentencepiece tokenizers tqdm

then on the H100, inside the 10-minute command limit (``--budget-s`` skips, and records as
skipped, the figures that would start too late; results go to $OUT so they come back):

    pip install -q --no-index --find-links .whl transformers safetensors sentencepiece \
        tokenizers tqdm && python bench/gpu_serving.py --budget-s 480 \
        --results "$OUT/nvidia-h100-80gb-hbm3.jsonl"

or in two commands, ours (with and without CUDA graphs) then HF:

    python bench/gpu_serving.py --no-hf --cuda-graphs on off --budget-s 480 \
        --results "$OUT/nvidia-h100-80gb-hbm3.jsonl"
    python bench/gpu_serving.py --no-ours --figures decode throughput ttft turn2 \
        --budget-s 480 --results "$OUT/nvidia-h100-80gb-hbm3.jsonl"

and append the returned file to ``bench/results/`` here.

Check on a CPU (tiny random checkpoint written with safetensors, lengths cut to 64/128/256):

    python bench/gpu_serving.py --smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.util
import json
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# Runs without installing the project: the repository root makes model/, serve/ and bench/
# importable (the script's own directory alone would not).
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIGURES = ("roofline", "decode", "throughput", "ttft", "turn2")


# ---- output ---------------------------------------------------------------------------

def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class Recorder:
    """Prints each figure as one JSON line and appends it to the results file; holds the
    run's end time (``--budget-s``) that every figure checks before it starts."""

    def __init__(self, path: Path | None, common: dict[str, Any], end_time: float) -> None:
        self.path = path
        self.common = common
        self.end_time = end_time
        self.records: list[dict[str, Any]] = []
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, bench: str, system: str, value: float | None, unit: str,
             **details: Any) -> None:
        record = {"bench": bench, "system": system,
                  "value": None if value is None else round(value, 3), "unit": unit,
                  **details}
        for key, common in self.common.items():  # a figure's own detail wins
            record.setdefault(key, common)
        record["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")
        self.records.append(record)
        line = json.dumps(record)
        print(line, flush=True)
        if self.path is not None:
            with self.path.open("a") as out:
                out.write(line + "\n")


def log(message: str) -> None:
    print(f"[gpu_serving] {message}", file=sys.stderr, flush=True)


def is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


def guarded(recorder: Recorder, bench: str, system: str, unit: str,
            call: Callable[[], None], **details: Any) -> bool:
    """Run one figure; a failure becomes a record (skipped on OOM, error otherwise) instead
    of ending the run, so one bad figure does not cost the others' GPU time. True if ok
    (or skipped for lack of time: that is no failure of the system measured)."""
    if time.perf_counter() > recorder.end_time:
        recorder.emit(bench, system, None, unit, **details, skipped=True,
                      reason="--budget-s spent")
        return True
    try:
        call()
        return True
    except Exception as exc:  # recorded, then the next figure runs
        reason = f"{type(exc).__name__}: {exc}"[:500]
        if is_oom(exc):
            recorder.emit(bench, system, None, unit, **details, skipped=True, reason=reason)
        else:
            traceback.print_exc(file=sys.stderr)
            recorder.emit(bench, system, None, unit, **details, error=reason)
        return False
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---- workload -------------------------------------------------------------------------

def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Uniform token ids above the special tokens; distinct seeds give prompts that share no
    prefix block, so the prefix cache cannot shorten a "cold" measurement."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab, (count, length), generator=gen).tolist()


def write_tiny_checkpoint(directory: Path, max_len: int) -> Path:
    """A 2-layer Mistral (hidden 64, full 32000 vocabulary) saved by transformers'
    ``save_pretrained`` through safetensors, so ours and HF load the very same weights."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=32000, hidden_size=64, intermediate_size=160,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, max_position_embeddings=max_len, rope_theta=1e6,
                           rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False,
                           bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        # HF's std-0.02 init gives near-uniform logits, where the greedy token flips on
        # rounding; wider weights make ours-vs-HF token agreement a meaningful check.
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.08)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def write_synthetic_tokenizer(directory: Path, vocab: int) -> Path:
    """A word-level ``tokenizer.json`` over the model's vocabulary, for machines without
    mistral_common (which carries the only copy of the Mistral v1 tokenizer a preset uses).
    Token ids are what the benchmark sends; the tokenizer only detokenizes the outputs."""
    import tokenizers

    names = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, vocab)]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {name: i for i, name in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in names[:3]])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return directory


def choose_tokenizer(args: argparse.Namespace, vocab: int) -> tuple[str, str]:
    """(what EngineConfig.tokenizer gets, how to describe it in the records)."""
    if args.tokenizer:
        return args.tokenizer, args.tokenizer
    if importlib.util.find_spec("mistral_common") is not None:
        return args.preset, "mistral-v1 (bundled with mistral_common)"
    path = write_synthetic_tokenizer(Path(tempfile.mkdtemp(prefix="gpu-serving-tok-")), vocab)
    return str(path), "synthetic word-level (mistral_common not installed)"


# ---- our engine -----------------------------------------------------------------------

class OurEngine:
    """The engine in this process through its synchronous API (LocalExecutor at tp=1)."""

    def __init__(self, args: argparse.Namespace, model: str, load_format: str,
                 tokenizer: tuple[str, str], cuda_graphs: str | None) -> None:
        from serve.engine.config import EngineConfig
        from serve.engine.factory import create_engine

        fields = {f.name for f in dataclasses.fields(EngineConfig)}
        kwargs: dict[str, Any] = dict(
            model=model, tokenizer=tokenizer[0], dtype=args.dtype, device=str(args.device),
            block_size=args.block_size, max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens, enable_prefix_caching=True,
            attention_backend=args.attention_backend, load_format=load_format,
            max_model_len=args.max_model_len, kv_cache_memory=args.kv_cache_memory)
        # The CUDA-graph switch is newer than this benchmark: pass it only where it exists.
        if cuda_graphs is not None and "cuda_graphs" in fields:
            kwargs["cuda_graphs"] = cuda_graphs == "on"
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

    def run(self, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        """Submit every prompt at once, step until all finish. Returns per-request TTFT,
        every output's timestamp for the first request, and the prefix-cache hits."""
        from bench.roofline import sync
        from model.sampling_params import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
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


def ours_decode(ours: OurEngine, rec: Recorder, args: argparse.Namespace,
                ceiling: float | None) -> list[int]:
    prompt = random_prompts(1, args.decode_prompt_len, ours.vocab, seed=1)
    ours.run(random_prompts(1, args.decode_prompt_len, ours.vocab, seed=2), 8)  # warm-up
    result = ours.run(prompt, args.decode_tokens)
    times = result["times_0"]
    # From the first token to the last: decode steps only, the prefill is excluded.
    rate = (len(times) - 1) / (times[-1] - times[0])
    rec.emit("decode_b1", "ours", rate, "tok/s", prompt_len=args.decode_prompt_len,
             new_tokens=args.decode_tokens, ms_per_token=round(1e3 / rate, 3),
             fraction_of_ceiling=round(rate / ceiling, 3) if ceiling else None, **ours.details)
    return result["tokens_0"]


def ours_throughput(ours: OurEngine, rec: Recorder, args: argparse.Namespace) -> None:
    # Warm-up at the same batch shape with few tokens: every prefill chunk and decode batch
    # size of the timed run has been compiled / autotuned once.
    ours.run(random_prompts(args.requests, args.prompt_len, ours.vocab, seed=10), 4)
    prompts = random_prompts(args.requests, args.prompt_len, ours.vocab, seed=11)
    result = ours.run(prompts, args.output_len)
    seconds = result["seconds"]
    ttft = sorted(result["ttft_s"])
    rec.emit("throughput", "ours", args.requests * args.output_len / seconds, "output tok/s",
             requests=args.requests, prompt_len=args.prompt_len, output_len=args.output_len,
             seconds=round(seconds, 3),
             total_tok_s=round(args.requests * (args.prompt_len + args.output_len) / seconds, 1),
             ttft_p50_ms=round(ttft[len(ttft) // 2] * 1e3, 1),
             ttft_max_ms=round(ttft[-1] * 1e3, 1),
             num_cached_tokens=sum(result["num_cached_tokens"]), **ours.details)


def ours_ttft(ours: OurEngine, rec: Recorder, args: argparse.Namespace, length: int) -> None:
    samples, cached = [], []
    for rep in range(args.repeats + 1):  # rep 0 warms up this length
        prompt = random_prompts(1, length, ours.vocab, seed=1000 * length + rep)
        result = ours.run(prompt, 1)
        if rep:
            samples.append(result["ttft_s"][0] * 1e3)
            cached.append(result["num_cached_tokens"][0])
    rec.emit("ttft_cold", "ours", statistics.median(samples), "ms", prompt_len=length,
             samples_ms=[round(s, 2) for s in samples], num_cached_tokens=max(cached),
             **ours.details)


def turn2_prompts(args: argparse.Namespace, vocab: int) -> tuple[list[int], list[list[int]]]:
    """The first turn's prompt and ``repeats + 1`` distinct extensions of it (the first
    warms up). Distinct, so each timed turn 2 hits only the first turn's blocks."""
    base = random_prompts(1, args.turn2_base_len, vocab, seed=7)[0]
    extensions = random_prompts(args.repeats + 1, args.turn2_new_tokens, vocab, seed=8)
    return base, extensions


def ours_turn2(ours: OurEngine, rec: Recorder, args: argparse.Namespace) -> None:
    base, extensions = turn2_prompts(args, ours.vocab)
    turn1 = ours.run([base], 1)
    samples, cached = [], []
    for index, extension in enumerate(extensions):
        result = ours.run([base + extension], 1)
        if index:
            samples.append(result["ttft_s"][0] * 1e3)
            cached.append(result["num_cached_tokens"][0])
    rec.emit("ttft_turn2", "ours", statistics.median(samples), "ms",
             base_len=len(base), new_tokens=args.turn2_new_tokens,
             num_cached_tokens=min(cached),
             expected_cached_tokens=len(base) // args.block_size * args.block_size,
             samples_ms=[round(s, 2) for s in samples],
             turn1_ttft_ms=round(turn1["ttft_s"][0] * 1e3, 2), **ours.details)


# ---- the run --------------------------------------------------------------------------

def run_roofline(rec: Recorder, args: argparse.Namespace, model_config: Any,
                 dtype: torch.dtype) -> float | None:
    from bench.roofline import copy_bandwidth_gb_s, count_parameters, matmul_tflops

    out: dict[str, float] = {}

    def bandwidth() -> None:
        out["gb_s"] = copy_bandwidth_gb_s(args.device, args.copy_bytes)
        rec.emit("copy_bandwidth", "roofline", out["gb_s"], "GB/s",
                 bytes=args.copy_bytes, counted="read+write")

    def matmul() -> None:
        value = matmul_tflops(args.device, dtype, args.matmul_size)
        rec.emit("matmul", "roofline", value, "TFLOP/s", size=args.matmul_size,
                 dtype=str(dtype).removeprefix("torch."))

    guarded(rec, "copy_bandwidth", "roofline", "GB/s", bandwidth)
    guarded(rec, "matmul", "roofline", "TFLOP/s", matmul)
    if "gb_s" not in out:
        return None
    count = count_parameters(model_config)
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    weight_bytes = count.total * dtype_bytes
    ceiling = out["gb_s"] * 1e9 / weight_bytes
    rec.emit("decode_ceiling_b1", "roofline", ceiling, "tok/s", params=count.total,
             weight_bytes=weight_bytes,
             ceiling_without_embedding=round(
                 out["gb_s"] * 1e9 / (count.read_per_decode_step * dtype_bytes), 1),
             bandwidth_gb_s=round(out["gb_s"], 1))
    return ceiling


def run_ours(rec: Recorder, args: argparse.Namespace, model: str, load_format: str,
             tokenizer: tuple[str, str], cuda_graphs: str | None, ceiling: float | None
             ) -> tuple[bool, list[int] | None]:
    tokens: list[int] | None = None
    holder: dict[str, OurEngine] = {}

    def load() -> None:
        start = time.perf_counter()
        holder["ours"] = OurEngine(args, model, load_format, tokenizer, cuda_graphs)
        log(f"engine ready in {time.perf_counter() - start:.1f} s: {holder['ours'].details}")

    loaded = guarded(rec, "engine_load", "ours", "", load)
    if "ours" not in holder:  # failed, or skipped for lack of time
        return loaded, None
    ours = holder.pop("ours")
    ok = True
    try:
        if "decode" in args.figures:
            def decode() -> None:
                nonlocal tokens
                tokens = ours_decode(ours, rec, args, ceiling)
            ok &= guarded(rec, "decode_b1", "ours", "tok/s", decode)
        if "throughput" in args.figures:
            ok &= guarded(rec, "throughput", "ours", "output tok/s",
                          lambda: ours_throughput(ours, rec, args))
        if "ttft" in args.figures:
            for length in args.ttft_lens:
                ok &= guarded(rec, "ttft_cold", "ours", "ms",
                              lambda n=length: ours_ttft(ours, rec, args, n), prompt_len=length)
        if "turn2" in args.figures:
            ok &= guarded(rec, "ttft_turn2", "ours", "ms", lambda: ours_turn2(ours, rec, args))
    finally:
        ours.shutdown()  # drops the engine, and with it the weights and the KV cache
        gc.collect()
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
            log(f"engine torn down; {torch.cuda.memory_allocated(args.device) / 2**30:.2f} GiB "
                "still allocated")
    return ok, tokens


def run_hf(rec: Recorder, args: argparse.Namespace, model_config: Any,
           checkpoint: Path | None, dtype: torch.dtype, ceiling: float | None,
           our_tokens: list[int] | None) -> None:
    from bench.hf_peer import HFPeer, load_hf_model

    holder: dict[str, HFPeer] = {}

    def load() -> None:
        start = time.perf_counter()
        holder["peer"] = HFPeer(load_hf_model(model_config, checkpoint, dtype, args.device),
                                args.device)
        log(f"HF model ready in {time.perf_counter() - start:.1f} s")

    guarded(rec, "hf_load", "hf", "", load)
    if "peer" not in holder:  # failed, or skipped for lack of time
        return
    peer = holder["peer"]
    vocab = model_config.vocab_size
    import transformers

    common = {"attn_implementation": "sdpa", "transformers": transformers.__version__}

    if "decode" in args.figures:
        def decode() -> None:
            prompt = random_prompts(1, args.decode_prompt_len, vocab, seed=1)[0]
            result = peer.decode_batch1(prompt, args.decode_tokens)
            extra = {}
            if checkpoint is not None and our_tokens is not None:
                # Same weights, same prompt, greedy: the tokens should agree (a check that
                # both systems run the same model, possible only in the smoke run).
                agree = next((i for i, (a, b) in enumerate(
                    zip(our_tokens, result["tokens"], strict=False)) if a != b),
                    min(len(our_tokens), len(result["tokens"])))
                extra["tokens_agreeing_with_ours"] = agree
            rate = result["value"]
            rec.emit("decode_b1", "hf", rate, "tok/s", prompt_len=args.decode_prompt_len,
                     new_tokens=args.decode_tokens, ms_per_token=round(1e3 / rate, 3),
                     fraction_of_ceiling=round(rate / ceiling, 3) if ceiling else None,
                     method="manual loop, DynamicCache", **extra, **common)
        guarded(rec, "decode_b1", "hf", "tok/s", decode)
    if "throughput" in args.figures:
        prompts = random_prompts(args.requests, args.hf_prompt_len, vocab, seed=11)
        for batch in args.hf_batches:
            def throughput(batch: int = batch) -> None:
                result = peer.throughput_static(prompts, args.output_len, batch)
                rec.emit("throughput", "hf", result["value"], "output tok/s", batch=batch,
                         requests=args.requests, prompt_len=args.hf_prompt_len,
                         output_len=args.output_len, seconds=round(result["seconds"], 3),
                         method="static batches through generate", **common)
            guarded(rec, "throughput", "hf", "output tok/s", throughput, batch=batch)
    if "ttft" in args.figures:
        for length in args.ttft_lens:
            def ttft(length: int = length) -> None:
                prompts = [random_prompts(1, length, vocab, seed=1000 * length + rep)[0]
                           for rep in range(args.repeats + 1)]
                result = peer.prefill_ms(prompts)
                rec.emit("ttft_cold", "hf", result["value"], "ms", prompt_len=length,
                         samples_ms=[round(s, 2) for s in result["samples_ms"]],
                         method="prefill forward", **common)
            guarded(rec, "ttft_cold", "hf", "ms", ttft, prompt_len=length)
    if "turn2" in args.figures:
        def turn2() -> None:
            base, extensions = turn2_prompts(args, vocab)
            result = peer.turn2_ms(base, extensions)
            rec.emit("ttft_turn2", "hf", result["value"], "ms", base_len=len(base),
                     new_tokens=args.turn2_new_tokens,
                     num_cached_tokens=result["num_cached_tokens"],
                     samples_ms=[round(s, 2) for s in result["samples_ms"]],
                     method="prefill of the new tokens on past_key_values", **common)
        guarded(rec, "ttft_turn2", "hf", "ms", turn2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", nargs="+", choices=FIGURES, default=list(FIGURES))
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, tiny random checkpoint, short lengths: checks the script")
    parser.add_argument("--no-hf", action="store_true", help="skip the HF transformers peer")
    parser.add_argument("--no-ours", action="store_true", help="skip our engine")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=None,
                        help="bfloat16 (default; float32 with --smoke), float16, float32")
    parser.add_argument("--preset", default="mistral-7b-v0.2")
    parser.add_argument("--decode-prompt-len", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=256)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--hf-batches", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--hf-prompt-len", type=int, default=None,
                        help="HF throughput prompt length (default: --prompt-len; 512 for "
                             "the 512-in/128-out reference shape)")
    parser.add_argument("--ttft-lens", type=int, nargs="+", default=[2048, 8192, 32000])
    parser.add_argument("--turn2-base-len", type=int, default=None,
                        help="default: the longest --ttft-lens")
    parser.add_argument("--turn2-new-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per TTFT figure")
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192,
                        help="the engine's per-step token budget (prefill chunk size)")
    parser.add_argument("--max-num-seqs", type=int, default=None, help="default: --requests")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--kv-cache-memory", type=float, default=None,
                        help="fraction of free memory for the KV cache (default 0.6 on CUDA: "
                             "8 GiB covers every figure, and the rest leaves room for "
                             "CUDA-graph pools and prefill activations)")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--cuda-graphs", choices=("on", "off"), nargs="+", default=None,
                        help="passed to the engine only if EngineConfig has the field; "
                             "'on off' runs our figures once with each")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer dir for the engine (default: the preset's Mistral v1 "
                             "tokenizer if mistral_common is installed, else a synthetic one)")
    parser.add_argument("--copy-bytes", type=int, default=2 << 30)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--timeout-s", type=float, default=300.0,
                        help="bound on each engine run (a figure's requests)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="figures that would start after this many seconds are recorded "
                             "as skipped (keeps a run inside a per-command limit)")
    parser.add_argument("--results", type=Path, default=None,
                        help="default: bench/results/<gpu-name-slug>.jsonl")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        # Small enough for two shared CPU cores in well under two minutes, large enough that
        # prefill is chunked (64-token budget), turn 2 hits whole blocks and the throughput
        # run batches many requests.
        args.device = "cpu" if args.device == "auto" else args.device
        args.dtype = args.dtype or "float32"
        args.decode_prompt_len, args.decode_tokens = 16, 32
        args.requests, args.prompt_len, args.output_len = 32, 32, 16
        args.hf_batches = [8, 16]
        args.ttft_lens = [64, 128, 256]
        args.repeats = 2
        args.max_num_batched_tokens = 64
        args.max_model_len = args.max_model_len or 1024
        args.copy_bytes, args.matmul_size = 32 << 20, 256
        args.timeout_s = 120.0
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and args.device.index is None:
        args.device = torch.device("cuda", torch.cuda.current_device())
    args.dtype = args.dtype or "bfloat16"
    args.hf_prompt_len = args.hf_prompt_len or args.prompt_len
    args.turn2_base_len = args.turn2_base_len or max(args.ttft_lens)
    args.max_num_seqs = args.max_num_seqs or args.requests
    if args.kv_cache_memory is None and args.device.type == "cuda":
        args.kv_cache_memory = 0.6
    args.end_time = time.perf_counter() + (
        float("inf") if args.budget_s is None else args.budget_s)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from model.config import ModelConfig
    from model.factory import DTYPES

    dtype = DTYPES[args.dtype]
    checkpoint: Path | None = None
    if args.smoke:
        checkpoint = write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="gpu-serving-smoke-")),
                                           args.max_model_len)
        model_name, load_format = str(checkpoint), "auto"
    else:
        model_name, load_format = args.preset, "dummy"
    model_config = ModelConfig.from_pretrained(model_name)
    context = args.max_model_len or model_config.max_position_embeddings
    longest = max([*args.ttft_lens, args.turn2_base_len + args.turn2_new_tokens])
    if longest >= context:
        raise SystemExit(f"prompts up to {longest} tokens do not fit the {context}-token "
                         "context (prompt plus one new token)")

    gpu = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu"
    results = None if args.no_save else (
        args.results or Path(__file__).resolve().parent / "results" /
        f"{device_slug(args.device)}.jsonl")
    rec = Recorder(results, {
        "model": args.preset if not args.smoke else "tiny-mistral-2l-h64", "dtype": args.dtype,
        "device": gpu, "torch": torch.__version__, "smoke": args.smoke,
        "host": platform.node()}, args.end_time)
    log(f"device {gpu}, dtype {args.dtype}, figures {args.figures}, results {results}")

    ceiling = None
    if "roofline" in args.figures:
        ceiling = run_roofline(rec, args, model_config, dtype)
    ours_ok, our_tokens = True, None
    engine_figures = set(args.figures) - {"roofline"}
    if engine_figures and not args.no_ours:
        tokenizer = choose_tokenizer(args, model_config.vocab_size)
        for cuda_graphs in args.cuda_graphs or [None]:
            ok, tokens = run_ours(rec, args, model_name, load_format, tokenizer, cuda_graphs,
                                  ceiling)
            ours_ok &= ok
            our_tokens = our_tokens or tokens
    if engine_figures and not args.no_hf:
        run_hf(rec, args, model_config, checkpoint, dtype, ceiling, our_tokens)

    # A short table on stderr for people; the JSON lines on stdout are the record.
    for record in rec.records:
        detail = record.get("batch") or record.get("prompt_len") or ""
        log(f"{record['bench']:>17} {record['system']:>8} {detail!s:>6}  "
            f"{record['value']} {record['unit']}"
            + (f"  ({record.get('reason') or record.get('error')})"
               if record["value"] is None else ""))
    return 0 if ours_ok else 1


if __name__ == "__main__":
    sys.exit(main())
