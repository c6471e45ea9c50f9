"""Command line: ``mistral-serve generate`` and ``mistral-serve chat`` on the offline engine.

With no ``--model`` the embedded default checkpoint (SmolLM2-135M-Instruct) is used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="checkpoint directory or preset; default: embedded SmolLM2")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mistral-serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="complete a prompt")
    generate.add_argument("prompt")
    _engine_args(generate)
    chat = commands.add_parser("chat", help="answer one user message with the chat template")
    chat.add_argument("message")
    chat.add_argument("--system", default=None, help="optional system prompt")
    _engine_args(chat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from model.sampling_params import SamplingParams
    from serve.llm import LLM

    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    llm = LLM(args.model, tensor_parallel_size=args.tp, dtype=args.dtype)
    try:
        if args.command == "generate":
            output = llm.generate(args.prompt, params)[0]
        else:
            messages = [{"role": "system", "content": args.system}] if args.system else []
            messages.append({"role": "user", "content": args.message})
            output = llm.chat(messages, params)[0]
    finally:
        llm.shutdown()
    print(output.outputs[0].text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
