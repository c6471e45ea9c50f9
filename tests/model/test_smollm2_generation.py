"""The real trained checkpoint: our greedy tokens equal HF transformers' ``generate``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.sampling_params import SamplingParams
from serve import LLM

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at a temperature of",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three fruits."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a fact about the Moon."}],
    [{"role": "user", "content": "Translate 'good morning' to Spanish."}],
]
MAX_NEW = 32


@pytest.fixture(scope="module")
def hf(smollm2_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def llm(smollm2_dir: Path) -> LLM:
    return LLM(str(smollm2_dir), dtype="float32", num_kv_blocks=256)


def hf_greedy(model, prompt_ids: list[int]) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=MAX_NEW,
                             do_sample=False, eos_token_id=2, pad_token_id=2)
    return out[0, len(prompt_ids):].tolist()


def test_greedy_prompts_match_hf_generate(hf, llm: LLM) -> None:
    model, hf_tokenizer = hf
    prompt_ids = [llm.tokenizer.encode(p) for p in PROMPTS]
    assert prompt_ids == [hf_tokenizer(p)["input_ids"] for p in PROMPTS]
    ours = llm.generate(prompt_ids, SamplingParams(temperature=0, max_tokens=MAX_NEW))
    for ids, output in zip(prompt_ids, ours, strict=True):
        assert output.outputs[0].token_ids == hf_greedy(model, ids)


def test_engine_chat_matches_hf_generate(hf, llm: LLM) -> None:
    model, hf_tokenizer = hf
    ours = llm.chat(CHATS, SamplingParams(temperature=0, max_tokens=MAX_NEW))
    for conversation, output in zip(CHATS, ours, strict=True):
        expected_prompt = hf_tokenizer.apply_chat_template(conversation, tokenize=True,
                                                           add_generation_prompt=True)
        if not isinstance(expected_prompt, list):
            expected_prompt = expected_prompt["input_ids"]
        assert output.prompt_token_ids == expected_prompt
        assert output.outputs[0].token_ids == hf_greedy(model, expected_prompt)
    assert "Paris" in ours[0].outputs[0].text
