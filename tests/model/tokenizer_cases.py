"""What the tokenizer and detokenizer tests share: texts that stress streaming, chat
conversations, chat templates, a tiny trained byte-level BPE, and stream helpers."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from model.detokenizer import IncrementalDetokenizer
from model.tokenizer import Tokenizer

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and loop.first %}"
    "{{ raise_exception('The first message must not be from the assistant') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The template in Mistral-7B-Instruct-v0.2's tokenizer_config.json.
MISTRAL_HF_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

# Emoji, CJK, accents, and characters missing from the Mistral vocabulary (byte fallback).
STREAM_TEXTS = {
    "ascii": "Hello world, this is a test of streaming.",
    "accents": "Café, naïve résumé — déjà vu à l'hôtel ñandú Ærøskøbing.",
    "cjk": "日本語のテキストと中文文本,한국어 텍스트도 있습니다。",
    "emoji": "Party time 🎉😀 with a parrot 🦜 and a coder 👩‍💻!",
    "byte_fallback": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ 龘 🦜🦜 done",
    "mixed_lines": "  leading spaces\n\ttabs\nand trailing  \n€100 → ∞ ≈ π\n",
}

CHATS: dict[str, list[dict[str, str]]] = {
    "one_turn": [{"role": "user", "content": "Hello!"}],
    "one_turn_system": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "three_turns": [
        {"role": "user", "content": "Hi, who are you?"},
        {"role": "assistant", "content": "I am an assistant."},
        {"role": "user", "content": "What can you do?"},
        {"role": "assistant", "content": "Answer questions."},
        {"role": "user", "content": "Great, thanks."},
    ],
    "three_turns_system_unicode": [
        {"role": "system", "content": "Réponds en français, s'il te plaît. 🇫🇷"},
        {"role": "user", "content": "Translate 日本語 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🦜"},
        {"role": "assistant", "content": "« japonais » et « unicode » 😀"},
        {"role": "user", "content": "Merci ! 👩‍💻"},
        {"role": "assistant", "content": "De rien — ꙮ 龘"},
        {"role": "user", "content": "Et ça ?"},
    ],
    "five_turns_system": [
        {"role": "system", "content": "Be terse.\nUse lists."},
        *[
            message
            for i in range(4)
            for message in (
                {"role": "user", "content": f"  question {i}\n with lines  "},
                {"role": "assistant", "content": f"answer {i}\n- item\n- item "},
            )
        ],
        {"role": "user", "content": "last question"},
    ],
    "two_system_messages": [
        {"role": "system", "content": "First rule."},
        {"role": "system", "content": "Second rule."},
        {"role": "user", "content": "Go."},
        {"role": "assistant", "content": "Going."},
        {"role": "user", "content": "Stop."},
    ],
    "empty_system_and_user": [
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
    ],
}


def train_byte_level_bpe(directory: Path) -> None:
    """A tiny byte-level BPE with ChatML special tokens; merges cut multi-byte characters."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(list(STREAM_TEXTS.values()) * 20, trainer)
    raw.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": CHATML_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def stream_pieces(
    tokenizer: Tokenizer, ids: Sequence[int], skip_special_tokens: bool = True
) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    pieces = [detokenizer.step(token_id) for token_id in ids]
    pieces.append(detokenizer.flush())
    return pieces


def random_ids(rng: random.Random, tokenizer: Tokenizer, byte_ids: Sequence[int]) -> list[int]:
    """Random streams, heavy in byte tokens and special tokens: the cases that break naive
    detokenizers (split characters, invalid bytes, a window starting at </s>)."""
    specials = sorted(tokenizer.special_token_ids)
    ids = []
    for _ in range(rng.randint(1, 25)):
        r = rng.random()
        if r < 0.35:
            ids.append(rng.choice(byte_ids))
        elif r < 0.45:
            ids.append(rng.choice(specials))
        else:
            ids.append(rng.randrange(tokenizer.vocab_size))
    return ids


def check_random_streams(tokenizer: Tokenizer, byte_ids: Sequence[int], seed: int,
                         rounds: int) -> None:
    """``rounds`` random streams (``random_ids``) detokenize, piece by piece, to exactly
    what ``decode`` makes of them, with and without special tokens."""
    rng = random.Random(seed)
    for _ in range(rounds):
        ids = random_ids(rng, tokenizer, byte_ids)
        for skip in (True, False):
            assert "".join(stream_pieces(tokenizer, ids, skip)) == tokenizer.decode(ids, skip), ids
