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
  on the first prompt's ``past_key_values``;
* ``speculative``: batch-1 decode with k = 5 drafts over without, on an engine of its own,
  when every draft is accepted and when every one is rejected (bench/gpu/speculative.py:
  the drafts replay the plain run's answer, since random weights give a proposer nothing).

Ours: preset ``mistral-7b-v0.2``, bf16, random weights (``load_format="dummy"``: timing
does not depend on values). HF: ``MistralForCausalLM`` with the same config, random-initialised
in bf16 on the device, ``attn_implementation="sdpa"``. Ours runs first and is torn down
before HF loads, so each has the whole GPU. Every figure warms up before it is timed; a
failing HF figure (say, out of memory) is recorded as skipped with the reason and the run
goes on.

Dependencies. At tp=1 the engine path imports, besides torch (and triton on CUDA, for the
``auto`` attention backend): numpy, safetensors, sentencepiece, tokenizers, jinja2, tqdm,
and pydantic (the typed engine config). Nothing on it imports ray or grpc. mistral_common
is optional: it holds the Mistral v1 tokenizer file a preset uses; without it this script
gives the engine a synthetic word-level tokenizer (token ids are sent; the tokenizer only
detokenizes outputs), and says so in each record's ``tokenizer``. The HF peer and ``--smoke`` need transformers.

Install on a machine with torch but no Ray (from the repository root; the install is
optional, the script puts the repository root on sys.path itself):

    pip install --no-deps --no-build-isolation -e .    # offline-safe: no build-deps download
    pip install numpy safetensors sentencepiece tokenizers jinja2 tqdm transformers pydantic

The device machine has no network: fetch the wheels here once into ``.whl/`` (git-ignored;
46 MB for Python 3.12, check ``python -V`` there), and carry it (run's ``carry: [".whl"]``):

    pip download -d .whl --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        transformers safetensors sentencepiece tokenizers tqdm pydantic

then on the H100, inside the 10-minute command limit (``--budget-s`` skips, and records as
skipped, the figures that would start too late; results go to $OUT so they come back):

    pip install -q --no-index --find-links .whl transformers safetensors sentencepiece \
        tokenizers tqdm pydantic && python bench/gpu_serving.py --budget-s 480 \
        --results "$OUT/nvidia-h100-80gb-hbm3.jsonl"

or in two commands, ours (with and without CUDA graphs) then HF:

    python bench/gpu_serving.py --no-hf --cuda-graphs on off --budget-s 480 \
        --results "$OUT/nvidia-h100-80gb-hbm3.jsonl"
    python bench/gpu_serving.py --no-ours --figures decode throughput ttft turn2 \
        --budget-s 480 --results "$OUT/nvidia-h100-80gb-hbm3.jsonl"

and append the returned file to ``bench/results/`` here.

Check on a CPU (tiny random checkpoint written by ``model.random_checkpoint`` through HF's
``save_pretrained`` and safetensors, lengths cut to 64/128/256):

    python bench/gpu_serving.py --smoke

The figures' code is in ``bench/gpu/`` (one module per figure, ours and HF side by side);
this file is the command line and the order the figures run in.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

# Runs without installing the project: the repository root makes model/, serve/ and bench/
# importable (the script's own directory alone would not).
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gpu.common import Recorder, device_slug, guarded, log  # noqa: E402
from bench.gpu.hf import run_hf  # noqa: E402
from bench.gpu.ours import run_ours  # noqa: E402
from bench.gpu.roofline import run_roofline  # noqa: E402
from bench.gpu.speculative import ours_speculative  # noqa: E402
from bench.gpu.tokenizer import choose_tokenizer  # noqa: E402
from model.random_checkpoint import write_tiny_checkpoint  # noqa: E402

FIGURES = ("roofline", "decode", "throughput", "ttft", "turn2", "speculative")


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
        # The engine gets its tokenizer from choose_tokenizer (token ids are sent), so the
        # checkpoint needs none, nor mistral_common for one.
        checkpoint = write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="gpu-serving-smoke-")),
                                           with_tokenizer=False,
                                           max_position_embeddings=args.max_model_len)
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
        if "speculative" in args.figures:  # an engine of its own, built with speculation
            graphs = (args.cuda_graphs or [None])[0]
            ours_ok &= guarded(rec, "spec_decode_b1", "ours", "TPOT with drafts / without",
                               lambda: ours_speculative(rec, args, model_name, load_format,
                                                        tokenizer, graphs))
    if engine_figures - {"speculative"} and not args.no_hf:  # HF has no speculative run
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
